//! S3-compatible object storage through the `object_store` crate, every call a CLIENT span.
//!
//! ```text
//!  AUDIO_STORAGE_URL=s3://<bucket>/<prefix>
//!    <prefix>/<post id>/<upload id>.src   the upload as received
//!    <prefix>/<post id>/<upload id>.mp3   the processed audio
//! ```
//!
//! **Spans.** Each call is one span of kind CLIENT named `S3.<operation>` (the AWS SDK
//! convention), with `rpc.system` `aws-api`, `rpc.service` `S3`, `rpc.method`,
//! `aws.s3.bucket`, `aws.s3.key` (`aws.s3.part_number` for a part), `server.address` and
//! `server.port`; a failed call has status ERROR, the error as its description and `error.type`.
//! A span covers the call with `object_store`'s own retries; a GET's span ends when the object's
//! headers arrive, its body then streams on in the caller's span.
//!
//! **Streaming in.** Bytes are collected into parts of [`PART_SIZE`]: an object that ends within
//! the first part is one `PutObject`; a longer one is a multipart upload with one part on the wire
//! while the next fills, so an upload holds at most two parts in memory (16 MiB) whatever its
//! size. A writer dropped before it finished (a cancelled request) aborts its multipart upload.
//!
//! **Retries.** `object_store` retries a call that failed to connect, timed out or got a 5xx, a
//! few times within [`RETRY_TIMEOUT`]; past that the caller sees the error. The audio worker turns
//! it into a transient failure of the attempt, retried later (jobs.rs), so an outage of the store
//! longer than a call's retries loses nothing either.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::client::{HttpError, HttpErrorKind};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, MultipartUpload, ObjectStore,
    ObjectStoreExt, PutPayload, RetryConfig,
};
use tokio::task::JoinHandle;
use tracing::Instrument;
use tracing::field::Empty;
use uuid::Uuid;

use crate::config::ObjectStorageSettings;

/// The size of one part of a multipart upload (S3's minimum is 5 MiB, but for the last part).
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// Bound on one call with its retries. Longer outages are the worker's to outlast (module doc).
const RETRY_TIMEOUT: Duration = Duration::from_secs(15);
const MAX_RETRIES: usize = 3;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on the wait for each read of a response. There is no bound on a whole request: a GET
/// streams the MP3 to a client at the client's pace.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// One bucket (and key prefix) of an S3-compatible store.
#[derive(Debug)]
pub struct Bucket {
    store: AmazonS3,
    name: String,
    prefix: String,
    server_address: String,
    server_port: u16,
}

