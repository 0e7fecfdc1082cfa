//! Where audio lives: one interface over a local directory (the default) and S3-compatible
//! object storage (`AUDIO_STORAGE_URL`), both with the same names.
//!
//! ```text
//!  AUDIO_STORAGE_DIR/  or  s3://bucket/prefix/
//!    <post id>/
//!      <upload id>.src        the upload as received (streamed in, size checked per chunk)
//!      <upload id>.<n>.part   local only: attempt n's transcode while it runs (an ffmpeg orphaned
//!                             by a killed process cannot write into the next attempt's file)
//!      <upload id>.mp3        the processed audio, put in place by the store stage
//! ```
//!
//! The upload id is also the job id: files of a superseded upload are found by it and removed,
//! and a worker still busy with one can never overwrite the files of the upload that replaced
//! it. Deleting a post removes its directory (its objects).
//!
//! ffmpeg works on local files either way: a job's [`Workspace`] is the stored files themselves
//! in a local directory, and with object storage a scratch directory under the system's temp dir
//! into which the source is fetched (`GetObject`) and from which the MP3 is put; it is removed
//! when the attempt ends, however it ends. Downloads stream a ranged `GetObject` through the
//! service rather than redirect to a presigned URL: the client keeps one URL, one origin and the
//! service's `ETag`, and the bucket stays private (docs/audio.md).
//!
//! The local directory is our own code rather than `object_store`'s `LocalFileSystem`: ffmpeg
//! works on the stored files in place (no copy into a scratch directory), the store stage is an
//! atomic rename, a received upload is synced to disk, and the layout stays what it was.
//!
//! Calls to object storage are CLIENT spans ([`s3`]); the local directory has none.

mod s3;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix_web::web;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;
use uuid::Uuid;

use crate::config::AudioSettings;

/// How much of an over-long body is still read (and discarded) before answering 413, so that a
/// client that sends its body before reading the answer sees the 413 rather than a reset.
const DRAIN_LIMIT: u64 = 1024 * 1024;

/// Where audio lives (module doc). Cheap to clone.
#[derive(Debug, Clone)]
pub struct AudioStorage {
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    Local(LocalDir),
    Object(Arc<s3::Bucket>),
}

/// The storage could not be opened at start-up.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("could not create AUDIO_STORAGE_DIR {path:?}: {source}")]
    Directory { path: PathBuf, source: io::Error },
    #[error("invalid AUDIO_STORAGE_URL: {0}")]
    Object(#[source] object_store::Error),
}

