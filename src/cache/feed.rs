//! Feed pages in Redis: a write makes stale only what it changes, and a hit is one round trip.
//!
//! ```text
//!  write (post, delete, like, comment, follow)            read of a page by reader R
//!    EVAL: t = INCR feed:clock                              MGET page, feed:clock, and the
//!          SET changed:user:{writer} = t                         changed:* keys the page depends on
//!          SET changed:all = t        (deleted post)        fresh ⇔ page present and every
//!                                                                 changed:* value ≤ page.built_at
//!                                                           stale/absent ─▶ Postgres, built_at =
//!                                                                the clock read above ─▶ SET page
//! ```
//!
//! Every write takes a tick `t` of one logical clock (`feed:clock`) and stamps the keys of what
//! it changed with it. A page is stored under a fixed key with `built_at`, the clock as it was
//! read *before* its query ran: a write stamped `t ≤ built_at` had committed before the query
//! started, so the page shows it; a write stamped later may be missing, so the page is stale for
//! whoever depends on that stamp. The page key, the clock and the stamps are fetched together
//! with one `MGET`, so a hit costs one Redis round trip; a miss costs the same `MGET`, Postgres,
//! and one `SET`. Races between builders only cost a miss: freshness is judged from the
//! `built_at` stored with the page, never from which write came last.
//!
//! What depends on what (the consistency rules, tested in `tests/api/feed_cache.rs`):
//!
//! | stamp | bumped by | pages that depend on it |
//! | --- | --- | --- |
//! | `changed:all` | deleting a post; a finished audio job | every page: nobody sees a deleted post once the delete has returned |
//! | `changed:user:{u}` | any write by `u` (post, delete, like, unlike, comment, follow, unfollow) | every page `u` reads (with a token): a user sees their own write at once, on every feed |
//!
//! Everything else is stale for at most `FEED_CACHE_TTL_S` for other readers: like and comment
//! counts, the order of `trending`, a new post on `global` and on its author's followers'
//! timelines. That is the trade: a per-user timeline is read a few times between the posts of
//! the people its owner follows, so fanning a new post out to every follower's timeline would
//! make timelines miss on nearly every read; and a stamp for the first page of `global` on each
//! new post cost that page one miss per post (on the benchmark's mix, BENCHMARKS.md, `global`
//! served 88.7 % of pages with it, under the 90 % aimed at).
//!
//! `FEED_CACHE_TTL_S=0` turns the cache off: no page is read or written and writes stamp
//! nothing (run every replica of one Redis with the same setting).

use std::time::Duration;

use opentelemetry::KeyValue;
use uuid::Uuid;

use super::{Cache, CacheKey};
use crate::domain::{Cursor, FeedKind, Limit};
use crate::telemetry::metrics::{self, CacheResult};

/// Stamps outlive every page built before them: a stamp that has expired reads as 0, which is
/// only right once no such page can be left.
const MIN_STAMP_TTL: Duration = Duration::from_secs(3600);

/// `KEYS[1]` is the clock; every other key is stamped with its new value, for `ARGV[1]`
/// seconds. Atomic, so stamps only ever grow.
const STAMP_SCRIPT: &str = "local t = redis.call('INCR', KEYS[1]) \
     for i = 2, #KEYS do redis.call('SET', KEYS[i], t, 'EX', ARGV[1]) end \
     return t";

/// Reads and writes cached feed pages.
#[derive(Clone)]
pub struct FeedCache {
    cache: Cache,
    /// Zero: the cache is off.
    ttl: Duration,
}

/// Identifies one cached page.
pub struct PageKey {
    pub kind: FeedKind,
    /// The owner of a per-user feed (`timeline`, `recommended`); `None` for shared feeds.
    pub user: Option<Uuid>,
    pub limit: Limit,
    pub cursor: Option<Cursor>,
}

/// What a write changed, for [`FeedCache::changed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedChange {
    /// A new post: stale for its author at once, for others within the TTL.
    NewPost,
    /// A deleted post: every page is stale for everyone.
    DeletedPost,
    /// Likes, comments, follows: stale for the writer at once, for others within the TTL.
    ByWriter,
    /// A post changed for everyone (its audio was processed): every page is stale. Rare (one
    /// per upload), so the misses it causes do not matter.
    PostChanged,
}

/// The answer of [`FeedCache::lookup`].
pub enum Lookup {
    /// A fresh page, its JSON.
    Hit(String),
    /// Build the page; store it with [`FeedCache::store`] at this clock value, if there is one
    /// (none when Redis could not answer or the cache is off: then nothing is stored).
    Miss { built_at: Option<i64> },
}

