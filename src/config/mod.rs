//! Settings from the environment (CONTRACT.md §1).
//!
//! Every variable is read once, at start-up, through [`env`] (the leaf that reads variables and
//! says what is wrong with one), so that tests can build settings from a map instead of the
//! process environment.

pub mod env;

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

pub use env::{ConfigError, Env, LogLevel};

use crate::client_address::TrustedProxies;
use crate::telemetry::config::TelemetrySettings;

/// Everything the service is configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `BIND_ADDR`: where the HTTP server listens.
    pub bind_addr: SocketAddr,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    /// `RECOMMENDER_URL`: the Gorse-compatible recommender; `None` disables `type=recommended`.
    pub recommender: Option<RecommenderSettings>,
    /// `LOG_LEVEL`.
    pub log_level: LogLevel,
    /// `FEED_CACHE_TTL_S`: how long a cached feed page lives in Redis; zero turns the cache off.
    pub feed_cache_ttl: Duration,
    /// `TOKEN_TTL_DAYS`: lifetime of a bearer token.
    pub token_ttl: Duration,
    /// `SHUTDOWN_TIMEOUT_S`: how long in-flight requests may take to finish on SIGTERM.
    pub shutdown_timeout: Duration,
    /// `LOGIN_MAX_FAILURES`: failed logins per account, and per client address, within 15
    /// minutes before login answers 429.
    pub login_max_failures: u32,
    /// `TRUSTED_PROXIES`: load balancers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: TrustedProxies,
    /// `SHUTDOWN_DRAIN_S`: after SIGTERM, how long `/ready` fails while requests are still
    /// served, before the listener closes.
    pub shutdown_drain: Duration,
    pub limits: LimitSettings,
    /// `TRACECONTEXT_TEST_ENDPOINT`: mounts `POST /test` for the W3C trace-context test suite.
    pub tracecontext_test_endpoint: bool,
    pub audio: AudioSettings,
    pub telemetry: TelemetrySettings,
}

/// Uploads and their background processing (CONTRACT.md §1 and §6).
#[derive(Debug, Clone)]
pub struct AudioSettings {
    /// `AUDIO_STORAGE_DIR`: uploaded and processed files (created if missing), unless
    /// `object_storage` is set.
    pub storage_dir: PathBuf,
    /// `AUDIO_STORAGE_URL` and the `AWS_*` variables: S3-compatible object storage instead of
    /// `storage_dir`.
    pub object_storage: Option<ObjectStorageSettings>,
    /// `AUDIO_MAX_BYTES`: the largest upload, enforced while the body streams in.
    pub max_bytes: u64,
    /// `AUDIO_WORKERS`: jobs this process runs at once.
    pub workers: usize,
    /// `AUDIO_JOB_LEASE_S`: a claim not renewed for this long may be taken by another worker.
    pub job_lease: Duration,
    /// `AUDIO_MAX_ATTEMPTS`: tries of one job before it ends `failed`.
    pub max_attempts: i32,
    /// `AUDIO_STAGE_TIMEOUT_S`: bound on each ffprobe/ffmpeg run.
    pub stage_timeout: Duration,
    /// `AUDIO_MAX_DURATION_S`: longer audio fails in the probe stage (`too_long`); every
    /// ffmpeg run is bounded to it.
    pub max_duration: Duration,
    /// `AUDIO_QUOTA_BYTES`: stored audio per user.
    pub quota_bytes: u64,
    /// `AUDIO_PENDING_PER_USER`: unfinished jobs per user.
    pub pending_per_user: u32,
}

/// The standard AWS variables handed to the S3 client as they are (credentials, region,
/// endpoint, and the web-identity and container credential sources).
pub const AWS_VARIABLES: [&str; 13] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
];

