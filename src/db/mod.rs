//! Postgres through Diesel: the pool, start-up (create, wait, migrate) and the one way
//! handlers reach a connection, [`Db::run`].
//!
//! ```text
//!  handler ──await──▶ Db::run(f) ──▶ blocking pool thread (request span entered)
//!                                     ├─ r2d2 checkout (≤ pool timeout, else 503)
//!                                     └─ f(&mut PgConnection) ─▶ QueryInstrumentation ─▶ span per query
//! ```
//!
//! Why r2d2 (Diesel's own `r2d2` feature) rather than deadpool-diesel: Diesel is synchronous, so
//! every call has to leave the async worker for the blocking pool anyway. With r2d2 the checkout
//! happens on that blocking thread too, so a call costs one hop; deadpool-diesel checks out
//! asynchronously and then hops again through `interact`, for no gain here. r2d2's connection
//! customizer is also where each new connection gets its [`QueryInstrumentation`].

pub mod models;
pub mod queries;
pub mod schema;

use std::time::{Duration, Instant};

use diesel::connection::Connection;
use diesel::pg::PgConnection;
use diesel::r2d2::{ConnectionManager, ManageConnection, Pool};
use diesel::{QueryableByName, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use url::Url;

use crate::config::DatabaseSettings;
use crate::telemetry::db::{DbTarget, QueryInstrumentation};
use crate::telemetry::handoff::spawn_blocking_in_span;
use crate::telemetry::logging;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Arbitrary constant naming the advisory lock that serialises migrations between replicas.
const MIGRATION_LOCK_ID: i64 = 0x5349_4445_4348_4149; // "SIDECHAI"

type PgPool = Pool<InstrumentedManager>;

/// What a database call fails with. The queries (`queries/*`) and the job queue return it; the
/// routes map it to their HTTP answer (`errors.rs`), as the model code of crates.io does with
/// Diesel's errors: nothing here knows of HTTP.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The named thing does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The caller may not do this to it.
    #[error("{0}")]
    Forbidden(&'static str),
    /// A unique value is taken.
    #[error("{message}")]
    Conflict {
        code: &'static str,
        message: &'static str,
    },
    /// A cursor that does not belong to the listing it was sent to.
    #[error("cursor does not belong to this listing")]
    InvalidCursor,
    /// No connection within `DB_POOL_TIMEOUT_MS`.
    #[error("no Postgres connection: {0}")]
    Unavailable(#[source] diesel::r2d2::PoolError),
    /// The blocking task running the call failed.
    #[error("database task failed: {0}")]
    Task(String),
    /// Anything else Postgres or Diesel said.
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
}

/// `f` with a connection from the pool; a pool timeout is [`DbError::Unavailable`].
fn with_connection<T, E>(
    pool: &PgPool,
    f: impl FnOnce(&mut PgConnection) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<DbError>,
{
    let mut conn = pool.get().map_err(|e| E::from(DbError::Unavailable(e)))?;
    f(&mut conn)
}

/// The database handle shared by all handlers.
#[derive(Clone)]
pub struct Db {
    pool: PgPool,
}

/// Start-up could not reach or prepare Postgres.
#[derive(Debug, thiserror::Error)]
pub enum DbStartupError {
    #[error("DATABASE_URL has no database name")]
    NoDatabaseName,
    #[error("could not connect to Postgres within {waited:?}: {last_error}")]
    Unreachable {
        waited: Duration,
        last_error: String,
    },
    #[error("could not create database {name:?}: {source}")]
    Create {
        name: String,
        source: diesel::result::Error,
    },
    #[error("migrations failed: {0}")]
    Migrate(String),
}

impl Db {
    /// Waits for Postgres (retrying with backoff for `connect_timeout`), creates the database
    /// if it is missing, applies pending migrations and builds the pool.
    pub async fn connect(settings: &DatabaseSettings) -> Result<Db, DbStartupError> {
        let settings = settings.clone();
        tokio::task::spawn_blocking(move || Self::connect_blocking(&settings))
            .await
            .map_err(|e| DbStartupError::Migrate(format!("start-up task failed: {e}")))?
    }

    fn connect_blocking(settings: &DatabaseSettings) -> Result<Db, DbStartupError> {
        let url = Url::parse(&settings.url).map_err(|_| DbStartupError::NoDatabaseName)?;
        let name = url.path().trim_start_matches('/').to_owned();
        if name.is_empty() {
            return Err(DbStartupError::NoDatabaseName);
        }

        let mut conn = wait_for_database(settings, &url, &name)?;
        migrate(&mut conn)?;

        let manager = InstrumentedManager {
            inner: ConnectionManager::new(&settings.url),
            target: DbTarget::from_url(&url),
            slow_query: settings.slow_query,
        };
        let pool = Pool::builder()
            .max_size(settings.pool_size)
            .min_idle(Some(settings.pool_size.min(2)))
            .connection_timeout(settings.pool_timeout)
            // A checkout test is one more round trip (and span) per call; a connection whose
            // server went away is noticed by its instrumentation instead, and discarded.
            .test_on_check_out(false)
            .build_unchecked(manager);
        Ok(Db { pool })
    }

    /// Runs `f` with a pooled connection on the blocking pool, inside the caller's span, so its
    /// query spans join the request's trace. `f`'s error is [`DbError`] or anything a
    /// `DbError` converts into (a route's own error); a pool timeout is `DbError::Unavailable`.
    pub async fn run<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut PgConnection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let pool = self.pool.clone();
        spawn_blocking_in_span(move || with_connection(&pool, f))
            .await
            .map_err(|e| E::from(DbError::Task(e.to_string())))?
    }

    /// Like [`Db::run`], but the statements make no spans. For background polling only (the
    /// audio job queue), which would otherwise start a new trace at every poll.
    pub async fn run_untraced<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut PgConnection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let silent = tracing::subscriber::NoSubscriber::default();
            tracing::subscriber::with_default(silent, || with_connection(&pool, f))
        })
        .await
        .map_err(|e| E::from(DbError::Task(e.to_string())))?
    }

    /// `SELECT 1`, for readiness.
    pub async fn ping(&self) -> Result<(), DbError> {
        self.run(|conn| {
            diesel::sql_query("SELECT 1").execute(conn)?;
            Ok(())
        })
        .await
    }
}

