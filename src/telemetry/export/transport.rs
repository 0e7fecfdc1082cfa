//! OTLP/HTTP delivery of one encoded batch: compression, the POST, classification of the answer
//! and the retry policy of the OTLP specification.
//!
//! ```text
//!  body ─gzip─▶ POST {traces URL} ─▶ 2xx ────────────────▶ Exported (partial_success counted)
//!                                  ├▶ 429/502/503/504, connect/timeout/reset ─▶ wait: max(backoff, Retry-After)
//!                                  │                                            └─ again, until the deadline ─▶ Failed
//!                                  └▶ any other status ────────────────────────▶ Rejected (never retried)
//! ```
//!
//! **At shutdown, an endpoint that cannot be reached is given up quickly.** Retrying a refused
//! connection for the whole flush budget (`OTEL_BSP_EXPORT_TIMEOUT`, 30 s) only holds the exit:
//! nothing listens there, and a process that is being replaced should go. Once the actor says
//! the process is stopping ([`Transport::stopping`]), a failed connection is tried once more
//! after [`STOPPING_RETRY`] and then reported [`Delivery::Unreachable`]; a backoff wait in
//! progress ends at once. An endpoint that answers, however slowly or with 503s, still gets the
//! whole budget.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use libdeflater::{CompressionLvl, Compressor};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap, HeaderValue};
use tokio::sync::Notify;
use url::Url;

use crate::telemetry::config::{Compression, TelemetrySettings};

/// What one HTTP attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    /// 2xx. `rejected_spans` > 0 is a partial success: not retried, counted.
    Accepted {
        rejected_spans: i64,
        message: String,
    },
    /// Worth repeating; `retry_after` is the server's `Retry-After`, if it sent a usable one.
    Retryable {
        cause: String,
        retry_after: Option<Duration>,
    },
    /// No connection could be made (refused, unreachable): worth repeating, except when the
    /// process is stopping.
    Unreachable { cause: String },
    /// The server refused the batch for good.
    Rejected { cause: String },
}

/// What became of a batch after all attempts.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    Exported {
        rejected_spans: i64,
        message: String,
    },
    Rejected {
        cause: String,
    },
    /// Still failing when the deadline came.
    Failed {
        cause: String,
    },
    /// The process is stopping and the endpoint could not be reached, once more after
    /// [`STOPPING_RETRY`]: the spans are given up.
    Unreachable {
        cause: String,
    },
}

/// The one short retry round, once the process is stopping, before an unreachable endpoint is
/// given up.
pub const STOPPING_RETRY: Duration = Duration::from_millis(250);

/// Exponential backoff with jitter: the n-th wait is `initial · multiplier^n`, capped at `max`,
/// then spread uniformly over ±`jitter` of itself (so replicas do not retry in lockstep).
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub multiplier: f64,
    pub max: Duration,
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            multiplier: 1.5,
            max: Duration::from_secs(30),
            jitter: 0.5,
        }
    }
}

/// The waits of one batch's retries. The random source is injected so tests can pin it.
pub struct Backoff<R: FnMut() -> f64> {
    policy: RetryPolicy,
    current: Duration,
    random: R,
}

impl<R: FnMut() -> f64> Backoff<R> {
    /// `random` returns values in `[0, 1)`.
    pub fn new(policy: RetryPolicy, random: R) -> Self {
        Self {
            policy,
            current: policy.initial,
            random,
        }
    }

    /// The next wait.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current.min(self.policy.max);
        let spread = 1.0 + self.policy.jitter * (2.0 * (self.random)() - 1.0);
        self.current = self
            .current
            .mul_f64(self.policy.multiplier)
            .min(self.policy.max);
        base.mul_f64(spread.max(0.0))
    }
}

/// A small xorshift generator seeded from the clock: jitter needs spread, not secrecy.
pub fn jitter_source() -> impl FnMut() -> f64 {
    let mut state = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9E37_79B9_7F4A_7C15)
        | 1;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Parses `Retry-After`: delay-seconds or an HTTP-date. Junk gives `None`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// gzip with libdeflate at level 1 (its level 0 stores without compressing). The whole batch is
/// in memory, so a one-shot compressor fits: it spends about a fifth less CPU than flate2's
/// streaming `fast` level for a body a tenth smaller (BENCHMARKS.md). The compressor and the
/// output buffer are kept from batch to batch, so that a batch allocates only its body.
struct Gzip {
    compressor: Compressor,
    scratch: Vec<u8>,
}

/// The largest output buffer kept between batches: a default batch needs a few hundred KiB.
const KEPT_SCRATCH_BYTES: usize = 4 << 20;

/// libdeflate's fastest level that compresses.
const GZIP_LEVEL: CompressionLvl = match CompressionLvl::new(1) {
    Ok(level) => level,
    Err(_) => panic!("libdeflate has a level 1"),
};