impl FeedCache {
    /// `ttl` zero turns the cache off.
    pub fn new(cache: Cache, ttl: Duration) -> Self {
        Self { cache, ttl }
    }

    /// Whether pages are cached at all (`FEED_CACHE_TTL_S` not 0).
    pub fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    fn clock_key(&self) -> CacheKey {
        self.cache.key("feed", format_args!("clock"))
    }

    fn all_key(&self) -> CacheKey {
        self.cache.key("feed", format_args!("changed:all"))
    }

    fn user_key(&self, user: Uuid) -> CacheKey {
        self.cache
            .key("feed", format_args!("changed:user:{}", user.simple()))
    }

    fn page_key(&self, page: &PageKey) -> CacheKey {
        let user = page.user.map(|u| u.simple().to_string());
        let cursor = page.cursor.map(|c| c.encode());
        self.cache.key(
            "feed",
            format_args!(
                "page:{}:{}:{}:{}",
                page.kind,
                user.as_deref().unwrap_or("-"),
                page.limit.get(),
                cursor.as_deref().unwrap_or("-"),
            ),
        )
    }

    /// The page as `reader` (the caller, when known) may see it, in one round trip: the page,
    /// the clock and the stamps it depends on. Counted in `cache_requests_total`, once per page.
    pub async fn lookup(&self, page: &PageKey, reader: Option<Uuid>) -> Lookup {
        if !self.enabled() {
            return Lookup::Miss { built_at: None };
        }
        let mut keys = vec![self.page_key(page), self.clock_key(), self.all_key()];
        if let Some(reader) = reader {
            keys.push(self.user_key(reader));
        }
        let result = self
            .cache
            .mget(&keys, |values| {
                let stamp = |v: &Option<String>| -> i64 {
                    v.as_deref().and_then(|s| s.parse().ok()).unwrap_or(0)
                };
                let clock = values.get(1).map(stamp).unwrap_or(0);
                let newest_change = values.iter().skip(2).map(stamp).max().unwrap_or(0);
                let fresh = values
                    .first()
                    .and_then(|v| v.as_deref())
                    .and_then(|v| v.split_once('\n'))
                    .and_then(|(built_at, json)| {
                        let built_at: i64 = built_at.parse().ok()?;
                        (newest_change <= built_at).then(|| json.to_owned())
                    });
                match fresh {
                    Some(json) => (true, Lookup::Hit(json)),
                    None => (
                        false,
                        Lookup::Miss {
                            built_at: Some(clock),
                        },
                    ),
                }
            })
            .await;
        let outcome = match &result {
            Ok(Lookup::Hit(_)) => CacheResult::Hit,
            Ok(Lookup::Miss { .. }) => CacheResult::Miss,
            Err(_) => CacheResult::Error,
        };
        metrics::cache_page_request(page.kind.as_str(), outcome);
        result.unwrap_or(Lookup::Miss { built_at: None })
    }

    /// Stores a page built from a query that started after the clock read `built_at`, with the
    /// business event `feed.cached` on the SET span. A failure only costs a future miss.
    pub async fn store(&self, page: &PageKey, built_at: i64, json: &str, item_count: usize) {
        if !self.enabled() {
            return;
        }
        let attributes = vec![
            KeyValue::new("feed.type", page.kind.as_str()),
            KeyValue::new("feed.item_count", item_count as i64),
            KeyValue::new("feed.bytes", json.len() as i64),
            KeyValue::new("feed.built_at", built_at),
            KeyValue::new("cache.ttl_s", self.ttl.as_secs() as i64),
        ];
        let _ = self
            .cache
            .set_ex_with_event(
                &self.page_key(page),
                format!("{built_at}\n{json}"),
                self.ttl,
                "feed.cached",
                attributes,
            )
            .await;
    }

    /// Stamps what a write by `writer` changed; called after the write has committed. If
    /// Redis is down the stamp is lost, but then no page can be read either, and pages cached
    /// before expire within the TTL.
    pub async fn changed(&self, writer: Uuid, change: FeedChange) {
        if !self.enabled() {
            return;
        }
        let mut keys = vec![self.clock_key(), self.user_key(writer)];
        match change {
            FeedChange::DeletedPost | FeedChange::PostChanged => keys.push(self.all_key()),
            FeedChange::NewPost | FeedChange::ByWriter => {}
        }
        let stamp_ttl = MIN_STAMP_TTL.max(self.ttl * 10).as_secs() as i64;
        let _ = self.cache.eval(STAMP_SCRIPT, &keys, &[stamp_ttl]).await;
    }
}
