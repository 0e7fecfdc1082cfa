//! Login throttling: failed logins are counted per account and per client address in Redis,
//! so every replica sees the same counts. Once either count reaches `LOGIN_MAX_FAILURES` within
//! [`WINDOW`], login answers 429 with `Retry-After` for that key until the window ends, a
//! correct password included (otherwise the block would only slow a guesser down, not stop it).
//!
//! ```text
//!  login ─▶ user lookup ─▶ GET+TTL login:acct:{id} and login:addr:{ip} ── at max ──▶ 429
//!                                   │ (Redis down: not blocked, warned once)
//!                                   ▼
//!                          Argon2 verification (a dummy one for unknown users)
//!                                   └─ wrong ─▶ INCR both (window set by the first) ─▶ 401
//! ```
//!
//! Keys (under `REDIS_KEY_PREFIX`): `login:acct:{user id}`, or, for a login that names nobody,
//! `login:acct:{first 16 bytes of SHA-256 of the lower-cased login, hex}` (so the key holds no
//! email address; unknown names are throttled like known ones and so tell nothing apart);
//! `login:addr:{client IP}`.
//!
//! The check and the count are separate round trips, not one atomic step: attempts in flight
//! together can all pass the check, so a burst may exceed the limit by the number of concurrent
//! requests (each still costs an Argon2 verification, which bounds the rate per worker).
//!
//! Redis is an optimisation elsewhere but a safety net here; still, a Redis outage must not
//! lock every user out, so the throttle fails open: logins work unthrottled, and one warning
//! says so per outage.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::cache::{Cache, CacheError, CacheKey};
use crate::errors::ErrorChain;
use crate::telemetry::logging;

/// How long failed logins count (CONTRACT.md §1, `LOGIN_MAX_FAILURES`).
pub const WINDOW: Duration = Duration::from_secs(15 * 60);

/// Whom a login attempt is counted against.
pub enum Account<'a> {
    /// The login named this user.
    Known(Uuid),
    /// The login (a username or email) named nobody.
    Unknown(&'a str),
}

/// The failed-login counters.
#[derive(Clone)]
pub struct LoginThrottle {
    cache: Cache,
    max_failures: u32,
    /// Set while Redis is failing, so the outage is warned about once, not per login.
    outage_warned: Arc<AtomicBool>,
}

impl LoginThrottle {
    pub fn new(cache: Cache, max_failures: u32) -> Self {
        Self {
            cache,
            max_failures,
            outage_warned: Arc::new(AtomicBool::new(false)),
        }
    }

    fn keys(&self, account: &Account<'_>, address: Option<IpAddr>) -> Vec<CacheKey> {
        let account = match account {
            Account::Known(id) => self
                .cache
                .key("login", format_args!("acct:{}", id.simple())),
            Account::Unknown(login) => {
                let digest = Sha256::digest(login.trim().to_lowercase().as_bytes());
                let short = hex::encode(&digest[..16]);
                self.cache.key("login", format_args!("acct:{short}"))
            }
        };
        let mut keys = vec![account];
        if let Some(ip) = address {
            keys.push(self.cache.key("login", format_args!("addr:{ip}")));
        }
        keys
    }

    /// `Some(seconds until the block ends)` when this account or address may not log in now.
    pub async fn blocked_for(&self, account: &Account<'_>, address: Option<IpAddr>) -> Option<u64> {
        let mut retry_after = None;
        for key in self.keys(account, address) {
            match self.cache.get_count_ttl(&key).await {
                Ok(Some((count, ttl))) if count >= i64::from(self.max_failures) => {
                    retry_after = Some(retry_after.unwrap_or(0).max(ttl));
                }
                Ok(_) => self.redis_answered(),
                Err(err) => {
                    self.redis_failed(&err);
                    return None;
                }
            }
        }
        retry_after
    }

    /// Counts a failed login against the account and the address.
    pub async fn record_failure(&self, account: &Account<'_>, address: Option<IpAddr>) {
        for key in self.keys(account, address) {
            if let Err(err) = self.cache.incr_in_window(&key, WINDOW).await {
                self.redis_failed(&err);
                return;
            }
        }
        self.redis_answered();
    }

    fn redis_answered(&self) {
        self.outage_warned.store(false, Ordering::Relaxed);
    }

    fn redis_failed(&self, err: &CacheError) {
        if !self.outage_warned.swap(true, Ordering::Relaxed) {
            slog::warn!(logging::logger(), "login throttling is off while Redis is unavailable";
                "error" => %ErrorChain(err),
            );
        }
    }
}
