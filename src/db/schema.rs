// @generated automatically by Diesel CLI.

pub mod sql_types {
    #[derive(diesel::query_builder::QueryId, Clone, diesel::sql_types::SqlType)]
    #[diesel(postgres_type(name = "tsvector", schema = "pg_catalog"))]
    pub struct Tsvector;
}

diesel::table! {
    audio_jobs (id) {
        id -> Uuid,
        post_id -> Uuid,
        state -> Text,
        attempts -> Int4,
        leased_until -> Nullable<Timestamptz>,
        source_type -> Text,
        source_bytes -> Int8,
        traceparent -> Nullable<Text>,
        tracestate -> Nullable<Text>,
        last_error -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        author_id -> Uuid,
    }
}

diesel::table! {
    auth_tokens (token_hash) {
        token_hash -> Bytea,
        user_id -> Uuid,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
    }
}

diesel::table! {
    comments (id) {
        id -> Uuid,
        post_id -> Uuid,
        author_id -> Uuid,
        body -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    follows (follower_id, followee_id) {
        follower_id -> Uuid,
        followee_id -> Uuid,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    likes (post_id, user_id) {
        post_id -> Uuid,
        user_id -> Uuid,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use super::sql_types::Tsvector;

    posts (id) {
        id -> Uuid,
        author_id -> Uuid,
        title -> Text,
        description -> Nullable<Text>,
        bpm -> Nullable<Int4>,
        musical_key -> Nullable<Text>,
        daw -> Nullable<Text>,
        genre -> Nullable<Text>,
        tags -> Array<Nullable<Text>>,
        like_count -> Int8,
        comment_count -> Int8,
        created_at -> Timestamptz,
        audio_status -> Text,
        audio_upload_id -> Nullable<Uuid>,
        audio_duration_ms -> Nullable<Int8>,
        audio_sample_rate -> Nullable<Int4>,
        audio_channels -> Nullable<Int4>,
        audio_source_format -> Nullable<Text>,
        audio_waveform -> Nullable<Array<Nullable<Float4>>>,
        audio_error -> Nullable<Text>,
        audio_bytes -> Nullable<Int8>,
        search_vector -> Tsvector,
    }
}

diesel::table! {
    users (id) {
        id -> Uuid,
        username -> Text,
        email -> Text,
        password_hash -> Text,
        created_at -> Timestamptz,
    }
}

diesel::joinable!(audio_jobs -> posts (post_id));
diesel::joinable!(audio_jobs -> users (author_id));
diesel::joinable!(auth_tokens -> users (user_id));
diesel::joinable!(comments -> posts (post_id));
diesel::joinable!(comments -> users (author_id));
diesel::joinable!(likes -> posts (post_id));
diesel::joinable!(likes -> users (user_id));
diesel::joinable!(posts -> users (author_id));

diesel::allow_tables_to_appear_in_same_query!(
    audio_jobs,
    auth_tokens,
    comments,
    follows,
    likes,
    posts,
    users,
);
