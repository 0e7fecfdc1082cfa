//! Diesel query spans: our [`Instrumentation`] on every pooled connection.
//!
//! ```text
//!  Diesel ──StartQuery──▶ QueryInstrumentation ── opens CLIENT span "SELECT posts" (child of current)
//!         ──FinishQuery─▶                      ── error? status ERROR + error.type; closes span;
//!                                                 observes db_client_operation_duration_seconds
//! ```
//!
//! `db.query.text` holds the SQL with its `$n` placeholders only. Diesel's `Display` of a query
//! appends ` -- binds: [...]`; [`sql_text`] stops the formatter at that marker, so bind values
//! are never even formatted, let alone recorded.

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::connection::{Instrumentation, InstrumentationEvent};
use tracing::field::Empty;
use url::Url;

use crate::telemetry::{logging, metrics};

/// What every query span says about the server: `db.namespace`, `server.address`,
/// `server.port`. Never the credentials of the URL.
#[derive(Debug, Clone)]
pub struct DbTarget {
    namespace: Arc<str>,
    address: Arc<str>,
    port: u16,
}

impl DbTarget {
    pub fn from_url(url: &Url) -> Self {
        Self {
            namespace: url.path().trim_start_matches('/').into(),
            address: url.host_str().unwrap_or("localhost").into(),
            port: url.port().unwrap_or(5432),
        }
    }
}

/// One per connection; Diesel calls it around every statement.
pub struct QueryInstrumentation {
    target: DbTarget,
    slow_query: Duration,
    in_flight: Option<InFlight>,
    connection_lost: bool,
}

struct InFlight {
    span: tracing::Span,
    started: Instant,
    operation: &'static str,
    table: Option<String>,
    sql: String,
}

impl QueryInstrumentation {
    /// Statements that take `slow_query` or longer are logged, inside their own span.
    pub fn new(target: DbTarget, slow_query: Duration) -> Self {
        Self {
            target,
            slow_query,
            in_flight: None,
            connection_lost: false,
        }
    }

    /// Whether a statement on this connection failed because the server went away: the pool
    /// must then discard the connection.
    pub fn connection_lost(&self) -> bool {
        self.connection_lost
    }
}

impl Instrumentation for QueryInstrumentation {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        match event {
            InstrumentationEvent::StartQuery { query, .. } => {
                let sql = sql_text(query);
                let (operation, table) = classify(&sql);
                let span = tracing::info_span!(
                    "db.query",
                    otel.name = match &table {
                        Some(t) => format!("{operation} {t}"),
                        None => operation.to_owned(),
                    },
                    otel.kind = "client",
                    db.system.name = "postgresql",
                    db.operation.name = operation,
                    db.collection.name = table.as_deref(),
                    db.query.text = sql.as_str(),
                    db.namespace = &*self.target.namespace,
                    server.address = &*self.target.address,
                    server.port = i64::from(self.target.port),
                    otel.status_code = Empty,
                    otel.status_description = Empty,
                    error.type = Empty,
                );
                self.in_flight = Some(InFlight {
                    span,
                    started: Instant::now(),
                    operation,
                    table,
                    sql,
                });
            }
            InstrumentationEvent::FinishQuery { error, .. } => {
                let Some(done) = self.in_flight.take() else {
                    return;
                };
                if let Some(err) = error {
                    use diesel::result::{DatabaseErrorKind, Error};
                    if let Error::DatabaseError(
                        DatabaseErrorKind::ClosedConnection
                        | DatabaseErrorKind::UnableToSendCommand,
                        _,
                    ) = err
                    {
                        self.connection_lost = true;
                    }
                    done.span.record("otel.status_code", "ERROR");
                    done.span.record("error.type", error_type(err));
                    done.span.record("otel.status_description", error_type(err));
                }
                let elapsed = done.started.elapsed();
                metrics::db_operation(
                    done.operation,
                    done.table.as_deref().unwrap_or("none"),
                    elapsed,
                );
                if elapsed >= self.slow_query {
                    // Inside the query's span, so the line carries its ids.
                    let _entered = done.span.enter();
                    slog::warn!(logging::logger(), "slow query";
                        "db.operation.name" => done.operation,
                        "db.collection.name" => done.table.as_deref(),
                        "db.query.text" => &done.sql,
                        "duration_ms" => elapsed.as_secs_f64() * 1e3,
                    );
                }
            }
            _ => {}
        }
    }
}

/// A low-cardinality name for a failure; the message may hold values, so it is not used.
fn error_type(err: &diesel::result::Error) -> &'static str {
    use diesel::result::{DatabaseErrorKind as K, Error as E};
    match err {
        E::DatabaseError(kind, _) => match kind {
            K::UniqueViolation => "unique_violation",
            K::ForeignKeyViolation => "foreign_key_violation",
            K::CheckViolation => "check_violation",
            K::NotNullViolation => "not_null_violation",
            K::SerializationFailure => "serialization_failure",
            K::ReadOnlyTransaction => "read_only_transaction",
            K::ClosedConnection => "closed_connection",
            K::UnableToSendCommand => "unable_to_send_command",
            _ => "database_error",
        },
        E::NotFound => "not_found",
        E::DeserializationError(_) => "deserialization_error",
        E::SerializationError(_) => "serialization_error",
        E::RollbackTransaction | E::RollbackErrorOnCommit { .. } => "rollback",
        _ => "diesel_error",
    }
}

