//! HTTP handlers, one module per resource, and what they share: the application state, the
//! JSON shapes of responses, and the extractors that turn raw input into domain values.

pub mod audio;
pub mod auth;
pub mod body_idle;
pub mod comments;
pub mod docs;
pub mod feed;
pub mod hashing;
pub mod health;
pub mod posts;
pub mod search;
pub mod throttle;
pub mod tracecontext;
pub mod users;
pub mod views;

use std::time::Duration;

use actix_web::web;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::audio::AudioService;
use crate::cache::Cache;
use crate::cache::feed::FeedCache;
use crate::clients::http::TracedClient;
use crate::clients::recommender::RecommenderClient;
use crate::db::Db;
use crate::errors::AppError;

/// Everything handlers share. Cheap to clone: pools and clients are handles.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub cache: Cache,
    pub feeds: FeedCache,
    pub recommender: Option<RecommenderClient>,
    pub http: TracedClient,
    pub token_ttl: Duration,
    pub audio: AudioService,
    pub login_throttle: throttle::LoginThrottle,
    pub register_throttle: throttle::RegisterThrottle,
    pub password_hashing: hashing::PasswordHashing,
    /// `TOKEN_MAX_PER_USER`.
    pub token_max_per_user: u32,
    /// The writes that change feeds, each with its feed change.
    pub writes: crate::writes::FeedWrites,
    /// Set once the process is stopping: `/ready` fails.
    pub draining: health::Draining,
}

pub type State = web::Data<AppState>;

/// The request body limit of the buffering extractors (CONTRACT.md §2); the audio upload
/// streams its body and has its own.
pub const BODY_LIMIT: usize = 256 * 1024;

/// A post or comment id from the path. Something that is not a UUID names nothing: 404.
pub fn parse_id(raw: &str, what: &'static str) -> Result<Uuid, AppError> {
    Uuid::try_parse(raw).map_err(|_| AppError::NotFound(what))
}

/// `?limit=&cursor=` of paginated listings, as raw strings so that bad values get our 400s.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size, 1–100 (default 20).
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}
