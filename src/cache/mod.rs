//! Redis through deadpool-redis, one CLIENT span per operation.
//!
//! Key scheme (all keys start with `REDIS_KEY_PREFIX`, default `sidechain:`):
//!
//! | key | value | written by |
//! | --- | --- | --- |
//! | `feed:clock` | integer, the logical clock of feed writes: `INCR`ed by every write that changes what a feed shows; never expires | posts, likes, comments, follows |
//! | `feed:changed:all` | clock value of the last change every page depends on (a deleted post) | post deletion |
//! | `feed:changed:user:{user}` | clock value of that user's last write (the pages that user reads depend on it) | every write, for its writer |
//! | `feed:page:{type}:{user or -}:{limit}:{cursor or -}` | `{built_at}\n{page JSON}`, `SET … EX FEED_CACHE_TTL_S` | the feed route |
//! | `login:acct:{user id or hash of the login}`, `login:addr:{client IP}` | login attempts counted as failures until a correct password gives its count back, expiring 15 minutes after the first (`routes::throttle`) | login |
//! | `register:addr:{client IP}` | registrations, expiring an hour after the first (`routes::throttle`) | register |
//!
//! The `changed:*` keys expire long after any page built before them (ten page lifetimes, at
//! least an hour); a missing one reads as 0. How pages are judged fresh against them is in
//! [`feed`].
//!
//! Redis is an optimisation here, never a dependency: every operation is bounded by
//! `REDIS_TIMEOUT_MS`, and callers treat a [`CacheError`] as a miss.

pub mod feed;

use std::sync::Arc;
use std::time::Duration;

use crate::telemetry::record::RecordExt;
use deadpool_redis::redis::{self, AsyncCommands};
use deadpool_redis::{Config, Pool, PoolConfig, Runtime, Timeouts};
use opentelemetry::KeyValue;
use tracing::Instrument;
use tracing::field::Empty;

use crate::config::RedisSettings;
use crate::telemetry::metrics::{self, CacheResult};

/// A key: its scheme prefix (low-cardinality, names the span) and the full key.
#[derive(Debug, Clone)]
pub struct CacheKey {
    scheme: &'static str,
    full: String,
}

impl CacheKey {
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

/// Why a cache operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("no Redis connection: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("Redis command failed: {0}")]
    Command(#[from] redis::RedisError),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
}

impl CacheError {
    fn kind(&self) -> &'static str {
        match self {
            CacheError::Pool(_) => "pool",
            CacheError::Command(_) => "command",
            CacheError::Timeout(_) => "timeout",
        }
    }
}

/// The Redis handle shared by all handlers.
#[derive(Clone)]
pub struct Cache {
    pool: Pool,
    prefix: Arc<str>,
    timeout: Duration,
}

impl Cache {
    /// Builds the pool. No connection is made yet, so a Redis that is down does not stop
    /// start-up.
    pub fn new(settings: &RedisSettings) -> Result<Self, deadpool_redis::CreatePoolError> {
        let mut config = Config::from_url(settings.url.clone());
        let mut pool_config = PoolConfig::new(settings.pool_size);
        pool_config.timeouts = Timeouts {
            wait: Some(settings.op_timeout),
            create: Some(settings.op_timeout),
            recycle: Some(settings.op_timeout),
        };
        config.pool = Some(pool_config);
        Ok(Self {
            pool: config.create_pool(Some(Runtime::Tokio1))?,
            prefix: settings.key_prefix.as_str().into(),
            timeout: settings.op_timeout,
        })
    }

    /// A key under this deployment's prefix: `{prefix}{scheme}:{rest}`.
    pub fn key(&self, scheme: &'static str, rest: std::fmt::Arguments<'_>) -> CacheKey {
        CacheKey {
            scheme,
            full: format!("{}{scheme}:{rest}", self.prefix),
        }
    }