/// The SQL of a query without its bind values.
pub fn sql_text(query: &dyn fmt::Display) -> String {
    let mut out = SqlOnly::default();
    // The formatter errors out on purpose at the binds marker.
    let _ = write!(out, "{query}");
    let mut sql = out.sql;
    // Belt and braces, should Diesel ever write the marker differently.
    if let Some(end) = sql.find(" -- binds: ") {
        sql.truncate(end);
    }
    sql
}

/// A `fmt::Write` that keeps what is written before Diesel's ` -- binds: ` marker and refuses
/// the rest, which stops the formatting of the binds themselves.
#[derive(Default)]
struct SqlOnly {
    sql: String,
    done: bool,
}

impl fmt::Write for SqlOnly {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.done || s == " -- binds: " {
            self.done = true;
            return Err(fmt::Error);
        }
        self.sql.push_str(s);
        Ok(())
    }
}

/// `(db.operation.name, db.collection.name)` of a statement, from its SQL text: the first
/// keyword, and the table after `FROM`/`INTO`/`UPDATE`.
pub fn classify(sql: &str) -> (&'static str, Option<String>) {
    let mut words = sql.split_whitespace();
    let first = words.next().unwrap_or_default().to_ascii_uppercase();
    let operation = match first.as_str() {
        "SELECT" => "SELECT",
        "INSERT" => "INSERT",
        "UPDATE" => "UPDATE",
        "DELETE" => "DELETE",
        "BEGIN" => "BEGIN",
        "COMMIT" => "COMMIT",
        "ROLLBACK" => "ROLLBACK",
        "SAVEPOINT" => "SAVEPOINT",
        "RELEASE" => "RELEASE",
        "WITH" => "WITH",
        "CREATE" => "CREATE",
        "DROP" => "DROP",
        "ALTER" => "ALTER",
        "SET" => "SET",
        _ => "OTHER",
    };
    // The first table named after the keyword: a derived table (`FROM (SELECT …`) is skipped
    // for the table its own query reads.
    let table_after = |keyword: &str| -> Option<String> {
        let mut words = sql.split_whitespace();
        loop {
            words.find(|w| w.eq_ignore_ascii_case(keyword))?;
            let table = words.next().and_then(table_name);
            if let Some(table) = table.filter(|t| !t.eq_ignore_ascii_case("select")) {
                return Some(table);
            }
        }
    };
    let table = match operation {
        "SELECT" | "DELETE" => table_after("FROM"),
        "INSERT" => table_after("INTO"),
        "UPDATE" => words.next().and_then(table_name),
        _ => None,
    };
    (operation, table)
}

/// `("posts"` → `posts`; `"public"."posts"` → `posts`.
fn table_name(token: &str) -> Option<String> {
    let token = token.trim_start_matches('(');
    let last = token.rsplit('.').next().unwrap_or(token);
    let name: String = last
        .trim_matches(|c| c == '"' || c == '(' || c == ')' || c == ',' || c == ';')
        .to_owned();
    let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    valid.then_some(name)
}

#[cfg(test)]
mod tests {
    use diesel::pg::Pg;
    use diesel::prelude::*;

    use super::*;
    use crate::db::schema::{posts, users};

    #[test]
    fn binds_never_reach_the_text() {
        let query = users::table
            .filter(users::username.eq("distinctive-secret-value"))
            .select(users::id);
        let debug = diesel::debug_query::<Pg, _>(&query);
        // Diesel's own Display does carry the bind …
        assert!(debug.to_string().contains("distinctive-secret-value"));
        // … ours does not.
        let sql = sql_text(&debug);
        assert!(!sql.contains("distinctive-secret-value"), "{sql}");
        assert!(sql.contains("$1"), "{sql}");
        assert!(!sql.contains("binds"), "{sql}");
    }

    #[test]
    fn classifies_diesel_sql() {
        let join = posts::table
            .inner_join(users::table)
            .filter(posts::id.eq(uuid::Uuid::nil()))
            .select(posts::id);
        let sql = sql_text(&diesel::debug_query::<Pg, _>(&join));
        assert_eq!(classify(&sql), ("SELECT", Some("posts".into())));

        let cases = [
            (
                r#"INSERT INTO "likes" ("post_id") VALUES ($1)"#,
                "INSERT",
                Some("likes"),
            ),
            (
                r#"UPDATE "posts" SET "like_count" = "posts"."like_count" + $1"#,
                "UPDATE",
                Some("posts"),
            ),
            (
                r#"DELETE FROM "follows" WHERE "follows"."follower_id" = $1"#,
                "DELETE",
                Some("follows"),
            ),
            (
                r#"SELECT EXISTS (SELECT "posts"."id" FROM "posts" WHERE "posts"."id" = $1)"#,
                "SELECT",
                Some("posts"),
            ),
            (
                r#"SELECT COUNT(*) FROM "public"."follows""#,
                "SELECT",
                Some("follows"),
            ),
            (
                "SELECT r.id FROM (SELECT p.id FROM posts p LIMIT $1) r, ( SELECT 1) o",
                "SELECT",
                Some("posts"),
            ),
            ("BEGIN", "BEGIN", None),
            ("SELECT 1", "SELECT", None),
            ("", "OTHER", None),
        ];
        for (sql, op, table) in cases {
            assert_eq!(classify(sql), (op, table.map(String::from)), "{sql}");
        }
    }
}