/// S3-compatible object storage: `AUDIO_STORAGE_URL=s3://bucket/prefix` and the `AWS_*`
/// variables.
#[derive(Clone)]
pub struct ObjectStorageSettings {
    pub bucket: String,
    /// Prepended to every key, without slashes at either end; empty for none.
    pub prefix: String,
    /// `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`: an S3-compatible server, addressed
    /// path-style; `http://` is allowed. `None`: Amazon S3 itself.
    pub endpoint: Option<Url>,
    /// `AWS_REGION`, else `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: String,
    /// Every variable of [`AWS_VARIABLES`] that is set, by name. Holds credentials: never
    /// logged (the `Debug` output shows the names only).
    pub aws: Vec<(&'static str, String)>,
}

impl fmt::Debug for ObjectStorageSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.aws.iter().map(|(name, _)| *name).collect();
        f.debug_struct("ObjectStorageSettings")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint.as_ref().map(Url::as_str))
            .field("region", &self.region)
            .field("aws", &names)
            .finish()
    }
}

impl ObjectStorageSettings {
    /// Reads `AUDIO_STORAGE_URL` (unset: `None`) and, when it is set, the `AWS_*` variables.
    fn from_source(env: &Env<'_>) -> Result<Option<Self>, ConfigError> {
        const VAR: &str = "AUDIO_STORAGE_URL";
        let Some(raw) = env.get(VAR) else {
            return Ok(None);
        };
        let url = check_url(VAR, raw.trim(), &["s3"])?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ConfigError::new(
                VAR,
                "credentials do not belong in the URL; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            ));
        }
        if url.query().is_some() || url.fragment().is_some() || url.port().is_some() {
            return Err(ConfigError::new(
                VAR,
                format!("{raw:?} is not of the form s3://bucket/prefix"),
            ));
        }
        let bucket = url.host_str().unwrap_or_default().to_owned();
        if !valid_bucket(&bucket) {
            return Err(ConfigError::new(
                VAR,
                format!("{bucket:?} is not a bucket name (3 to 63 of a-z, 0-9, '.', '-')"),
            ));
        }
        let prefix = url.path().trim_matches('/').to_owned();
        // The URL parser has resolved `.` and `..` already.
        if prefix.contains("//") {
            return Err(ConfigError::new(
                VAR,
                format!("the prefix {prefix:?} has an empty segment"),
            ));
        }
        let endpoint = match env
            .get("AWS_ENDPOINT_URL_S3")
            .map(|v| ("AWS_ENDPOINT_URL_S3", v))
            .or_else(|| env.get("AWS_ENDPOINT_URL").map(|v| ("AWS_ENDPOINT_URL", v)))
        {
            None => None,
            Some((name, raw)) => Some(check_url(name, raw.trim(), &["http", "https"])?),
        };
        let region = env
            .get("AWS_REGION")
            .or_else(|| env.get("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".to_owned());
        let aws = AWS_VARIABLES
            .iter()
            .filter_map(|name| env.get(name).map(|value| (*name, value.trim().to_owned())))
            .collect();
        Ok(Some(Self {
            bucket,
            prefix,
            endpoint,
            region,
            aws,
        }))
    }
}

/// S3's bucket naming rules, the part that a URL's host can break.
fn valid_bucket(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// What a client meets (CONTRACT.md §1 "Limits"), apart from the audio ones.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// `PASSWORD_HASH_CONCURRENCY`: Argon2 runs at once (default: the number of CPUs).
    pub password_hash_concurrency: usize,
    /// `PASSWORD_HASH_WAIT_MS`: how long a request waits for a hashing slot before 503 `busy`.
    pub password_hash_wait: Duration,
    /// `REGISTER_MAX_PER_HOUR`: registrations per client address per hour.
    pub register_max_per_hour: u32,
    /// `REQUEST_BODY_IDLE_TIMEOUT_S`: a body that sends nothing this long is answered 408.
    pub body_idle_timeout: Duration,
    /// `TOKEN_MAX_PER_USER`: live tokens per user.
    pub token_max_per_user: u32,
    /// `TOKEN_PURGE_INTERVAL_S`: how often expired tokens are deleted (one replica at a time).
    pub token_purge_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// `DATABASE_URL`. May hold a password: never logged.
    pub url: String,
    /// `DB_CONNECT_TIMEOUT_S`: how long start-up keeps retrying an unreachable Postgres.
    pub connect_timeout: Duration,
    /// `DB_POOL_SIZE`.
    pub pool_size: u32,
    /// `DB_POOL_TIMEOUT_MS`: how long a request waits for a connection before answering 503.
    pub pool_timeout: Duration,
    /// `DB_SLOW_QUERY_MS`: statements at least this slow are logged (inside their span).
    pub slow_query: Duration,
}

#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `REDIS_URL`. May hold a password: never logged.
    pub url: String,
    /// `REDIS_KEY_PREFIX`: prepended to every key, so several deployments can share one Redis.
    pub key_prefix: String,
    /// `REDIS_TIMEOUT_MS`: bound on every Redis operation, so a hung Redis cannot hang a request.
    pub op_timeout: Duration,
    /// `REDIS_POOL_SIZE`.
    pub pool_size: usize,
}

