//! Posts: create, read, delete (author only), like and unlike.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::Authenticated;
use super::json::PostJson;
use super::{State, parse_id};
use crate::cache::feed::FeedChange;
use crate::db::queries::posts;
use crate::domain::PostDraft;
use crate::errors::{AppError, ErrorBody};

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreatePostRequest {
    /// 1–200 characters, not blank; trimmed.
    pub title: String,
    pub description: Option<String>,
    /// 1–999.
    pub bpm: Option<i64>,
    pub musical_key: Option<String>,
    pub daw: Option<String>,
    pub genre: Option<String>,
    /// Up to 10 tags of 1–32 characters.
    pub tags: Option<Vec<String>>,
}

/// Publishes a post.
#[utoipa::path(
    post,
    path = "/api/v1/posts",
    tag = "posts",
    request_body = CreatePostRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = PostJson,
            headers(("Location" = String, description = "The new post: `/api/v1/posts/{id}`"))),
        (status = 400, description = "Invalid post or malformed body", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
    )
)]
pub async fn create(
    state: State,
    me: Authenticated,
    body: web::Json<CreatePostRequest>,
) -> Result<HttpResponse, AppError> {
    let b = body.into_inner();
    let draft = PostDraft::parse(
        &b.title,
        b.description.as_deref(),
        b.bpm,
        b.musical_key.as_deref(),
        b.daw.as_deref(),
        b.genre.as_deref(),
        b.tags.as_deref(),
    )?;
    let author = me.id;
    let post = state
        .db
        .run(move |conn| posts::insert(conn, author, &draft))
        .await?;
    state.feeds.changed(author, FeedChange::NewPost).await;
    let json = PostJson::from(post);
    Ok(HttpResponse::Created()
        .insert_header((
            actix_web::http::header::LOCATION,
            format!("/api/v1/posts/{}", json.id),
        ))
        .json(json))
}

/// One post with its counts and author.
#[utoipa::path(
    get,
    path = "/api/v1/posts/{id}",
    tag = "posts",
    params(("id" = uuid::Uuid, Path, description = "Post id")),
    responses(
        (status = 200, description = "The post", body = PostJson),
        (status = 404, description = "No such post", body = ErrorBody),
    )
)]
pub async fn get(state: State, path: web::Path<String>) -> Result<HttpResponse, AppError> {
    let id = parse_id(&path, "post")?;
    let post = state.db.run(move |conn| posts::find(conn, id)).await?;
    Ok(HttpResponse::Ok().json(PostJson::from(post)))
}

/// Deletes a post; only its author may.
#[utoipa::path(
    delete,
    path = "/api/v1/posts/{id}",
    tag = "posts",
    params(("id" = uuid::Uuid, Path, description = "Post id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Not the author", body = ErrorBody),
        (status = 404, description = "No such post", body = ErrorBody),
    )
)]
pub async fn delete(
    state: State,
    me: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id = parse_id(&path, "post")?;
    let requester = me.id;
    state
        .db
        .run(move |conn| posts::delete(conn, id, requester))
        .await?;
    // The rows are gone (jobs with them); a worker still busy with one finds it lost.
    if let Err(err) = state.audio.storage.remove_post(id).await {
        slog::warn!(crate::telemetry::logging::logger(), "could not remove a deleted post's audio";
            "post.id" => %id, "error" => %crate::errors::ErrorChain(&err));
    }
    state
        .feeds
        .changed(requester, FeedChange::DeletedPost)
        .await;
    Ok(HttpResponse::NoContent().finish())
}

/// Likes a post; liking again changes nothing.
#[utoipa::path(
    post,
    path = "/api/v1/posts/{id}/like",
    tag = "posts",
    params(("id" = uuid::Uuid, Path, description = "Post id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Liked"),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such post", body = ErrorBody),
    )
)]
pub async fn like(
    state: State,
    me: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id = parse_id(&path, "post")?;
    let user = me.id;
    state
        .db
        .run(move |conn| posts::like(conn, id, user))
        .await?;
    state.feeds.changed(user, FeedChange::ByWriter).await;
    Ok(HttpResponse::NoContent().finish())
}

/// Removes a like; removing it again changes nothing.
#[utoipa::path(
    delete,
    path = "/api/v1/posts/{id}/like",
    tag = "posts",
    params(("id" = uuid::Uuid, Path, description = "Post id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Not liked"),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such post", body = ErrorBody),
    )
)]
pub async fn unlike(
    state: State,
    me: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id = parse_id(&path, "post")?;
    let user = me.id;
    state
        .db
        .run(move |conn| posts::unlike(conn, id, user))
        .await?;
    state.feeds.changed(user, FeedChange::ByWriter).await;
    Ok(HttpResponse::NoContent().finish())
}
