//! Housekeeping that runs in the background of every replica: the purge of expired tokens.
//!
//! Expired tokens answer 401 already; deleting them keeps the table (and its index) the size
//! of the live sessions. Every `TOKEN_PURGE_INTERVAL_S` each replica tries; the one that takes
//! a transaction-scoped advisory lock deletes, in batches, and the others skip that round, so
//! replicas never delete the same rows side by side. The first round runs at start-up.

use std::time::Duration;

use tokio::sync::watch;

use crate::db::queries::tokens;
use crate::db::{Db, DbError};
use crate::errors::ErrorChain;
use crate::telemetry::logging;

/// Rows one statement deletes: short transactions, however much expired meanwhile.
const PURGE_BATCH: i64 = 10_000;

/// The running purge task; stopped with the server.
pub struct TokenPurge {
    stop: watch::Sender<bool>,
}

impl TokenPurge {
    /// Starts the task on the current runtime.
    pub fn start(db: &Db, every: Duration) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let db = db.clone();
        tokio::spawn(async move {
            loop {
                purge_once(&db).await;
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopped.wait_for(|stopped| *stopped) => return,
                }
            }
        });
        Self { stop }
    }

    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// One round: batches until one deletes less than a batch, or another replica holds the lock.
async fn purge_once(db: &Db) {
    let mut purged = 0usize;
    loop {
        // Untraced: a timer's work would start a trace of its own every round.
        let round = db
            .run_untraced(|conn| Ok::<_, DbError>(tokens::purge_expired(conn, PURGE_BATCH)?))
            .await;
        match round {
            Ok(Some(n)) => {
                purged += n;
                if (n as i64) < PURGE_BATCH {
                    break;
                }
            }
            Ok(None) => break,
            Err(err) => {
                slog::warn!(logging::logger(), "could not purge expired tokens";
                    "error" => %ErrorChain(&err));
                break;
            }
        }
    }
    if purged > 0 {
        slog::info!(logging::logger(), "expired tokens purged"; "tokens" => purged);
    }
}
