//! Comments on posts.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::Authenticated;
use super::views::{CommentJson, PageJson};
use super::{PageParams, State, parse_id};
use crate::db::queries::comments;
use crate::domain::{CommentBody, Cursor, Limit};
use crate::errors::{AppError, ErrorBody};

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateCommentRequest {
    /// 1–2000 characters.
    pub body: String,
}

/// Comments on a post.
#[utoipa::path(
    post,
    path = "/api/v1/posts/{id}/comments",
    tag = "comments",
    params(("id" = uuid::Uuid, Path, description = "Post id")),
    request_body = CreateCommentRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = CommentJson),
        (status = 400, description = "Invalid body", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such post", body = ErrorBody),
    )
)]
pub async fn create(
    state: State,
    me: Authenticated,
    path: web::Path<String>,
    body: web::Json<CreateCommentRequest>,
) -> Result<HttpResponse, AppError> {
    let post_id = parse_id(&path, "post")?;
    let text = CommentBody::parse(&body.body)?.into_inner();
    let comment = state.writes.comment(post_id, me.id, text).await?;
    Ok(HttpResponse::Created().json(CommentJson::from(comment)))
}

/// A post's comments, oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/posts/{id}/comments",
    tag = "comments",
    params(("id" = uuid::Uuid, Path, description = "Post id"), PageParams),
    responses(
        (status = 200, description = "A page of comments", body = PageJson<CommentJson>),
        (status = 400, description = "Bad limit or cursor", body = ErrorBody),
        (status = 404, description = "No such post", body = ErrorBody),
    )
)]
pub async fn list(
    state: State,
    path: web::Path<String>,
    query: web::Query<PageParams>,
) -> Result<HttpResponse, AppError> {
    let post_id = parse_id(&path, "post")?;
    let limit = Limit::parse(query.limit.as_deref())?;
    let cursor = Cursor::parse(query.cursor.as_deref())?;
    let page = state
        .db
        .run(move |conn| comments::for_post(conn, post_id, cursor, limit))
        .await?;
    Ok(HttpResponse::Ok().json(PageJson::<CommentJson>::from_page(page)))
}