#[derive(Debug, Clone)]
pub struct RecommenderSettings {
    pub base_url: Url,
    /// `RECOMMENDER_TIMEOUT_MS`: after this the feed falls back to `trending`.
    pub timeout: Duration,
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&Env::process())
    }

    pub fn from_source(env: &Env<'_>) -> Result<Self, ConfigError> {
        let bind_addr = parse_bind_addr(&env.string("BIND_ADDR", "0.0.0.0:8787"))?;

        let database_url = env.string(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/sidechain",
        );
        check_url("DATABASE_URL", &database_url, &["postgres", "postgresql"])?;
        let database = DatabaseSettings {
            url: database_url,
            connect_timeout: env.seconds("DB_CONNECT_TIMEOUT_S", 30, 0, 3600)?,
            pool_size: env.bounded("DB_POOL_SIZE", 16u32, 1, 1000)?,
            pool_timeout: env.millis("DB_POOL_TIMEOUT_MS", 5000, 1, 600_000)?,
            slow_query: env.millis("DB_SLOW_QUERY_MS", 500, 0, 3_600_000)?,
        };

        let redis_url = env.string("REDIS_URL", "redis://127.0.0.1:6379");
        check_url(
            "REDIS_URL",
            &redis_url,
            &["redis", "rediss", "redis+unix", "unix"],
        )?;
        let redis = RedisSettings {
            url: redis_url,
            key_prefix: env.string("REDIS_KEY_PREFIX", "sidechain:"),
            op_timeout: env.millis("REDIS_TIMEOUT_MS", 250, 1, 60_000)?,
            pool_size: env.bounded("REDIS_POOL_SIZE", 32usize, 1, 1000)?,
        };

        let recommender = match env.get("RECOMMENDER_URL") {
            None => None,
            Some(raw) => {
                let base_url = check_url("RECOMMENDER_URL", raw.trim(), &["http", "https"])?;
                Some(RecommenderSettings {
                    base_url,
                    timeout: env.millis("RECOMMENDER_TIMEOUT_MS", 800, 1, 60_000)?,
                })
            }
        };

        Ok(Self {
            bind_addr,
            database,
            redis,
            recommender,
            log_level: env.parse("LOG_LEVEL", LogLevel::Info)?,
            feed_cache_ttl: env.seconds("FEED_CACHE_TTL_S", 30, 0, 86_400)?,
            token_ttl: Duration::from_secs(env.bounded("TOKEN_TTL_DAYS", 30u64, 1, 3650)? * 86_400),
            shutdown_timeout: env.seconds("SHUTDOWN_TIMEOUT_S", 30, 0, 3600)?,
            login_max_failures: env.bounded("LOGIN_MAX_FAILURES", 10u32, 1, 1_000_000)?,
            trusted_proxies: TrustedProxies::parse(&env.string("TRUSTED_PROXIES", ""))
                .map_err(|reason| ConfigError::new("TRUSTED_PROXIES", reason))?,
            shutdown_drain: env.seconds("SHUTDOWN_DRAIN_S", 5, 0, 3600)?,
            limits: LimitSettings {
                password_hash_concurrency: env.bounded(
                    "PASSWORD_HASH_CONCURRENCY",
                    std::thread::available_parallelism().map_or(1, |n| n.get()),
                    1,
                    1024,
                )?,
                password_hash_wait: env.millis("PASSWORD_HASH_WAIT_MS", 2000, 0, 600_000)?,
                register_max_per_hour: env.bounded("REGISTER_MAX_PER_HOUR", 20u32, 1, 1_000_000)?,
                body_idle_timeout: env.seconds("REQUEST_BODY_IDLE_TIMEOUT_S", 10, 1, 3600)?,
                token_max_per_user: env.bounded("TOKEN_MAX_PER_USER", 20u32, 1, 100_000)?,
                token_purge_interval: env.seconds("TOKEN_PURGE_INTERVAL_S", 3600, 1, 604_800)?,
            },
            tracecontext_test_endpoint: env.bool("TRACECONTEXT_TEST_ENDPOINT", false)?,
            audio: AudioSettings {
                storage_dir: PathBuf::from(env.string("AUDIO_STORAGE_DIR", "./data/audio")),
                object_storage: ObjectStorageSettings::from_source(env)?,
                max_bytes: env.bounded("AUDIO_MAX_BYTES", 52_428_800u64, 1, 1 << 40)?,
                workers: env.bounded("AUDIO_WORKERS", 1usize, 0, 256)?,
                job_lease: env.seconds("AUDIO_JOB_LEASE_S", 60, 1, 86_400)?,
                max_attempts: env.bounded("AUDIO_MAX_ATTEMPTS", 3i32, 1, 100)?,
                stage_timeout: env.seconds("AUDIO_STAGE_TIMEOUT_S", 120, 1, 86_400)?,
                max_duration: env.seconds("AUDIO_MAX_DURATION_S", 1800, 1, 86_400)?,
                quota_bytes: env.bounded("AUDIO_QUOTA_BYTES", 1u64 << 30, 1, 1 << 50)?,
                pending_per_user: env.bounded("AUDIO_PENDING_PER_USER", 3u32, 1, 10_000)?,
            },
            telemetry: TelemetrySettings::from_source(env)?,
        })
    }
}

