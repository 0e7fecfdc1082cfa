//! Posts: create, read, delete (author only), like and unlike.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::Authenticated;
use super::views::PostJson;
use super::{State, parse_id};
use crate::db::queries::posts;
use crate::domain::PostDraft;
use crate::errors::{AppError, ErrorBody};
use crate::writes::Toggle;

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
    let post = state.writes.create_post(me.id, draft).await?;
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
    state.writes.delete_post(id, me.id).await?;
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
    set_like(state, me, path, Toggle::On).await
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
    set_like(state, me, path, Toggle::Off).await
}

/// Like and unlike: one shape, idempotent either way.
async fn set_like(
    state: State,
    me: Authenticated,
    path: web::Path<String>,
    toggle: Toggle,
) -> Result<HttpResponse, AppError> {
    let id = parse_id(&path, "post")?;
    state.writes.like(me.id, id, toggle).await?;
    Ok(HttpResponse::NoContent().finish())
}
