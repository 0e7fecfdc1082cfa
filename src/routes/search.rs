//! Search over post titles, tags and usernames.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use utoipa::IntoParams;

use super::State;
use super::json::{AuthorJson, PostJson, SearchJson};
use crate::db::queries::{posts, users};
use crate::domain::{Limit, SearchQuery};
use crate::errors::{AppError, ErrorBody};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// 1–100 characters; matched case-insensitively in titles and usernames, exactly in tags.
    pub q: Option<String>,
    /// Results of each kind, 1–100 (default 20).
    pub limit: Option<String>,
}

/// Posts and users matching `q`.
#[utoipa::path(
    get,
    path = "/api/v1/search",
    tag = "search",
    params(SearchParams),
    responses(
        (status = 200, description = "Matches", body = SearchJson),
        (status = 400, description = "Empty or too long query, bad limit", body = ErrorBody),
    )
)]
pub async fn search(
    state: State,
    query: web::Query<SearchParams>,
) -> Result<HttpResponse, AppError> {
    let q = SearchQuery::parse(query.q.as_deref())?;
    let limit = i64::from(Limit::parse(query.limit.as_deref())?.get());
    let (posts, users) = state
        .db
        .run(move |conn| {
            let pattern = q.contains_pattern();
            let posts = posts::search(conn, &pattern, q.as_str(), limit)?;
            let users = users::search(conn, &pattern, limit)?;
            Ok((posts, users))
        })
        .await?;
    Ok(HttpResponse::Ok().json(SearchJson {
        posts: posts.into_iter().map(PostJson::from).collect(),
        users: users
            .into_iter()
            .map(|(id, username)| AuthorJson { id, username })
            .collect(),
    }))
}