/// A storage call failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("no such audio file")]
    NotFound,
    #[error("audio storage: {0}")]
    Io(#[from] io::Error),
    #[error("object storage: {0}")]
    Object(#[source] object_store::Error),
}

impl From<object_store::Error> for StorageError {
    fn from(err: object_store::Error) -> Self {
        match err {
            object_store::Error::NotFound { .. } => Self::NotFound,
            other => Self::Object(other),
        }
    }
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
    /// Object storage failed (after its retries).
    #[error("could not store the upload: {0}")]
    Storage(#[source] object_store::Error),
}

impl AudioStorage {
    /// Object storage when `AUDIO_STORAGE_URL` is set, else `AUDIO_STORAGE_DIR`, created if
    /// missing.
    pub fn open(settings: &AudioSettings) -> Result<Self, OpenError> {
        let backend = match &settings.object_storage {
            Some(object) => Backend::Object(Arc::new(
                s3::Bucket::open(object).map_err(OpenError::Object)?,
            )),
            None => Backend::Local(LocalDir::open(&settings.storage_dir).map_err(|source| {
                OpenError::Directory {
                    path: settings.storage_dir.clone(),
                    source,
                }
            })?),
        };
        Ok(Self { backend })
    }

    /// Streams the request body into the upload's source, chunk by chunk. Past `max_bytes`
    /// what was stored is removed and the answer is [`ReceiveError::TooLarge`]; so it is on any
    /// other failure. Returns the size stored.
    pub async fn receive(
        &self,
        post: Uuid,
        upload: Uuid,
        mut body: web::Payload,
        max_bytes: u64,
    ) -> Result<u64, ReceiveError> {
        let mut sink = match &self.backend {
            Backend::Local(dir) => Sink::File(dir.create_source(post, upload).await?),
            Backend::Object(bucket) => {
                Sink::Object(bucket.writer(bucket.key(post, &source_name(upload))))
            }
        };
        let received = async {
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
                sink.write(chunk).await?;
            }
            sink.finish().await?;
            Ok(total)
        }
        .await;
        if received.is_err() {
            sink.discard().await;
        }
        received
    }

    /// The local files for attempt `attempt` at an upload's job: with object storage, the
    /// source is fetched into a scratch directory first.
    pub async fn workspace(
        &self,
        post: Uuid,
        upload: Uuid,
        attempt: i32,
    ) -> Result<Workspace, StorageError> {
        match &self.backend {
            Backend::Local(dir) => Ok(Workspace {
                source: dir.source_path(post, upload),
                partial: dir.partial_mp3_path(post, upload, attempt),
                scratch: None,
            }),
            Backend::Object(bucket) => {
                let scratch = std::env::temp_dir()
                    .join(format!("sidechain-audio-job-{}-{attempt}", upload.simple()));
                tokio::fs::create_dir_all(&scratch).await?;
                // Created now, so that the scratch directory goes whatever happens next.
                let workspace = Workspace {
                    source: scratch.join("source"),
                    partial: scratch.join("output.mp3"),
                    scratch: Some(scratch),
                };
                let key = bucket.key(post, &source_name(upload));
                let (_, mut stream) = bucket.get(&key, None).await?;
                let mut file = tokio::fs::File::create(&workspace.source).await?;
                while let Some(chunk) = stream.next().await {
                    file.write_all(&chunk?).await?;
                }
                file.flush().await?;
                Ok(workspace)
            }
        }
    }

    /// Puts the workspace's transcode in place as the upload's MP3.
    pub async fn store_mp3(
        &self,
        workspace: &Workspace,
        post: Uuid,
        upload: Uuid,
    ) -> Result<(), StorageError> {
        match &self.backend {
            Backend::Local(dir) => {
                tokio::fs::rename(&workspace.partial, dir.mp3_path(post, upload)).await?;
                Ok(())
            }
            Backend::Object(bucket) => {
                let file = tokio::fs::File::open(&workspace.partial).await?;
                let mut writer = bucket.writer(bucket.key(post, &mp3_name(upload)));
                let stored = async {
                    let mut chunks = ReaderStream::with_capacity(file, 256 * 1024);
                    while let Some(chunk) = chunks.next().await {
                        writer.write(chunk?).await?;
                    }
                    writer.finish().await?;
                    Ok::<_, StorageError>(())
                }
                .await;
                if stored.is_err() {
                    writer.abort().await;
                }
                stored
            }
        }
    }

    /// Opens an upload's MP3 for serving. `recorded_size` is the size the store stage wrote down:
    /// with object storage it saves a `HeadObject` (an upload's MP3 never changes).
    pub async fn open_mp3(
        &self,
        post: Uuid,
        upload: Uuid,
        recorded_size: Option<u64>,
    ) -> Result<Mp3, StorageError> {
        match &self.backend {
            Backend::Local(dir) => {
                let file = match tokio::fs::File::open(dir.mp3_path(post, upload)).await {
                    Ok(file) => file,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Err(StorageError::NotFound);
                    }
                    Err(e) => return Err(e.into()),
                };
                let size = file.metadata().await?.len();
                Ok(Mp3 {
                    size,
                    source: Mp3Source::File(file),
                })
            }
            Backend::Object(bucket) => {
                let key = bucket.key(post, &mp3_name(upload));
                let size = match recorded_size {
                    Some(size) => size,
                    None => bucket.size(&key).await?,
                };
                Ok(Mp3 {
                    size,
                    source: Mp3Source::Object(bucket.clone(), key),
                })
            }
        }
    }

    /// Removes an upload's source (its job is over).
    pub async fn remove_source(&self, post: Uuid, upload: Uuid) -> Result<(), StorageError> {
        match &self.backend {
            Backend::Local(dir) => {
                match tokio::fs::remove_file(dir.source_path(post, upload)).await {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
                    _ => Ok(()),
                }
            }
            Backend::Object(bucket) => Ok(bucket
                .delete(&bucket.key(post, &source_name(upload)))
                .await?),
        }
    }

    /// Removes every file of one upload (source, partial and processed MP3). Missing files are
    /// not an error.
    pub async fn remove_upload(&self, post: Uuid, upload: Uuid) -> Result<(), StorageError> {
        match &self.backend {
            Backend::Local(dir) => {
                dir.remove_upload(post, upload).await;
                Ok(())
            }
            Backend::Object(bucket) => {
                for name in [source_name(upload), mp3_name(upload)] {
                    bucket.delete(&bucket.key(post, &name)).await?;
                }
                Ok(())
            }
        }
    }

    /// Removes every file of a post.
    pub async fn remove_post(&self, post: Uuid) -> Result<(), StorageError> {
        match &self.backend {
            Backend::Local(dir) => Ok(dir.remove_post(post).await?),
            Backend::Object(bucket) => Ok(bucket.delete_post(post).await?),
        }
    }
}

