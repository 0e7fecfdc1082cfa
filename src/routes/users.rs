//! Profiles, a user's posts, follow and unfollow.

use actix_web::{HttpResponse, web};

use super::auth::Authenticated;
use super::views::{PageJson, PostJson, ProfileJson};
use super::{PageParams, State};
use crate::db::queries::feed::{self, Authors};
use crate::db::queries::users;
use crate::domain::{Cursor, Limit, Username};
use crate::errors::{AppError, ErrorBody};
use crate::writes::{FollowError, Toggle};

/// A username from the path; one that cannot exist is simply not found.
fn path_username(raw: &str) -> Result<Username, AppError> {
    Username::parse(raw).map_err(|_| AppError::NotFound("user"))
}

/// A profile with its counts.
#[utoipa::path(
    get,
    path = "/api/v1/users/{username}",
    tag = "users",
    params(("username" = String, Path, description = "Username (any case)")),
    responses(
        (status = 200, description = "The profile", body = ProfileJson),
        (status = 404, description = "No such user", body = ErrorBody),
    )
)]
pub async fn profile(state: State, path: web::Path<String>) -> Result<HttpResponse, AppError> {
    let username = path_username(&path)?;
    let profile = state
        .db
        .run(move |conn| {
            let user = users::find_by_username(conn, username.as_str())?
                .ok_or(AppError::NotFound("user"))?;
            let counts = users::profile_counts(conn, user.id)?;
            Ok::<_, AppError>(ProfileJson::new(user, counts))
        })
        .await?;
    Ok(HttpResponse::Ok().json(profile))
}

/// The user's posts, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/users/{username}/posts",
    tag = "users",
    params(("username" = String, Path, description = "Username (any case)"), PageParams),
    responses(
        (status = 200, description = "A page of posts", body = PageJson<PostJson>),
        (status = 400, description = "Bad limit or cursor", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    )
)]
pub async fn posts_of(
    state: State,
    path: web::Path<String>,
    query: web::Query<PageParams>,
) -> Result<HttpResponse, AppError> {
    let username = path_username(&path)?;
    let limit = Limit::parse(query.limit.as_deref())?;
    let cursor = Cursor::parse(query.cursor.as_deref())?;
    let page = state
        .db
        .run(move |conn| {
            let author = users::id_by_username(conn, username.as_str())?;
            feed::newest_first(conn, Authors::Only(author), cursor, limit)
        })
        .await?;
    Ok(HttpResponse::Ok().json(PageJson::<PostJson>::from_page(page)))
}

/// Follows a user; following again changes nothing.
#[utoipa::path(
    post,
    path = "/api/v1/users/{username}/follow",
    tag = "users",
    params(("username" = String, Path, description = "Who to follow")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Following"),
        (status = 400, description = "Cannot follow yourself", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    )
)]
pub async fn follow(
    state: State,
    me: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    set_follow(state, me, path, Toggle::On).await
}

/// Stops following a user; unfollowing someone not followed changes nothing.
#[utoipa::path(
    delete,
    path = "/api/v1/users/{username}/follow",
    tag = "users",
    params(("username" = String, Path, description = "Who to unfollow")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Not following"),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    )
)]
pub async fn unfollow(
    state: State,
    me: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    set_follow(state, me, path, Toggle::Off).await
}

/// Follow and unfollow: one shape, idempotent either way.
async fn set_follow(
    state: State,
    me: Authenticated,
    path: web::Path<String>,
    toggle: Toggle,
) -> Result<HttpResponse, AppError> {
    let followee = path_username(&path)?;
    state
        .writes
        .follow(me.id, followee, toggle)
        .await
        .map_err(|err| match err {
            FollowError::Yourself => {
                AppError::bad_request("cannot_follow_self", "you cannot follow yourself")
            }
            FollowError::Db(err) => err.into(),
        })?;
    Ok(HttpResponse::NoContent().finish())
}
