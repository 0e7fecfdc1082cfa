//! Audio files under `AUDIO_STORAGE_DIR`: uploads streamed in, MP3s served with `Range`.
//!
//! ```text
//!  AUDIO_STORAGE_DIR/
//!    <post id>/
//!      <upload id>.src        the upload as received (streamed to disk, size checked per chunk)
//!      <upload id>.<n>.part   attempt n's transcode while it runs (an ffmpeg orphaned by a
//!                             killed process cannot write into the next attempt's file)
//!      <upload id>.mp3        the processed audio, renamed into place by the store stage
//! ```
//!
//! The upload id is also the job id: files of a superseded upload are found by it and removed,
//! and a worker still busy with one can never overwrite the files of the upload that replaced
//! it. Deleting a post removes its directory.

use std::io;
use std::path::{Path, PathBuf};

use actix_web::web;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

/// How much of an over-long body is still read (and discarded) before answering 413, so that a
/// client that sends its body before reading the answer sees the 413 rather than a reset.
const DRAIN_LIMIT: u64 = 1024 * 1024;

/// The storage root.
#[derive(Debug, Clone)]
pub struct AudioStorage {
    root: PathBuf,
}

/// Receiving an upload failed.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("the upload is larger than {0} bytes")]
    TooLarge(u64),
    #[error("the upload was interrupted: {0}")]
    Interrupted(String),
    /// The body sent nothing for `REQUEST_BODY_IDLE_TIMEOUT_S` (`routes::body_idle`).
    #[error("the upload stopped arriving")]
    Stalled,
    #[error("could not store the upload: {0}")]
    Io(#[from] io::Error),
}

impl AudioStorage {
    /// Uses `root`, creating it if missing.
    pub fn open(root: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(root)?;
        Ok(Self {
            root: root.to_owned(),
        })
    }

    fn post_dir(&self, post: Uuid) -> PathBuf {
        self.root.join(post.simple().to_string())
    }

    /// The upload as received.
    pub fn source_path(&self, post: Uuid, upload: Uuid) -> PathBuf {
        self.post_dir(post).join(format!("{}.src", upload.simple()))
    }

    /// The processed MP3.
    pub fn mp3_path(&self, post: Uuid, upload: Uuid) -> PathBuf {
        self.post_dir(post).join(format!("{}.mp3", upload.simple()))
    }

    /// Where attempt `attempt`'s transcode writes before the store stage renames it into place.
    pub fn partial_mp3_path(&self, post: Uuid, upload: Uuid, attempt: i32) -> PathBuf {
        self.post_dir(post)
            .join(format!("{}.{attempt}.part", upload.simple()))
    }

    /// Streams the request body to the upload's source file, chunk by chunk. Past `max_bytes`
    /// the partial file is removed and the answer is [`ReceiveError::TooLarge`]; so it is on any
    /// other failure. Returns the size written.
    pub async fn receive(
        &self,
        post: Uuid,
        upload: Uuid,
        mut body: web::Payload,
        max_bytes: u64,
    ) -> Result<u64, ReceiveError> {
        tokio::fs::create_dir_all(self.post_dir(post)).await?;
        let path = self.source_path(post, upload);
        let written = async {
            let mut file = tokio::fs::File::create(&path).await?;
            let mut total = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| match e {
                    actix_web::error::PayloadError::Io(io)
                        if io.kind() == io::ErrorKind::TimedOut =>
                    {
                        ReceiveError::Stalled
                    }
                    other => ReceiveError::Interrupted(other.to_string()),
                })?;
                total += chunk.len() as u64;
                if total > max_bytes {
                    drain(&mut body).await;
                    return Err(ReceiveError::TooLarge(max_bytes));
                }
                file.write_all(&chunk).await?;
            }
            file.flush().await?;
            file.sync_all().await?;
            Ok(total)
        }
        .await;
        if written.is_err() {
            let _ = tokio::fs::remove_file(&path).await;
        }
        written
    }

    /// Removes every file of one upload (source, partial and processed MP3). Missing files are
    /// not an error.
    pub async fn remove_upload(&self, post: Uuid, upload: Uuid) {
        let stem = format!("{}.", upload.simple());
        let Ok(mut entries) = tokio::fs::read_dir(self.post_dir(post)).await else {
            return;
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            if entry.file_name().to_string_lossy().starts_with(&stem) {
                let _ = tokio::fs::remove_file(entry.path()).await;
            }
        }
    }

    /// Removes every file of a post.
    pub async fn remove_post(&self, post: Uuid) -> io::Result<()> {
        match tokio::fs::remove_dir_all(self.post_dir(post)).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Reads and discards what is left of a body, up to [`DRAIN_LIMIT`] bytes.
pub async fn drain(body: &mut web::Payload) {
    let mut seen = 0u64;
    while let Some(Ok(chunk)) = body.next().await {
        seen += chunk.len() as u64;
        if seen > DRAIN_LIMIT {
            break;
        }
    }
}

/// What a `Range` header asks of a file of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: the whole file, 200.
    Full,
    /// Bytes `start..=end`, 206.
    Partial { start: u64, end: u64 },
    /// A well-formed range that lies outside the file: 416.
    Unsatisfiable,
}

/// Reads a `Range` header (RFC 9110 §14). One range is served; several, or a unit other than
/// `bytes`, or a malformed header are ignored and the whole file is sent, as the RFC allows.
pub fn parse_range(header: Option<&str>, len: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (first.is_empty(), number(first), number(last)) {
        // `bytes=-N`: the last N bytes.
        (true, _, Some(suffix)) => {
            if suffix == 0 || len == 0 {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Partial {
                    start: len.saturating_sub(suffix),
                    end: len - 1,
                }
            }
        }
        // `bytes=A-` or `bytes=A-B`.
        (false, Some(start), last_pos) if last.is_empty() || last_pos.is_some() => {
            if let Some(end) = last_pos
                && end < start
            {
                return RangeRequest::Full;
            }
            if start >= len {
                return RangeRequest::Unsatisfiable;
            }
            let end = last_pos.map_or(len - 1, |e| e.min(len - 1));
            RangeRequest::Partial { start, end }
        }
        _ => RangeRequest::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        use RangeRequest::*;
        let r = |h: &str| parse_range(Some(h), 1000);
        assert_eq!(parse_range(None, 1000), Full);
        assert_eq!(r("bytes=0-99"), Partial { start: 0, end: 99 });
        assert_eq!(
            r("bytes=500-"),
            Partial {
                start: 500,
                end: 999
            }
        );
        assert_eq!(
            r("bytes=900-5000"),
            Partial {
                start: 900,
                end: 999
            }
        );
        assert_eq!(
            r("bytes=-100"),
            Partial {
                start: 900,
                end: 999
            }
        );
        assert_eq!(r("bytes=-5000"), Partial { start: 0, end: 999 });
        assert_eq!(r("bytes=1000-"), Unsatisfiable);
        assert_eq!(r("bytes=-0"), Unsatisfiable);
        assert_eq!(r("bytes=5-1"), Full);
        assert_eq!(r("bytes=0-1,5-6"), Full);
        assert_eq!(r("items=0-1"), Full);
        assert_eq!(r("bytes=x-1"), Full);
        assert_eq!(r("bytes=+1-2"), Full);
    }
}
