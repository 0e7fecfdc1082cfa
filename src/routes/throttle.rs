//! Throttles kept in Redis, so every replica sees the same counts: failed logins per account
//! and per client address, and registrations per client address.
//!
//! **Logins.** An attempt is counted *before* its password is verified, in one atomic step (a
//! Lua script: compare every counter with `LOGIN_MAX_FAILURES`, then increment them all, the
//! window set by the first). So a burst of N concurrent guesses admits at most
//! `LOGIN_MAX_FAILURES` verifications, however they interleave; checking and counting in two
//! round trips let every attempt in flight pass the check. A correct password gives its count
//! back. Once a counter is at the maximum, login answers 429 with `Retry-After` until the
//! window ends, a correct password included (otherwise the block would only slow a guesser
//! down, not stop it).
//!
//! ```text
//!  login ─▶ user lookup ─▶ EVAL admit(login:acct:{id}, login:addr:{ip}) ── a counter at max ──▶ 429
//!                                   │ (counted; Redis down: not throttled, warned once)
//!                                   ▼
//!                          Argon2 verification (a dummy one for unknown users)
//!                                   ├─ wrong ─▶ 401 (the count stays)
//!                                   └─ right ─▶ EVAL give back (DECR both) ─▶ 200
//! ```
//!
//! **Registrations.** Each registration that passes validation counts against its client
//! address (`register:addr:{ip}`) for an hour; past `REGISTER_MAX_PER_HOUR` the answer is 429
//! with `Retry-After`, before any password is hashed.
//!
//! Keys (under `REDIS_KEY_PREFIX`): `login:acct:{user id}`, or, for a login that names nobody,
//! `login:acct:{first 16 bytes of SHA-256 of the lower-cased login, hex}` (so the key holds no
//! email address; unknown names are throttled like known ones and so tell nothing apart);
//! `login:addr:{client}`; `register:addr:{client}`, where the client is the address that
//! `TRUSTED_PROXIES` makes of the request (`client_address`), an IPv6 one by its /64.
//!
//! Redis is an optimisation elsewhere but a safety net here; still, a Redis outage must not
//! lock every user out, so the throttles fail open: requests go unthrottled (password hashing
//! stays bounded by `routes::hashing`), and one warning says so per outage.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::cache::{Cache, CacheError, CacheKey};
use crate::client_address::ClientAddress;
use crate::errors::ErrorChain;
use crate::telemetry::logging;

/// How long failed logins count (CONTRACT.md §1, `LOGIN_MAX_FAILURES`).
pub const WINDOW: Duration = Duration::from_secs(15 * 60);

/// How long registrations count (`REGISTER_MAX_PER_HOUR`).
pub const REGISTER_WINDOW: Duration = Duration::from_secs(3600);

/// Admits an attempt against every counter in KEYS: when one is at ARGV[1] already, nothing is
/// counted and the answer is the longest remaining window in seconds (at least 1); otherwise
/// every counter is incremented (a new one expires ARGV[2] seconds later) and the answer is 0.
const ADMIT: &str = r"
local wait = 0
for _, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') >= tonumber(ARGV[1]) then
    local ttl = redis.call('TTL', key)
    if ttl < 1 then ttl = 1 end
    if ttl > wait then wait = ttl end
  end
end
if wait > 0 then return wait end
for _, key in ipairs(KEYS) do
  if redis.call('INCR', key) == 1 then redis.call('EXPIRE', key, ARGV[2]) end
end
return 0
";

/// Takes one count back from every counter in KEYS that still holds one.
const GIVE_BACK: &str = r"
for _, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') > 0 then redis.call('DECR', key) end
end
return 0
";

/// Whom a login attempt is counted against.
pub enum Account<'a> {
    /// The login named this user.
    Known(Uuid),
    /// The login (a username or email) named nobody.
    Unknown(&'a str),
}

/// What the throttle says of an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Counted; go on.
    Admitted,
    /// Refused: a counter is at its maximum for this many more seconds.
    Refused { retry_after_s: u64 },
    /// Redis did not answer: not counted, not refused (fail open).
    Unthrottled,
}

