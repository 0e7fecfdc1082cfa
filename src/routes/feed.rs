//! The unified feed: four orderings behind one route, cached in Redis.
//!
//! ```text
//!  GET /api/v1/feed/unified?type=…  ─▶ parse (400) ─▶ token if per-user (401), if any otherwise
//!     ─▶ Redis: one MGET (page + what it depends on) ── fresh for this reader ──▶ 200 (cached JSON)
//!                                   └─ miss ─▶ Postgres (recommended: recommender first,
//!                                              trending when it cannot answer) ─▶ SET ─▶ 200
//! ```
//!
//! The reader of a shared feed (`global`, `trending`) is identified when a token comes with
//! the request and the cache is on, so that their own writes show at once (see `cache::feed`);
//! a token that is not valid there is ignored, as it always was on public feeds. Redis failures are misses: the feed
//! is then served from Postgres.

use std::time::Duration;

use actix_web::http::header::AUTHORIZATION;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::State;
use super::auth::Authenticated;
use super::views::{FeedJson, PostJson};
use crate::cache::feed::{Lookup, PageKey};
use crate::db::models::PostWithAuthor;
use crate::db::queries::Page;
use crate::db::queries::feed::{self, Authors};
use crate::domain::{Cursor, FeedKind, Limit};
use crate::errors::{AppError, ErrorBody};
use crate::telemetry::{logging, root_span};

/// How far back trending looks.
const TRENDING_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FeedParams {
    /// `timeline` (token), `global` (default), `trending` or `recommended` (token).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub kind: Option<String>,
    /// Page size, 1–100 (default 20).
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One page of a feed.
#[utoipa::path(
    get,
    path = "/api/v1/feed/unified",
    tag = "feed",
    params(FeedParams),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "A page of the feed", body = FeedJson),
        (status = 400, description = "Bad type, limit or cursor", body = ErrorBody),
        (status = 401, description = "Timeline and recommended need a token", body = ErrorBody),
    )
)]
pub async fn unified(
    req: HttpRequest,
    state: State,
    query: web::Query<FeedParams>,
) -> Result<HttpResponse, AppError> {
    let kind: FeedKind = query.kind.as_deref().unwrap_or("global").parse()?;
    root_span::record_feed_type(&req, kind.as_str());
    let limit = Limit::parse(query.limit.as_deref())?;
    let cursor = Cursor::parse(query.cursor.as_deref())?.filter(|c| kind.accepts(c));
    let (user, reader) = if kind.needs_user() {
        let id = Authenticated::from_http(&req).await?.id;
        (Some(id), Some(id))
    } else if state.feeds.enabled() && req.headers().contains_key(AUTHORIZATION) {
        (
            None,
            Authenticated::from_http(&req).await.ok().map(|me| me.id),
        )
    } else {
        (None, None)
    };

    let key = PageKey {
        kind,
        user,
        limit,
        cursor,
    };
    let built_at = match state.feeds.lookup(&key, reader).await {
        Lookup::Hit(json) => return Ok(json_response(json)),
        Lookup::Miss { built_at } => built_at,
    };

    let page = build(&state, kind, user, cursor, limit).await?;
    let json = serde_json::to_string(&page).map_err(|e| AppError::internal("feed encoding", e))?;
    // A fallback page is not what `recommended` means: only cache what was asked for.
    if let Some(built_at) = built_at.filter(|_| page.kind == kind.as_str()) {
        state
            .feeds
            .store(&key, built_at, &json, page.items.len())
            .await;
    }
    Ok(json_response(json))
}

fn json_response(json: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(actix_web::http::header::ContentType::json())
        .body(json)
}

async fn build(
    state: &State,
    kind: FeedKind,
    user: Option<Uuid>,
    cursor: Option<Cursor>,
    limit: Limit,
) -> Result<FeedJson, AppError> {
    let page = match (kind, user) {
        (FeedKind::Global, _) => {
            state
                .db
                .run(move |c| feed::newest_first(c, Authors::Everyone, cursor, limit))
                .await?
        }
        (FeedKind::Timeline, Some(user)) => {
            state
                .db
                .run(move |c| feed::newest_first(c, Authors::FollowedBy(user), cursor, limit))
                .await?
        }
        (FeedKind::Recommended, Some(user)) => {
            if let Some(page) = recommended(state, user, cursor, limit).await? {
                return Ok(feed_json(page, FeedKind::Recommended));
            }
            // A trending cursor means the previous page was already a fallback: go on with it.
            let cursor = cursor.filter(|c| matches!(c, Cursor::Likes { .. }));
            return trending(state, cursor, limit).await;
        }
        (FeedKind::Trending, _) => return trending(state, cursor, limit).await,
        (FeedKind::Timeline | FeedKind::Recommended, None) => return Err(AppError::unauthorized()),
    };
    Ok(feed_json(page, kind))
}

async fn trending(
    state: &State,
    cursor: Option<Cursor>,
    limit: Limit,
) -> Result<FeedJson, AppError> {
    let since = Utc::now() - TRENDING_WINDOW;
    let page = state
        .db
        .run(move |c| feed::trending(c, since, cursor, limit))
        .await?;
    Ok(feed_json(page, FeedKind::Trending))
}

/// The recommender's page, or `None` when there is no recommender, it fails or is too slow,
/// or the cursor is not one of its pages.
async fn recommended(
    state: &State,
    user: Uuid,
    cursor: Option<Cursor>,
    limit: Limit,
) -> Result<Option<Page<PostWithAuthor>>, AppError> {
    let Some(recommender) = &state.recommender else {
        return Ok(None);
    };
    let offset = match cursor {
        None => 0,
        Some(Cursor::Offset(n)) => n,
        Some(_) => return Ok(None),
    };
    let ids = match recommender.recommend(user, limit.get() + 1, offset).await {
        Ok(ids) => ids,
        Err(err) => {
            slog::warn!(logging::logger(), "recommender unavailable, serving trending instead";
                "error" => %err,
            );
            return Ok(None);
        }
    };
    let has_more = ids.len() > limit.get() as usize;
    let ids: Vec<Uuid> = ids.into_iter().take(limit.get() as usize).collect();
    let items = state.db.run(move |c| feed::by_ids(c, &ids)).await?;
    Ok(Some(Page {
        items,
        next: has_more.then(|| Cursor::Offset(offset + limit.get())),
    }))
}

fn feed_json(page: Page<PostWithAuthor>, kind: FeedKind) -> FeedJson {
    FeedJson {
        next_cursor: page.next.map(|c| c.encode()),
        items: page.items.into_iter().map(PostJson::from).collect(),
        kind: kind.as_str(),
    }
}