/// Sends encoded batches to the traces endpoint.
pub struct Transport {
    client: reqwest::Client,
    url: Url,
    headers: HeaderMap,
    compression: Compression,
    gzip: Mutex<Gzip>,
    attempt_timeout: Duration,
    policy: RetryPolicy,
    /// Set when the process is stopping (module doc).
    stopping: AtomicBool,
    /// Ends a backoff wait when the process starts stopping.
    stopped: Notify,
}

impl Transport {
    /// To the traces URL.
    pub fn new(settings: &TelemetrySettings, policy: RetryPolicy) -> Result<Self, reqwest::Error> {
        Self::to(settings, settings.traces_endpoint.clone(), policy)
    }

    /// To `url` (the logs URL), with the traces' headers, compression and timeouts.
    pub fn to(
        settings: &TelemetrySettings,
        url: Url,
        policy: RetryPolicy,
    ) -> Result<Self, reqwest::Error> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!(
                "sidechain-otlp-exporter/",
                env!("CARGO_PKG_VERSION")
            )),
        );
        if settings.compression == Compression::Gzip {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        for (name, value) in &settings.headers {
            headers.insert(name.clone(), value.clone());
        }
        let client = reqwest::Client::builder()
            .connect_timeout(settings.export_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self {
            client,
            url,
            headers,
            compression: settings.compression,
            gzip: Mutex::new(Gzip {
                compressor: Compressor::new(GZIP_LEVEL),
                scratch: Vec::new(),
            }),
            attempt_timeout: settings.export_timeout,
            policy,
            stopping: AtomicBool::new(false),
            stopped: Notify::new(),
        })
    }

    /// The process is stopping: an unreachable endpoint is given up after one short retry,
    /// and a backoff wait in progress ends now.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.stopped.notify_waiters();
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// The endpoint without credentials or query, fit for a log line.
    pub fn endpoint_for_logs(&self) -> String {
        let mut url = self.url.clone();
        let _ = url.set_username("");
        let _ = url.set_password(None);
        url.set_query(None);
        url.to_string()
    }

    /// The request body of an encoded batch, as [`Transport::body`] makes it, but shared as it
    /// is when uncompressed instead of copied.
    pub fn body_of(&self, encoded: Bytes) -> Bytes {
        match self.compression {
            Compression::None => encoded,
            Compression::Gzip => self.body(&encoded),
        }
    }

    /// The request body for an encoded batch: gzipped unless compression is off. Fast
    /// compression: the exporter's CPU matters more than a few percent of bytes on the wire.
    pub fn body(&self, encoded: &[u8]) -> Bytes {
        match self.compression {
            Compression::None => Bytes::copy_from_slice(encoded),
            Compression::Gzip => {
                // Only the export thread compresses: the lock is never contended.
                let mut gzip = self.gzip.lock().unwrap_or_else(PoisonError::into_inner);
                let Gzip {
                    compressor,
                    scratch,
                } = &mut *gzip;
                let bound = compressor.gzip_compress_bound(encoded.len());
                if scratch.len() < bound {
                    scratch.resize(bound, 0);
                }
                // The buffer has the bound's size, so compression cannot run out of room.
                let written = compressor.gzip_compress(encoded, scratch).unwrap_or(0);
                let body = Bytes::copy_from_slice(&scratch[..written]);
                // An outsized batch (up to the 20 MiB bound) does not keep its buffer.
                if scratch.len() > KEPT_SCRATCH_BYTES {
                    *scratch = Vec::new();
                }
                body
            }
        }
    }

    /// One POST, bounded by the attempt timeout (and by `deadline`).
    pub async fn attempt(&self, body: Bytes, deadline: Instant) -> Attempt {
        let timeout = self
            .attempt_timeout
            .min(deadline.saturating_duration_since(Instant::now()))
            .max(Duration::from_millis(1));
        let response = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .timeout(timeout)
            .body(body)
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(err) => {
                let cause = if err.is_timeout() {
                    format!("no answer within {timeout:?}")
                } else if err.is_connect() {
                    "connection failed".to_owned()
                } else {
                    "connection lost before an answer".to_owned()
                };
                return if err.is_builder() {
                    Attempt::Rejected { cause }
                } else if err.is_connect() {
                    Attempt::Unreachable { cause }
                } else {
                    Attempt::Retryable {
                        cause,
                        retry_after: None,
                    }
                };
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        if status.is_success() {
            let body = response.bytes().await.unwrap_or_default();
            let partial = ExportTraceServiceResponse::decode(body.as_ref())
                .ok()
                .and_then(|r| r.partial_success)
                .unwrap_or_default();
            return Attempt::Accepted {
                rejected_spans: partial.rejected_spans,
                message: partial.error_message,
            };
        }
        let cause = format!("HTTP {}", status.as_u16());
        match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                Attempt::Retryable { cause, retry_after }
            }
            StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT => Attempt::Retryable {
                cause,
                retry_after: None,
            },
            _ => Attempt::Rejected { cause },
        }
    }

    /// Delivers one batch: attempts with backoff until accepted, rejected or `deadline`.
    /// `on_retry` is told of each repeated attempt.
    pub async fn deliver(
        &self,
        body: Bytes,
        deadline: Instant,
        mut on_retry: impl FnMut(),
    ) -> Delivery {
        let mut backoff = Backoff::new(self.policy, jitter_source());
        let mut unreachable_while_stopping = 0;
        loop {
            let (cause, retry_after) = match self.attempt(body.clone(), deadline).await {
                Attempt::Accepted {
                    rejected_spans,
                    message,
                } => {
                    return Delivery::Exported {
                        rejected_spans,
                        message,
                    };
                }
                Attempt::Rejected { cause } => return Delivery::Rejected { cause },
                Attempt::Unreachable { cause } if self.is_stopping() => {
                    if unreachable_while_stopping > 0 || Instant::now() + STOPPING_RETRY >= deadline
                    {
                        return Delivery::Unreachable { cause };
                    }
                    unreachable_while_stopping += 1;
                    tokio::time::sleep(STOPPING_RETRY).await;
                    on_retry();
                    continue;
                }
                Attempt::Retryable { cause, retry_after } => (cause, retry_after),
                Attempt::Unreachable { cause } => (cause, None),
            };
            let wait = backoff.next_delay().max(retry_after.unwrap_or_default());
            if Instant::now() + wait >= deadline {
                return Delivery::Failed { cause };
            }
            // A wait that began before the process started stopping ends when it does (the
            // next attempt then learns whether the endpoint is reachable at all); once
            // stopping, an answering endpoint is waited for as usual, within the flush budget.
            // Registered before the flag is read: a stop between the two still ends the wait.
            let stopped = self.stopped.notified();
            tokio::pin!(stopped);
            stopped.as_mut().enable();
            if self.is_stopping() {
                tokio::time::sleep(wait).await;
            } else {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = stopped => {}
                }
            }
            on_retry();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let policy = RetryPolicy::default();
        // A pinned random source of 0.5 means no jitter at all.
        let mut plain = Backoff::new(policy, || 0.5);
        let waits: Vec<u64> = (0..12)
            .map(|_| plain.next_delay().as_millis() as u64)
            .collect();
        assert_eq!(&waits[..4], &[1000, 1500, 2250, 3375]);
        assert!(waits.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*waits.last().unwrap(), 30_000);

        // The extremes of the random source spread each wait by ±50 %.
        let mut low = Backoff::new(policy, || 0.0);
        let mut high = Backoff::new(policy, || 0.999_999);
        assert_eq!(low.next_delay(), Duration::from_millis(500));
        let top = high.next_delay().as_millis();
        assert!((1499..=1500).contains(&top), "{top}");
    }

    #[test]
    fn jitter_source_is_in_range_and_varies() {
        let mut random = jitter_source();
        let values: Vec<f64> = (0..1000).map(|_| random()).collect();
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)));
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert!((0.4..0.6).contains(&mean), "{mean}");
    }

    fn transport(compression: &str) -> Transport {
        let vars = [("OTEL_EXPORTER_OTLP_COMPRESSION", compression.to_owned())];
        let env = crate::config::env::Env::new(move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
        });
        let settings = TelemetrySettings::from_source(&env).expect("settings");
        Transport::new(&settings, RetryPolicy::default()).expect("transport")
    }

    #[test]
    fn gzip_body_is_compressed_and_decodes_to_the_batch() {
        let batch: Vec<u8> = (0..20_000u32)
            .flat_map(|i| format!("GET /api/v1/posts/{} ", i % 97).into_bytes())
            .collect();
        let gzip = transport("gzip");
        let first = gzip.body(&batch);
        assert!(
            first.len() < batch.len() / 4,
            "{} of {} bytes: not compressed",
            first.len(),
            batch.len()
        );
        // The compressor is reused: a second body is just as good.
        for body in [first, gzip.body(&batch)] {
            let mut decoded = Vec::new();
            std::io::Read::read_to_end(
                &mut flate2::read::GzDecoder::new(body.as_ref()),
                &mut decoded,
            )
            .expect("valid gzip");
            assert_eq!(decoded, batch);
        }
        assert_eq!(transport("none").body(&batch).as_ref(), batch.as_slice());
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(parse_retry_after(&later, now), Some(Duration::from_secs(7)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(7));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }
}