fn parse_bind_addr(raw: &str) -> Result<SocketAddr, ConfigError> {
    let raw = raw.trim();
    if let Ok(addr) = raw.parse::<SocketAddr>() {
        return Ok(addr);
    }
    raw.to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| {
            ConfigError::new(
                "BIND_ADDR",
                format!("{raw:?} is not a host:port address (e.g. 0.0.0.0:8787)"),
            )
        })
}

/// Checks that a URL parses and has one of the expected schemes. The value is not echoed:
/// connection URLs carry passwords.
fn check_url(variable: &'static str, raw: &str, schemes: &[&str]) -> Result<Url, ConfigError> {
    let url = Url::parse(raw)
        .map_err(|e| ConfigError::new(variable, format!("not a valid URL ({e})")))?;
    if !schemes.contains(&url.scheme()) {
        return Err(ConfigError::new(
            variable,
            format!(
                "unsupported scheme {:?}, expected one of {}",
                url.scheme(),
                schemes.join(", ")
            ),
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_source(&Env::new(move |k| map.get(k).cloned()))
    }

    #[test]
    fn defaults_follow_the_contract() {
        let s = settings(&[]).expect("defaults are valid");
        assert_eq!(s.bind_addr, "0.0.0.0:8787".parse().unwrap());
        assert_eq!(
            s.database.url,
            "postgres://postgres@127.0.0.1:5432/sidechain"
        );
        assert_eq!(s.database.connect_timeout, Duration::from_secs(30));
        assert_eq!(s.redis.url, "redis://127.0.0.1:6379");
        assert!(s.recommender.is_none());
        assert_eq!(s.log_level, LogLevel::Info);
        assert_eq!(s.audio.storage_dir, PathBuf::from("./data/audio"));
        assert_eq!(s.audio.max_bytes, 50 * 1024 * 1024);
        assert_eq!(s.audio.workers, 1);
        assert_eq!(s.audio.job_lease, Duration::from_secs(60));
        assert_eq!(s.audio.max_attempts, 3);
        assert_eq!(s.audio.stage_timeout, Duration::from_secs(120));
        assert_eq!(s.login_max_failures, 10);
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let err = settings(&[("DB_CONNECT_TIMEOUT_S", "soon")]).unwrap_err();
        assert_eq!(err.variable, "DB_CONNECT_TIMEOUT_S");
        let err = settings(&[("BIND_ADDR", "nowhere")]).unwrap_err();
        assert_eq!(err.variable, "BIND_ADDR");
        let err = settings(&[("LOG_LEVEL", "loud")]).unwrap_err();
        assert_eq!(err.variable, "LOG_LEVEL");
        let err = settings(&[("RECOMMENDER_URL", "ftp://x")]).unwrap_err();
        assert_eq!(err.variable, "RECOMMENDER_URL");
    }

    #[test]
    fn url_errors_do_not_echo_secrets() {
        let err = settings(&[("DATABASE_URL", "mysql://u:hunter2@db/x")]).unwrap_err();
        assert_eq!(err.variable, "DATABASE_URL");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn the_storage_url_selects_object_storage() {
        let s = settings(&[]).unwrap();
        assert!(s.audio.object_storage.is_none());
        let s = settings(&[
            ("AUDIO_STORAGE_URL", "s3://audio-bucket/sidechain/prod/"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
            ("AWS_ACCESS_KEY_ID", "AKIA"),
            ("AWS_SECRET_ACCESS_KEY", "hunter2"),
            ("AWS_DEFAULT_REGION", "eu-west-3"),
        ])
        .unwrap();
        let object = s.audio.object_storage.expect("object storage");
        assert_eq!(object.bucket, "audio-bucket");
        assert_eq!(object.prefix, "sidechain/prod");
        assert_eq!(object.region, "eu-west-3");
        assert_eq!(
            object.endpoint.as_ref().map(Url::as_str),
            Some("http://127.0.0.1:9000/")
        );
        assert_eq!(object.aws.len(), 4);
        assert!(!format!("{object:?}").contains("hunter2"));
        let bare = settings(&[("AUDIO_STORAGE_URL", "s3://bucket")]).unwrap();
        assert_eq!(bare.audio.object_storage.unwrap().prefix, "");
    }

    #[test]
    fn a_bad_storage_url_names_its_variable() {
        for bad in [
            "bucket/prefix",
            "https://bucket/prefix",
            "s3://",
            "s3://Bad_Bucket/x",
            "s3://key:secret@bucket/x",
            "s3://bucket/a//b",
            "s3://bucket/x?region=y",
        ] {
            let err = settings(&[("AUDIO_STORAGE_URL", bad)]).unwrap_err();
            assert_eq!(err.variable, "AUDIO_STORAGE_URL", "{bad}");
            assert!(!err.to_string().contains("secret"), "{err}");
        }
        let err = settings(&[
            ("AUDIO_STORAGE_URL", "s3://bucket"),
            ("AWS_ENDPOINT_URL", "localhost:9000"),
        ])
        .unwrap_err();
        assert_eq!(err.variable, "AWS_ENDPOINT_URL");
    }

    #[test]
    fn empty_values_count_as_unset() {
        let s = settings(&[("LOG_LEVEL", ""), ("RECOMMENDER_URL", " ")]).unwrap();
        assert_eq!(s.log_level, LogLevel::Info);
        assert!(s.recommender.is_none());
    }
}
