//! Feed pages in Redis, invalidated by versioning (see the key scheme in the parent module).

use std::time::Duration;

use uuid::Uuid;

use super::{Cache, CacheKey};
use crate::domain::{Cursor, FeedKind, Limit};

/// How long the version key outlives the last write (see the module docs of `cache`).
const VERSION_TTL: Duration = Duration::from_secs(24 * 3600);

/// Reads and writes cached feed pages.
#[derive(Clone)]
pub struct FeedCache {
    cache: Cache,
    ttl: Duration,
}

/// Identifies one cached page.
pub struct PageKey {
    pub kind: FeedKind,
    pub user: Option<Uuid>,
    pub limit: Limit,
    pub cursor: Option<Cursor>,
}

impl FeedCache {
    pub fn new(cache: Cache, ttl: Duration) -> Self {
        Self { cache, ttl }
    }

    fn version_key(&self) -> CacheKey {
        self.cache.key("feed", format_args!("version"))
    }

    /// The current feed version; `None` when Redis cannot say, and then nothing is cached.
    pub async fn version(&self) -> Option<i64> {
        match self.cache.get(&self.version_key()).await {
            Ok(Some(v)) => v.parse().ok(),
            Ok(None) => Some(0),
            Err(_) => None,
        }
    }

    fn page_key(&self, version: i64, page: &PageKey) -> CacheKey {
        let user = page.user.map(|u| u.simple().to_string());
        let cursor = page.cursor.map(|c| c.encode());
        self.cache.key(
            "feed",
            format_args!(
                "v{version}:{}:{}:{}:{}",
                page.kind,
                user.as_deref().unwrap_or("-"),
                page.limit.get(),
                cursor.as_deref().unwrap_or("-"),
            ),
        )
    }

    /// The cached JSON of a page at this version, if any. Errors count as misses.
    pub async fn get(&self, version: i64, page: &PageKey) -> Option<String> {
        self.cache
            .get(&self.page_key(version, page))
            .await
            .ok()
            .flatten()
    }

    /// Stores a page; a failure only costs a future miss.
    pub async fn put(&self, version: i64, page: &PageKey, json: String) {
        let _ = self
            .cache
            .set_ex(&self.page_key(version, page), json, self.ttl)
            .await;
    }

    /// Makes every cached page stale. Called after each write that changes what feeds show.
    /// If Redis is down the bump is lost, but then pages could not be cached either, and old
    /// ones expire within the TTL.
    pub async fn invalidate(&self) {
        let _ = self
            .cache
            .incr(&self.version_key(), VERSION_TTL.max(self.ttl * 10))
            .await;
    }
}