fn source_name(upload: Uuid) -> String {
    format!("{}.src", upload.simple())
}

fn mp3_name(upload: Uuid) -> String {
    format!("{}.mp3", upload.simple())
}

/// The local files of one attempt at a job: ffmpeg reads `source` and writes `partial`.
/// Dropping it removes what the attempt leaves behind: the partial transcode, and with object
/// storage the whole scratch directory.
#[derive(Debug)]
pub struct Workspace {
    pub source: PathBuf,
    pub partial: PathBuf,
    scratch: Option<PathBuf>,
}

impl Drop for Workspace {
    fn drop(&mut self) {
        // Synchronous: it runs when an attempt ends, including when its future is dropped (the
        // process stopping, the lease lost), where nothing could await. Unlinking a handful of
        // files is quick.
        match &self.scratch {
            Some(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            None => {
                let _ = std::fs::remove_file(&self.partial);
            }
        }
    }
}

/// An MP3 ready to be served.
pub struct Mp3 {
    /// Its size in bytes.
    pub size: u64,
    source: Mp3Source,
}

enum Mp3Source {
    File(tokio::fs::File),
    Object(Arc<s3::Bucket>, object_store::path::Path),
}

impl Mp3 {
    /// Bytes `start..start + length` (with object storage, a ranged `GetObject`).
    pub async fn read(
        self,
        start: u64,
        length: u64,
    ) -> Result<BoxStream<'static, io::Result<Bytes>>, StorageError> {
        match self.source {
            Mp3Source::File(mut file) => {
                if start > 0 {
                    file.seek(io::SeekFrom::Start(start)).await?;
                }
                Ok(ReaderStream::new(file.take(length)).boxed())
            }
            Mp3Source::Object(bucket, key) => {
                let whole = start == 0 && length == self.size;
                let range = (!whole).then_some(start..start + length);
                let (size, stream) = bucket.get(&key, range).await?;
                if size != self.size {
                    return Err(StorageError::Io(io::Error::other(format!(
                        "the stored MP3 has {size} bytes, {} were recorded",
                        self.size
                    ))));
                }
                Ok(stream.map(|chunk| chunk.map_err(io::Error::other)).boxed())
            }
        }
    }
}

/// Where an upload's bytes go while it streams in.
enum Sink<'a> {
    File(LocalSource),
    Object(s3::ObjectWriter<'a>),
}

impl Sink<'_> {
    async fn write(&mut self, chunk: Bytes) -> Result<(), ReceiveError> {
        match self {
            Self::File(source) => Ok(source.file.write_all(&chunk).await?),
            Self::Object(writer) => writer.write(chunk).await.map_err(ReceiveError::Storage),
        }
    }

    async fn finish(&mut self) -> Result<(), ReceiveError> {
        match self {
            Self::File(source) => {
                source.file.flush().await?;
                source.file.sync_all().await?;
                Ok(())
            }
            Self::Object(writer) => writer.finish().await.map_err(ReceiveError::Storage),
        }
    }

    async fn discard(&mut self) {
        match self {
            Self::File(source) => {
                let _ = tokio::fs::remove_file(&source.path).await;
            }
            Self::Object(writer) => writer.abort().await,
        }
    }
}

/// A source file being written.
struct LocalSource {
    file: tokio::fs::File,
    path: PathBuf,
}

/// `AUDIO_STORAGE_DIR`.
#[derive(Debug, Clone)]
struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    fn open(root: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(root)?;
        Ok(Self {
            root: root.to_owned(),
        })
    }

    fn post_dir(&self, post: Uuid) -> PathBuf {
        self.root.join(post.simple().to_string())
    }

    fn source_path(&self, post: Uuid, upload: Uuid) -> PathBuf {
        self.post_dir(post).join(source_name(upload))
    }

    fn mp3_path(&self, post: Uuid, upload: Uuid) -> PathBuf {
        self.post_dir(post).join(mp3_name(upload))
    }

    fn partial_mp3_path(&self, post: Uuid, upload: Uuid, attempt: i32) -> PathBuf {
        self.post_dir(post)
            .join(format!("{}.{attempt}.part", upload.simple()))
    }

    async fn create_source(&self, post: Uuid, upload: Uuid) -> io::Result<LocalSource> {
        tokio::fs::create_dir_all(self.post_dir(post)).await?;
        let path = self.source_path(post, upload);
        Ok(LocalSource {
            file: tokio::fs::File::create(&path).await?,
            path,
        })
    }

    async fn remove_upload(&self, post: Uuid, upload: Uuid) {
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

    async fn remove_post(&self, post: Uuid) -> io::Result<()> {
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