    /// `MGET` of `keys` in one round trip. `judge` reads the values and says whether the read
    /// was a hit (recorded as `cache.hit` on the span) along with what to return. The span is
    /// named after the first key, which is the one the caller is after.
    pub async fn mget<T>(
        &self,
        keys: &[CacheKey],
        judge: impl FnOnce(Vec<Option<String>>) -> (bool, T),
    ) -> Result<T, CacheError> {
        let Some(first) = keys.first() else {
            return Ok(judge(Vec::new()).1);
        };
        let span = cache_span("MGET", first);
        span.record("db.operation.batch.size", keys.len() as i64);
        let full: Vec<String> = keys.iter().map(|k| k.full.clone()).collect();
        let values = self
            .command(&span, |mut conn| async move {
                redis::cmd("MGET")
                    .arg(&full)
                    .query_async::<Vec<Option<String>>>(&mut conn)
                    .await
            })
            .await?;
        let (hit, out) = judge(values);
        span.record("cache.hit", hit);
        Ok(out)
    }

    /// `EVAL` of a Lua script over `keys` (named after the first) with integer arguments,
    /// returning its integer result: several dependent writes in one atomic round trip.
    pub async fn eval(
        &self,
        script: &'static str,
        keys: &[CacheKey],
        args: &[i64],
    ) -> Result<i64, CacheError> {
        let Some(first) = keys.first() else {
            return Ok(0);
        };
        let span = cache_span("EVAL", first);
        span.record("db.operation.batch.size", keys.len() as i64);
        let full: Vec<String> = keys.iter().map(|k| k.full.clone()).collect();
        let result = self
            .command(&span, |mut conn| async move {
                redis::cmd("EVAL")
                    .arg(script)
                    .arg(full.len())
                    .arg(&full)
                    .arg(args)
                    .query_async::<i64>(&mut conn)
                    .await
            })
            .await;
        if result.is_err() {
            metrics::cache_request("EVAL", CacheResult::Error);
        }
        result
    }

    /// `SET key value EX ttl`, and once it is stored, the business event `event` with
    /// `attributes` on the SET span (e.g. `feed.cached`).
    pub async fn set_ex_with_event(
        &self,
        key: &CacheKey,
        value: String,
        ttl: Duration,
        event: &'static str,
        attributes: Vec<KeyValue>,
    ) -> Result<(), CacheError> {
        let span = cache_span("SET", key);
        let result = self
            .command(&span, |mut conn| {
                let k = key.full.clone();
                async move {
                    conn.set_ex::<_, _, ()>(k, value, ttl.as_secs().max(1))
                        .await
                }
            })
            .await;
        match &result {
            Ok(()) => span.add_event(event, attributes),
            Err(_) => metrics::cache_request("SET", CacheResult::Error),
        }
        result
    }

    /// `PING`, for readiness.
    pub async fn ping(&self) -> Result<(), CacheError> {
        let span = tracing::info_span!(
            "cache.ping",
            otel.name = "PING",
            otel.kind = "client",
            db.system.name = "redis",
            db.operation.name = "PING",
            otel.status_code = Empty,
            error.type = Empty,
        );
        self.command(&span, |mut conn| async move {
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map(|_| ())
        })
        .await
    }

    /// Checks out a connection and runs one command inside `span`, both bounded by the
    /// timeout; a failure marks the span as an error.
    async fn command<T, F, Fut>(&self, span: &tracing::Span, f: F) -> Result<T, CacheError>
    where
        F: FnOnce(deadpool_redis::Connection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let work = async {
            let conn = self.pool.get().await?;
            Ok::<T, CacheError>(f(conn).await?)
        };
        let result = match tokio::time::timeout(self.timeout, work.instrument(span.clone())).await {
            Ok(result) => result,
            Err(_) => Err(CacheError::Timeout(self.timeout)),
        };
        if let Err(err) = &result {
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", err.to_string());
            span.record("error.type", err.kind());
        }
        result
    }
}

fn cache_span(operation: &'static str, key: &CacheKey) -> tracing::Span {
    tracing::info_span!(
        "cache",
        otel.name = format_args!("{operation} {}", key.scheme),
        otel.kind = "client",
        db.system.name = "redis",
        db.operation.name = operation,
        cache.key = key.full.as_str(),
        cache.hit = Empty,
        db.operation.batch.size = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
        error.type = Empty,
    )
}