impl Bucket {
    /// Builds the client; nothing is sent yet.
    pub fn open(settings: &ObjectStorageSettings) -> Result<Self, object_store::Error> {
        let mut builder = AmazonS3Builder::new();
        for (name, value) in &settings.aws {
            if let Ok(key) = name.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                builder = builder.with_config(key, value);
            }
        }
        let client = ClientOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_read_timeout(READ_TIMEOUT)
            .with_timeout_disabled();
        builder = builder
            .with_bucket_name(&settings.bucket)
            .with_region(&settings.region)
            .with_client_options(client)
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: MAX_RETRIES,
                retry_timeout: RETRY_TIMEOUT,
            });
        let (server_address, server_port) = match &settings.endpoint {
            Some(endpoint) => {
                // Path-style (`<endpoint>/<bucket>/<key>`): what S3-compatible servers serve
                // without a DNS name per bucket.
                builder = builder
                    .with_endpoint(endpoint.as_str().trim_end_matches('/'))
                    .with_allow_http(endpoint.scheme() == "http")
                    .with_virtual_hosted_style_request(false);
                (
                    endpoint.host_str().unwrap_or_default().to_owned(),
                    endpoint.port_or_known_default().unwrap_or(443),
                )
            }
            None => (format!("s3.{}.amazonaws.com", settings.region), 443),
        };
        Ok(Self {
            store: builder.build()?,
            name: settings.bucket.clone(),
            prefix: settings.prefix.clone(),
            server_address,
            server_port,
        })
    }

    /// The key of an upload's file, `name` being `<upload id>.src` or `.mp3`.
    pub fn key(&self, post: Uuid, name: &str) -> ObjectPath {
        ObjectPath::from(format!("{}/{name}", self.post_prefix(post)))
    }

    fn post_prefix(&self, post: Uuid) -> String {
        if self.prefix.is_empty() {
            post.simple().to_string()
        } else {
            format!("{}/{}", self.prefix, post.simple())
        }
    }

    /// The span of one call (module doc).
    fn span(&self, method: &'static str, key: Option<&ObjectPath>) -> tracing::Span {
        let span = tracing::info_span!(
            "storage.call",
            otel.name = format!("S3.{method}"),
            otel.kind = "client",
            rpc.system = "aws-api",
            rpc.service = "S3",
            rpc.method = method,
            aws.s3.bucket = self.name.as_str(),
            aws.s3.key = Empty,
            aws.s3.part_number = Empty,
            server.address = self.server_address.as_str(),
            server.port = i64::from(self.server_port),
            otel.status_code = Empty,
            otel.status_description = Empty,
            error.type = Empty,
        );
        if let Some(key) = key {
            span.record("aws.s3.key", key.as_ref());
        }
        span
    }

    /// Stores `payload` whole: `PutObject`.
    async fn put(&self, key: &ObjectPath, payload: PutPayload) -> Result<(), object_store::Error> {
        traced(
            self.span("PutObject", Some(key)),
            self.store.put(key, payload),
        )
        .await
        .map(drop)
    }

    /// The object, or bytes `range` of it: `GetObject`. The span ends with the headers.
    pub async fn get(
        &self,
        key: &ObjectPath,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<(u64, BoxStream<'static, Result<Bytes, object_store::Error>>), object_store::Error>
    {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let result = traced(
            self.span("GetObject", Some(key)),
            self.store.get_opts(key, options),
        )
        .await?;
        Ok((result.meta.size, result.into_stream()))
    }

    /// The object's size: `HeadObject`.
    pub async fn size(&self, key: &ObjectPath) -> Result<u64, object_store::Error> {
        traced(self.span("HeadObject", Some(key)), self.store.head(key))
            .await
            .map(|meta| meta.size)
    }

    /// Removes one object; a missing one is not an error: `DeleteObject`.
    pub async fn delete(&self, key: &ObjectPath) -> Result<(), object_store::Error> {
        match traced(self.span("DeleteObject", Some(key)), self.store.delete(key)).await {
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            other => other,
        }
    }

    /// Removes every object of a post: `ListObjectsV2`, then `DeleteObject` each.
    pub async fn delete_post(&self, post: Uuid) -> Result<(), object_store::Error> {
        let prefix = ObjectPath::from(self.post_prefix(post));
        // A prefix is not an object key: the span names none.
        let listed: Result<Vec<ObjectPath>, object_store::Error> =
            traced(self.span("ListObjectsV2", None), async {
                let mut keys = Vec::new();
                let mut listing = self.store.list(Some(&prefix));
                while let Some(meta) = listing.next().await {
                    keys.push(meta?.location);
                }
                Ok(keys)
            })
            .await;
        for key in listed? {
            self.delete(&key).await?;
        }
        Ok(())
    }

    /// A writer that streams one object in (module doc).
    pub fn writer(&self, key: ObjectPath) -> ObjectWriter<'_> {
        ObjectWriter {
            bucket: self,
            key,
            parts: Vec::new(),
            buffered: 0,
            upload: None,
        }
    }
}

/// Runs one call inside its span; on failure the span gets status ERROR, the error as its
/// description and `error.type`.
async fn traced<T>(
    span: tracing::Span,
    call: impl Future<Output = Result<T, object_store::Error>>,
) -> Result<T, object_store::Error> {
    let result = call.instrument(span.clone()).await;
    if let Err(err) = &result {
        span.record("otel.status_code", "ERROR");
        span.record("otel.status_description", err.to_string());
        span.record("error.type", error_type(err));
    }
    result
}

/// A low-cardinality name of what went wrong: the transport's kind of failure when there was
/// one (connect, timeout, …), else the kind of answer.
pub fn error_type(err: &object_store::Error) -> &'static str {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(http) = e.downcast_ref::<HttpError>() {
            return match http.kind() {
                HttpErrorKind::Connect => "connect",
                HttpErrorKind::Request => "request",
                HttpErrorKind::Timeout => "timeout",
                HttpErrorKind::Interrupted => "interrupted",
                HttpErrorKind::Decode => "decode",
                _ => "http",
            };
        }
        source = e.source();
    }
    match err {
        object_store::Error::NotFound { .. } => "not_found",
        object_store::Error::PermissionDenied { .. } => "permission_denied",
        object_store::Error::Unauthenticated { .. } => "unauthenticated",
        object_store::Error::Precondition { .. } => "precondition_failed",
        _ => "storage_error",
    }
}