/// Counters in Redis behind the two throttles.
#[derive(Clone)]
struct Counters {
    cache: Cache,
    /// What is counted, for the outage warning: `login`, `registration`.
    what: &'static str,
    /// Set while Redis is failing, so the outage is warned about once, not per request.
    outage_warned: Arc<AtomicBool>,
}

impl Counters {
    fn new(cache: Cache, what: &'static str) -> Self {
        Self {
            cache,
            what,
            outage_warned: Arc::new(AtomicBool::new(false)),
        }
    }

    async fn admit(&self, keys: &[CacheKey], max: u32, window: Duration) -> Admission {
        let args = [i64::from(max), window.as_secs().max(1) as i64];
        match self.cache.eval(ADMIT, keys, &args).await {
            Ok(0) => {
                self.answered();
                Admission::Admitted
            }
            Ok(wait) => {
                self.answered();
                Admission::Refused {
                    retry_after_s: u64::try_from(wait).unwrap_or(1).max(1),
                }
            }
            Err(err) => {
                self.failed(&err);
                Admission::Unthrottled
            }
        }
    }

    async fn give_back(&self, keys: &[CacheKey]) {
        match self.cache.eval(GIVE_BACK, keys, &[]).await {
            Ok(_) => self.answered(),
            Err(err) => self.failed(&err),
        }
    }

    fn answered(&self) {
        self.outage_warned.store(false, Ordering::Relaxed);
    }

    fn failed(&self, err: &CacheError) {
        if !self.outage_warned.swap(true, Ordering::Relaxed) {
            slog::warn!(logging::logger(), "{} throttling is off while Redis is unavailable", self.what;
                "error" => %ErrorChain(err),
            );
        }
    }
}

/// The failed-login counters.
#[derive(Clone)]
pub struct LoginThrottle {
    counters: Counters,
    max_failures: u32,
}

impl LoginThrottle {
    pub fn new(cache: Cache, max_failures: u32) -> Self {
        Self {
            counters: Counters::new(cache, "login"),
            max_failures,
        }
    }

    fn keys(&self, account: &Account<'_>, address: Option<ClientAddress>) -> Vec<CacheKey> {
        let cache = &self.counters.cache;
        let account = match account {
            Account::Known(id) => cache.key("login", format_args!("acct:{}", id.simple())),
            Account::Unknown(login) => {
                let digest = Sha256::digest(login.trim().to_lowercase().as_bytes());
                let short = hex::encode(&digest[..16]);
                cache.key("login", format_args!("acct:{short}"))
            }
        };
        let mut keys = vec![account];
        if let Some(client) = address {
            keys.push(cache.key("login", format_args!("addr:{}", client.throttle_key())));
        }
        keys
    }

    /// Counts an attempt as a failure before it is verified, unless the account or the address
    /// is at `LOGIN_MAX_FAILURES` already.
    pub async fn admit(&self, account: &Account<'_>, address: Option<ClientAddress>) -> Admission {
        let keys = self.keys(account, address);
        self.counters.admit(&keys, self.max_failures, WINDOW).await
    }

    /// Takes back the count of an admitted attempt that did not fail (a correct password, or
    /// no verification ran).
    pub async fn give_back(&self, account: &Account<'_>, address: Option<ClientAddress>) {
        let keys = self.keys(account, address);
        self.counters.give_back(&keys).await;
    }
}

/// The registration counters.
#[derive(Clone)]
pub struct RegisterThrottle {
    counters: Counters,
    max_per_hour: u32,
}

impl RegisterThrottle {
    pub fn new(cache: Cache, max_per_hour: u32) -> Self {
        Self {
            counters: Counters::new(cache, "registration"),
            max_per_hour,
        }
    }

    /// Counts a registration from `address`, unless it is at `REGISTER_MAX_PER_HOUR` already.
    pub async fn admit(&self, address: Option<ClientAddress>) -> Admission {
        let Some(client) = address else {
            return Admission::Unthrottled;
        };
        let key = self
            .counters
            .cache
            .key("register", format_args!("addr:{}", client.throttle_key()));
        self.counters
            .admit(&[key], self.max_per_hour, REGISTER_WINDOW)
            .await
    }
}