/// Diesel's connection manager, plus: each new connection gets its [`QueryInstrumentation`],
/// and a connection that lost its server is discarded when it returns to the pool. (Diesel
/// only calls a connection broken when its transaction state is; a connection whose backend
/// was terminated would otherwise be handed out, and fail, forever.)
#[derive(Debug)]
struct InstrumentedManager {
    inner: ConnectionManager<PgConnection>,
    target: DbTarget,
    slow_query: Duration,
}

impl ManageConnection for InstrumentedManager {
    type Connection = PgConnection;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<PgConnection, Self::Error> {
        let mut conn = self.inner.connect()?;
        conn.set_instrumentation(QueryInstrumentation::new(
            self.target.clone(),
            self.slow_query,
        ));
        Ok(conn)
    }

    fn is_valid(&self, conn: &mut PgConnection) -> Result<(), Self::Error> {
        self.inner.is_valid(conn)
    }

    fn has_broken(&self, conn: &mut PgConnection) -> bool {
        self.inner.has_broken(conn)
            || conn
                .instrumentation()
                .downcast_ref::<QueryInstrumentation>()
                .is_some_and(QueryInstrumentation::connection_lost)
    }
}

/// Connects to the database, creating it first if it does not exist; retries until
/// `connect_timeout` with exponential backoff (100 ms doubling up to 2 s).
fn wait_for_database(
    settings: &DatabaseSettings,
    url: &Url,
    name: &str,
) -> Result<PgConnection, DbStartupError> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(100);
    let mut attempt = 1u32;
    loop {
        let last_error = match PgConnection::establish(&settings.url) {
            Ok(conn) => return Ok(conn),
            Err(err) if is_missing_database(&err) => match create_database(url, name) {
                Ok(()) => continue,
                Err(DbStartupError::Create { source, .. }) if is_transient(&source) => {
                    source.to_string()
                }
                Err(other) => return Err(other),
            },
            Err(err) => err.to_string(),
        };
        let waited = started.elapsed();
        if waited >= settings.connect_timeout {
            return Err(DbStartupError::Unreachable {
                waited,
                last_error: last_error.trim().to_owned(),
            });
        }
        slog::warn!(logging::logger(), "postgres not reachable yet, retrying";
            "attempt" => attempt,
            "retry_in_ms" => backoff.as_millis() as u64,
            "error" => last_error.trim(),
        );
        std::thread::sleep(backoff.min(settings.connect_timeout.saturating_sub(waited)));
        backoff = (backoff * 2).min(Duration::from_secs(2));
        attempt += 1;
    }
}

