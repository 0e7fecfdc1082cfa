//! Search over posts (full text, trigram fallback) and usernames; see `db::queries::search` for
//! the strategies and the ranking.
//!
//! The request's `search` span (a child of the SERVER span, parent of the query spans) records
//! `search.strategy` (`full_text` or `trigram`), `search.posts.returned` and
//! `search.users.returned`; never the query, which is user input.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use tracing::Instrument;
use tracing::field::Empty;
use utoipa::IntoParams;

use super::State;
use super::views::{AuthorJson, PostJson, SearchJson};
use crate::db::DbError;
use crate::db::queries::feed::by_ids;
use crate::db::queries::posts::invalid_cursor;
use crate::db::queries::search::{self, After};
use crate::domain::{Cursor, Limit, SearchQuery};
use crate::errors::{AppError, ErrorBody};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// 1–100 characters, in web-search syntax: words (stemmed: `loops` finds `loop`),
    /// `"exact phrase"`, `-excluded`, `a or b`. Posts match on title, tags and description;
    /// when no post matches the words, titles holding similar words (typos, partial words)
    /// are found instead. Users match when their name starts with, or resembles, the words.
    /// A query with no word to look for (only operators, exclusions or punctuation) is a 400.
    pub q: Option<String>,
    /// Posts per page, and most users, 1–100 (default 20).
    pub limit: Option<String>,
    /// `next_cursor` of the previous page of the same `q`; a cursor of another query or
    /// listing is a 400.
    pub cursor: Option<String>,
}

/// Posts matching `q`, best first (relevance decaying with age, half-life 30 days), one page
/// at a time; and, on the first page, users whose name matches.
#[utoipa::path(
    get,
    path = "/api/v1/search",
    tag = "search",
    params(SearchParams),
    responses(
        (status = 200, description = "A page of matching posts and, on the first page, matching users", body = SearchJson),
        (status = 400, description = "Empty or too long query, a query with no word to look for, bad limit, or a cursor of another query or listing", body = ErrorBody),
    )
)]
pub async fn search(
    state: State,
    query: web::Query<SearchParams>,
) -> Result<HttpResponse, AppError> {
    let q = SearchQuery::parse(query.q.as_deref())?;
    let words = q.words()?;
    let limit = Limit::parse(query.limit.as_deref())?;
    let fingerprint = q.fingerprint();
    let after = match Cursor::parse(query.cursor.as_deref())? {
        None => None,
        Some(Cursor::Search {
            strategy,
            query,
            score_bits,
            id,
        }) if query == fingerprint => Some(After {
            strategy,
            score: f64::from_bits(score_bits),
            id,
        }),
        Some(_) => return Err(invalid_cursor().into()),
    };

    let span = tracing::info_span!(
        "search",
        otel.name = "search",
        search.strategy = Empty,
        search.posts.returned = Empty,
        search.users.returned = Empty,
    );
    let recorder = span.clone();
    let (matches, posts, users) = state
        .db
        .run(move |conn| {
            let matches = search::posts(conn, q.as_str(), &words, fingerprint, after, limit)?;
            let posts = by_ids(conn, &matches.page.items)?;
            // Users come with the first page; the cursor pages the posts.
            let users = match after {
                None => search::users(conn, &words, limit)?,
                Some(_) => Vec::new(),
            };
            Ok::<_, DbError>((matches, posts, users))
        })
        .instrument(span)
        .await?;
    recorder.record("search.strategy", matches.strategy.as_str());
    recorder.record("search.posts.returned", posts.len() as i64);
    recorder.record("search.users.returned", users.len() as i64);

    Ok(HttpResponse::Ok().json(SearchJson {
        posts: posts.into_iter().map(PostJson::from).collect(),
        users: users
            .into_iter()
            .map(|(id, username)| AuthorJson { id, username })
            .collect(),
        next_cursor: matches.page.next.map(|c| c.encode()),
    }))
}
