//! Rows as Diesel reads and writes them. The JSON shapes of the API live in `routes`; these
//! are storage types.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use super::schema::{auth_tokens, comments, posts, users};

#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = users, check_for_backend(diesel::pg::Pg))]
pub struct UserRow {
    pub id: Uuid,
    pub username: String,
    pub email: String,
    pub password_hash: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = users)]
pub struct NewUser<'a> {
    pub id: Uuid,
    pub username: &'a str,
    pub email: &'a str,
    pub password_hash: &'a str,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = auth_tokens)]
pub struct NewToken<'a> {
    pub token_hash: &'a [u8],
    pub user_id: Uuid,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = posts, check_for_backend(diesel::pg::Pg))]
pub struct PostRow {
    pub id: Uuid,
    pub author_id: Uuid,
    pub title: String,
    pub description: Option<String>,
    pub bpm: Option<i32>,
    pub musical_key: Option<String>,
    pub daw: Option<String>,
    pub genre: Option<String>,
    pub tags: Vec<Option<String>>,
    pub like_count: i64,
    pub comment_count: i64,
    pub created_at: DateTime<Utc>,
    #[diesel(embed)]
    pub audio: PostAudio,
}

/// A post's audio, as its JSON shows it (CONTRACT.md §2). Fields are null until known.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = posts, check_for_backend(diesel::pg::Pg))]
pub struct PostAudio {
    #[diesel(column_name = audio_status)]
    pub status: String,
    #[diesel(column_name = audio_upload_id)]
    pub upload_id: Option<Uuid>,
    #[diesel(column_name = audio_duration_ms)]
    pub duration_ms: Option<i64>,
    #[diesel(column_name = audio_sample_rate)]
    pub sample_rate: Option<i32>,
    #[diesel(column_name = audio_channels)]
    pub channels: Option<i32>,
    #[diesel(column_name = audio_source_format)]
    pub source_format: Option<String>,
    #[diesel(column_name = audio_waveform)]
    pub waveform: Option<Vec<Option<f32>>>,
    #[diesel(column_name = audio_error)]
    pub error: Option<String>,
    #[diesel(column_name = audio_bytes)]
    pub bytes: Option<i64>,
}

/// A post with its author's name, as every listing shows it.
pub type PostWithAuthor = (PostRow, String);

#[derive(Debug, Insertable)]
#[diesel(table_name = posts)]
pub struct NewPost<'a> {
    pub id: Uuid,
    pub author_id: Uuid,
    pub title: &'a str,
    pub description: Option<&'a str>,
    pub bpm: Option<i32>,
    pub musical_key: Option<&'a str>,
    pub daw: Option<&'a str>,
    pub genre: Option<&'a str>,
    pub tags: &'a [String],
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = comments, check_for_backend(diesel::pg::Pg))]
pub struct CommentRow {
    pub id: Uuid,
    pub post_id: Uuid,
    pub author_id: Uuid,
    pub body: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = comments)]
pub struct NewComment<'a> {
    pub id: Uuid,
    pub post_id: Uuid,
    pub author_id: Uuid,
    pub body: &'a str,
}

/// A user's public counts.
#[derive(Debug, Clone, Copy)]
pub struct ProfileCounts {
    pub followers: i64,
    pub following: i64,
    pub posts: i64,
}