fn is_missing_database(err: &diesel::ConnectionError) -> bool {
    matches!(err, diesel::ConnectionError::BadConnection(msg) if msg.contains("does not exist"))
}

fn is_transient(err: &diesel::result::Error) -> bool {
    !matches!(err, diesel::result::Error::DatabaseError(..))
}

#[derive(QueryableByName)]
struct Exists {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    exists: bool,
}

/// Creates `name` through a maintenance database of the same server. A concurrent creation by
/// another replica is not an error.
fn create_database(url: &Url, name: &str) -> Result<(), DbStartupError> {
    let create_err = |source| DbStartupError::Create {
        name: name.to_owned(),
        source,
    };
    let mut last = None;
    for maintenance in ["postgres", "template1"] {
        let mut admin_url = url.clone();
        admin_url.set_path(maintenance);
        let mut conn = match PgConnection::establish(admin_url.as_str()) {
            Ok(conn) => conn,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        let exists = diesel::sql_query(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS exists",
        )
        .bind::<diesel::sql_types::Text, _>(name)
        .get_result::<Exists>(&mut conn)
        .map_err(create_err)?
        .exists;
        if exists {
            return Ok(());
        }
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        return match diesel::sql_query(format!("CREATE DATABASE {quoted}")).execute(&mut conn) {
            Ok(_) => {
                slog::info!(logging::logger(), "created database"; "db.namespace" => name);
                Ok(())
            }
            Err(diesel::result::Error::DatabaseError(_, info))
                if info.message().contains("already exists") =>
            {
                Ok(())
            }
            Err(e) => Err(create_err(e)),
        };
    }
    Err(create_err(diesel::result::Error::QueryBuilderError(
        format!(
            "no maintenance database reachable: {}",
            last.map(|e| e.to_string()).unwrap_or_default()
        )
        .into(),
    )))
}

/// Applies pending migrations under an advisory lock, so replicas starting together do not
/// race.
fn migrate(conn: &mut PgConnection) -> Result<(), DbStartupError> {
    let fail = |e: &dyn std::fmt::Display| DbStartupError::Migrate(e.to_string());
    diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK_ID})"))
        .execute(conn)
        .map_err(|e| fail(&e))?;
    let result = conn
        .run_pending_migrations(MIGRATIONS)
        .map(|applied| applied.len())
        .map_err(|e| fail(&e));
    // The lock is also released when the connection closes, so a failure here is harmless.
    let _ =
        diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_ID})")).execute(conn);
    let applied = result?;
    if applied > 0 {
        slog::info!(logging::logger(), "applied database migrations"; "count" => applied);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use diesel::migration::MigrationSource;
    use diesel::pg::Pg;

    use super::MIGRATIONS;

    /// Diesel knows a migration by its version (the folder name up to the first `_`): two
    /// migrations of one version apply as one, and the other is silently never run.
    #[test]
    fn every_migration_has_a_version_of_its_own() {
        let migrations = MigrationSource::<Pg>::migrations(&MIGRATIONS).unwrap();
        let versions: Vec<String> = migrations
            .iter()
            .map(|m| m.name().version().to_string())
            .collect();
        let distinct: std::collections::BTreeSet<&String> = versions.iter().collect();
        assert!(versions.len() >= 4, "{versions:?}");
        assert_eq!(distinct.len(), versions.len(), "{versions:?}");
    }
}
