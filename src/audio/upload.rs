//! An upload, from its checks to its queued job, behind one call: [`AudioService::upload`].
//!
//! ```text
//!  check (before any of the body is read): the post is the requester's, an accepted type,
//!        Content-Length within AUDIO_MAX_BYTES, the per-user limits (jobs::holdings)
//!        └─ refused ─▶ a little of the body drained (the client sees the answer, not a reset)
//!  store: the body streamed into storage, bounded by the size limit and the quota's room
//!  queue: jobs::enqueue with the request's W3C context (the job continues this trace);
//!         refused there (a concurrent upload took the room) or failed ─▶ the stored file removed
//!  then:  the superseded upload's files removed, the workers woken, the writer's feeds stamped
//! ```
//!
//! The route keeps only HTTP: it reads the headers and maps an [`UploadError`] to its answer.

use actix_web::web;
use uuid::Uuid;

use super::jobs::{self, EnqueueError, NewUpload, UploadRefusal};
use super::storage::{ReceiveError, drain};
use super::{ACCEPTED_TYPES, AudioService};
use crate::cache::feed::{FeedCache, FeedChange};
use crate::db::{Db, DbError};
use crate::errors::ErrorChain;
use crate::telemetry::{handoff, logging};

/// What the request says of an upload, besides its body.
#[derive(Debug, Clone)]
pub struct UploadRequest {
    pub requester: Uuid,
    pub post_id: Uuid,
    /// The `Content-Type`'s media type, lower-cased.
    pub media_type: Option<String>,
    /// `Content-Length`, when there is one (not with a chunked body).
    pub declared_len: Option<u64>,
}

/// Why an upload was not queued.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// Not one of [`ACCEPTED_TYPES`].
    #[error("unsupported audio type")]
    UnsupportedType,
    /// `Content-Length` past `AUDIO_MAX_BYTES`, before anything was stored.
    #[error("the upload is larger than AUDIO_MAX_BYTES")]
    TooLarge,
    /// A per-user limit (`AUDIO_PENDING_PER_USER`, `AUDIO_QUOTA_BYTES`).
    #[error("upload refused: {0:?}")]
    Refused(UploadRefusal),
    /// Storing the body failed (size, quota's room, a stalled or broken body, the store).
    #[error(transparent)]
    Receive(ReceiveError),
    /// The quota's room ran out while the body streamed in.
    #[error("the upload would pass the quota of {quota_bytes} bytes")]
    QuotaExceeded { quota_bytes: u64 },
    /// The post (not found, not the requester's) or the database.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl AudioService {
    /// Checks, stores and queues an upload (module doc).
    pub async fn upload(
        &self,
        db: &Db,
        feeds: &FeedCache,
        request: UploadRequest,
        mut body: web::Payload,
    ) -> Result<(), UploadError> {
        let UploadRequest {
            requester,
            post_id,
            media_type,
            declared_len,
        } = request;
        let checked = self
            .check(db, requester, post_id, media_type, declared_len)
            .await;
        let (source_type, room) = match checked {
            Ok(ok) => ok,
            Err(err) => {
                drain(&mut body).await;
                return Err(err);
            }
        };

        let upload_id = Uuid::new_v4();
        // The quota bounds the body as it streams in, like the size limit: a chunked body has
        // no length to check beforehand.
        let limit = self.max_bytes.min(room);
        let source_bytes = self
            .storage
            .receive(post_id, upload_id, body, limit)
            .await
            .map_err(|err| match err {
                ReceiveError::TooLarge(_) if room < self.max_bytes => UploadError::QuotaExceeded {
                    quota_bytes: self.limits.quota_bytes,
                },
                other => UploadError::Receive(other),
            })?;

        // The request's own span: the job continues this trace (CONTRACT.md §6).
        let (traceparent, tracestate) = handoff::w3c_context_of(&tracing::Span::current())
            .map_or((None, None), |(p, s)| (Some(p), s));
        let new = NewUpload {
            upload_id,
            post_id,
            source_type,
            source_bytes: i64::try_from(source_bytes).unwrap_or(i64::MAX),
            traceparent,
            tracestate,
        };
        let limits = self.limits;
        let queued = db
            .run(move |conn| jobs::enqueue(conn, requester, &new, limits))
            .await;
        let superseded = match queued {
            Ok(superseded) => superseded,
            Err(err) => {
                self.remove_upload(post_id, upload_id).await;
                return Err(match err {
                    EnqueueError::Refused(refusal) => UploadError::Refused(refusal),
                    EnqueueError::Db(err) => UploadError::Db(err),
                });
            }
        };
        if let Some(previous) = superseded {
            self.remove_upload(post_id, previous).await;
        }
        self.job_queued();
        // Listings show the audio's state: the author sees `pending` at once, others within
        // the cache's TTL (as for every write).
        feeds.changed(requester, FeedChange::ByWriter).await;
        Ok(())
    }

    /// Everything that can refuse an upload before any of its body is read; returns the media
    /// type and the room left in the user's quota.
    async fn check(
        &self,
        db: &Db,
        requester: Uuid,
        post_id: Uuid,
        media_type: Option<String>,
        declared_len: Option<u64>,
    ) -> Result<(String, u64), UploadError> {
        let author = db.run(move |conn| jobs::post_owner(conn, post_id)).await?;
        if author != requester {
            return Err(DbError::Forbidden("only the author can upload a post's audio").into());
        }
        let media_type = media_type
            .filter(|t| ACCEPTED_TYPES.contains(&t.as_str()))
            .ok_or(UploadError::UnsupportedType)?;
        if declared_len.is_some_and(|len| len > self.max_bytes) {
            return Err(UploadError::TooLarge);
        }
        let held = db
            .run(move |conn| Ok::<_, DbError>(jobs::holdings(conn, requester, post_id)?))
            .await?;
        if let Some(refusal) = held.refuse(self.limits, declared_len) {
            return Err(UploadError::Refused(refusal));
        }
        Ok((media_type, held.room(self.limits.quota_bytes)))
    }

    /// Removes an upload's files; a failure leaves garbage behind, not a wrong answer: logged.
    async fn remove_upload(&self, post: Uuid, upload: Uuid) {
        if let Err(err) = self.storage.remove_upload(post, upload).await {
            slog::warn!(logging::logger(), "could not remove an upload's audio";
                "post.id" => %post, "audio.upload.id" => %upload, "error" => %ErrorChain(&err));
        }
    }
}
