//! Audio uploads and their background processing (CONTRACT.md §6).
//!
//! ```text
//!  PUT /posts/{id}/audio ─▶ storage: body streamed to <post>/<upload>.src
//!                        ─▶ jobs::enqueue: post `pending` + job row + the request's W3C context
//!                        ─▶ wake this process's workers
//!  worker (any replica) ─▶ jobs::claim (SKIP LOCKED, lease) ─▶ span `audio.process`, parent = stored context
//!                        ─▶ audio.probe ─▶ audio.transcode ─▶ audio.waveform ─▶ audio.store (post `ready`)
//!  GET /posts/{id}/audio ─▶ the MP3, with Range
//! ```

pub mod ffmpeg;
pub mod jobs;
pub mod storage;
pub mod upload;
pub mod worker;

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::Notify;
use utoipa::ToSchema;

pub use storage::AudioStorage;
pub use worker::AudioRunner;

/// The media types an upload may have (CONTRACT.md §2).
pub const ACCEPTED_TYPES: [&str; 6] = [
    "audio/wav",
    "audio/x-wav",
    "audio/mpeg",
    "audio/flac",
    "audio/ogg",
    "audio/aiff",
];

/// Where a post's audio stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AudioStatus {
    /// Nothing uploaded.
    None,
    /// Uploaded, waiting for a worker.
    Pending,
    /// A worker is running the stages.
    Processing,
    /// Processed: `GET …/audio` serves the MP3.
    Ready,
    /// Processing failed; `error` says why.
    Failed,
}

impl AudioStatus {
    /// The stored (and serialised) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Ready => "ready",
            Self::Failed => "failed",
        }
    }

    /// The stored name read back; a value the schema's CHECK cannot hold reads as `none`.
    pub fn from_stored(s: &str) -> Self {
        match s {
            "pending" => Self::Pending,
            "processing" => Self::Processing,
            "ready" => Self::Ready,
            "failed" => Self::Failed,
            _ => Self::None,
        }
    }
}

/// What the audio routes share with the workers of this process.
#[derive(Clone)]
pub struct AudioService {
    pub storage: AudioStorage,
    /// `AUDIO_MAX_BYTES`.
    pub max_bytes: u64,
    /// `AUDIO_QUOTA_BYTES` and `AUDIO_PENDING_PER_USER`.
    pub limits: jobs::UploadLimits,
    wake: Arc<Notify>,
}

impl AudioService {
    pub fn new(storage: AudioStorage, max_bytes: u64, limits: jobs::UploadLimits) -> Self {
        Self {
            storage,
            max_bytes,
            limits,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Tells this process's idle workers that a job was queued, so they claim it now instead
    /// of at their next poll.
    pub fn job_queued(&self) {
        self.wake.notify_waiters();
    }

    pub(crate) fn wake_handle(&self) -> Arc<Notify> {
        self.wake.clone()
    }
}
