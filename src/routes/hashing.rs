//! Password hashing and verification, bounded: at most `PASSWORD_HASH_CONCURRENCY` Argon2 runs
//! at once, and a request that cannot start one within `PASSWORD_HASH_WAIT_MS` is answered 503
//! `busy` with `Retry-After` (CONTRACT.md §1 "Limits").
//!
//! An Argon2id run takes 19 MiB and tens of milliseconds of one core. Unbounded, every
//! concurrent registration or login took a thread of the blocking pool (up to 512) and its
//! memory: 200 concurrent registrations grew the process by 3.4 GiB. With the bound, memory
//! is at most the slots' share and the rest wait in line; past the wait they are refused,
//! which is what a client can retry, rather than a process the kernel kills.
//!
//! ```text
//!  register/login ─▶ wait for a slot (password_hash_waiting) ── none within the wait ──▶ 503 busy
//!                        └─ slot ─▶ one of the hashing threads: Argon2 (hash, verify, or the
//!                                   dummy verify), in the request's span ─▶ slot back
//! ```
//!
//! **Why threads of their own, not the blocking pool.** The allocator keeps a freed 19 MiB
//! block in the arena of the thread that used it, and the blocking pool's threads come and go
//! and spread over up to eight arenas a core: with two slots, 200 registrations still left
//! 270 MiB resident. `PASSWORD_HASH_CONCURRENCY` threads of our own use as many arenas, so what
//! the allocator keeps is bounded by the slots too.
//!
//! The dummy verification for an unknown user takes a slot like a real one, so that neither
//! the answer's timing nor a 503 tells an unknown name from a wrong password.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use tokio::sync::{Semaphore, oneshot};

use crate::errors::AppError;
use crate::telemetry::logging;
use crate::telemetry::metrics::{self, Refusal};

type Job = Box<dyn FnOnce() + Send>;

/// The slots for Argon2 runs, shared by every request of the process.
#[derive(Clone)]
pub struct PasswordHashing {
    slots: Arc<Semaphore>,
    wait: Duration,
    /// To the hashing threads; they end when the last handle is dropped.
    jobs: mpsc::Sender<Job>,
    /// Runs in progress, for the debug line each run writes (it proves the bound in tests).
    running: Arc<AtomicUsize>,
}

/// Counts a request in `password_hash_waiting` while it lives, so that a request dropped
/// while waiting (its client gone) is no longer counted.
struct Waiting;

impl Waiting {
    fn start() -> Self {
        metrics::password_hash_waiting(1);
        Self
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        metrics::password_hash_waiting(-1);
    }
}

impl PasswordHashing {
    /// `concurrency` runs at once (at least one), on as many threads; a request waits at most
    /// `wait` for one.
    pub fn new(concurrency: usize, wait: Duration) -> std::io::Result<Self> {
        let concurrency = concurrency.max(1);
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..concurrency {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("password-hash-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while taking a job, never while running one.
                        let job = match queue.lock() {
                            Ok(queue) => queue.recv(),
                            Err(_) => return,
                        };
                        match job {
                            // A panicking job answers its request with a 500 (its reply is
                            // dropped) and must not take the thread, and its share of the
                            // slots, with it.
                            Ok(job) => {
                                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                            }
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(Self {
            slots: Arc::new(Semaphore::new(concurrency)),
            wait,
            jobs,
            running: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Runs `work` (an Argon2 hash or verification) on a hashing thread once a slot is free,
    /// inside the current span; [`AppError::Busy`] when none frees up within the wait.
    pub async fn run<T, F>(&self, work: F) -> Result<T, AppError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let waiting = Waiting::start();
        let slot = tokio::time::timeout(self.wait, self.slots.clone().acquire_owned()).await;
        drop(waiting);
        let Ok(Ok(slot)) = slot else {
            metrics::request_refused(Refusal::Busy);
            return Err(AppError::Busy {
                retry_after_s: self.wait.as_secs().max(1),
            });
        };
        let running = self.running.clone();
        let span = tracing::Span::current();
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            let out = span.in_scope(|| {
                slog::debug!(logging::logger(), "password hashing started";
                    "password_hash.running" => now);
                work()
            });
            running.fetch_sub(1, Ordering::SeqCst);
            // The slot is held until the work is done, even if the request was dropped meanwhile
            // (the job runs to its end regardless).
            drop(slot);
            let _ = done.send(out);
        });
        self.jobs
            .send(job)
            .map_err(|_| AppError::internal("password hashing", "the hashing threads are gone"))?;
        result
            .await
            .map_err(|_| AppError::internal("password hashing", "a hashing thread failed"))
    }
}