/// One object being streamed in (module doc). Call [`ObjectWriter::finish`] at the end, or
/// [`ObjectWriter::abort`] on failure; dropped unfinished, it aborts in the background.
pub struct ObjectWriter<'a> {
    bucket: &'a Bucket,
    key: ObjectPath,
    parts: Vec<Bytes>,
    buffered: usize,
    upload: Option<Multipart>,
}

struct Multipart {
    upload: Box<dyn MultipartUpload>,
    /// The part on the wire, uploading while the next one fills.
    in_flight: Option<JoinHandle<Result<(), object_store::Error>>>,
    parts: u32,
}

impl Multipart {
    async fn settle(&mut self) -> Result<(), object_store::Error> {
        match self.in_flight.take() {
            None => Ok(()),
            Some(part) => part
                .await
                .map_err(|e| object_store::Error::JoinError { source: e })?,
        }
    }
}

impl ObjectWriter<'_> {
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), object_store::Error> {
        self.buffered += chunk.len();
        self.parts.push(chunk);
        if self.buffered >= PART_SIZE {
            self.send_part().await?;
        }
        Ok(())
    }

    /// Sends what is buffered as the next part, once the previous part is stored.
    async fn send_part(&mut self) -> Result<(), object_store::Error> {
        if self.upload.is_none() {
            let upload = traced(
                self.bucket.span("CreateMultipartUpload", Some(&self.key)),
                self.bucket.store.put_multipart(&self.key),
            )
            .await?;
            self.upload = Some(Multipart {
                upload,
                in_flight: None,
                parts: 0,
            });
        }
        let payload: PutPayload = std::mem::take(&mut self.parts).into_iter().collect();
        self.buffered = 0;
        let span = self.bucket.span("UploadPart", Some(&self.key));
        let Some(multipart) = self.upload.as_mut() else {
            return Ok(());
        };
        multipart.settle().await?;
        multipart.parts += 1;
        span.record("aws.s3.part_number", i64::from(multipart.parts));
        // Spawned so that it goes on while the caller reads the next part's bytes.
        multipart.in_flight = Some(tokio::spawn(traced(
            span,
            multipart.upload.put_part(payload),
        )));
        Ok(())
    }

    /// Stores what was written: `PutObject`, or the last part and `CompleteMultipartUpload`.
    pub async fn finish(&mut self) -> Result<(), object_store::Error> {
        if self.upload.is_none() {
            let payload: PutPayload = std::mem::take(&mut self.parts).into_iter().collect();
            self.buffered = 0;
            return self.bucket.put(&self.key, payload).await;
        }
        if self.buffered > 0 {
            self.send_part().await?;
        }
        let Some(mut multipart) = self.upload.take() else {
            return Ok(());
        };
        let completed = async {
            multipart.settle().await?;
            traced(
                self.bucket.span("CompleteMultipartUpload", Some(&self.key)),
                multipart.upload.complete(),
            )
            .await
            .map(drop)
        }
        .await;
        if completed.is_err() {
            // Back, so that `abort` (or the drop) removes the parts stored so far.
            self.upload = Some(multipart);
        }
        completed
    }

    /// Removes the parts stored so far: `AbortMultipartUpload`.
    pub async fn abort(&mut self) {
        self.parts.clear();
        if let Some(mut multipart) = self.upload.take() {
            let _ = multipart.settle().await;
            let _ = traced(
                self.bucket.span("AbortMultipartUpload", Some(&self.key)),
                multipart.upload.abort(),
            )
            .await;
        }
    }
}

impl Drop for ObjectWriter<'_> {
    fn drop(&mut self) {
        // Neither finished nor aborted: the request was cancelled mid-upload.
        if let Some(mut multipart) = self.upload.take() {
            let span = self.bucket.span("AbortMultipartUpload", Some(&self.key));
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = multipart.settle().await;
                    let _ = traced(span, multipart.upload.abort()).await;
                });
            }
        }
    }
}
