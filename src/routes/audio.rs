//! A post's audio: the author uploads it (processed in the background, CONTRACT.md §6), anyone
//! downloads the processed MP3, with `Range`.
//!
//! The upload takes the raw `web::Payload` stream: the app's 256 KiB body limit applies to the
//! buffering extractors only, and this body is written to storage chunk by chunk, with
//! `AUDIO_MAX_BYTES` checked on every chunk. The download streams the stored MP3 (a ranged read
//! of the file or object) through the service.

use actix_web::body::SizedStream;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use utoipa::ToSchema;

use super::auth::Authenticated;
use super::views::{AudioJson, AudioUploadJson};
use super::{State, parse_id};
use crate::audio::AudioStatus;
use crate::audio::jobs::{self, UploadRefusal};
use crate::audio::storage::{RangeRequest, ReceiveError, StorageError, drain, parse_range};
use crate::audio::upload::{UploadError, UploadRequest};
use crate::errors::{AppError, ErrorBody};
use crate::telemetry::metrics::{self, Refusal};

/// The bytes of an audio file.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct AudioFile(pub Vec<u8>);

/// Uploads the audio of a post (its author only). The file is stored and processed in the
/// background: the post's `audio.status` goes `pending` → `processing` → `ready` or `failed`.
/// A new upload replaces the previous one.
#[utoipa::path(
    put,
    path = "/api/v1/posts/{id}/audio",
    tag = "audio",
    params(("id" = uuid::Uuid, Path, description = "Post id")),
    request_body(
        description = "The raw audio file, at most AUDIO_MAX_BYTES (default 50 MiB)",
        content(
            (AudioFile = "audio/wav"),
            (AudioFile = "audio/x-wav"),
            (AudioFile = "audio/mpeg"),
            (AudioFile = "audio/flac"),
            (AudioFile = "audio/ogg"),
            (AudioFile = "audio/aiff"),
        )
    ),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Stored; processing is queued", body = AudioUploadJson),
        (status = 400, description = "The upload was interrupted", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Not the author", body = ErrorBody),
        (status = 404, description = "No such post", body = ErrorBody),
        (status = 408, description = "The body stopped arriving for REQUEST_BODY_IDLE_TIMEOUT_S; \
            the partial upload is removed and the connection closed", body = ErrorBody),
        (status = 413, description = "Larger than AUDIO_MAX_BYTES (`payload_too_large`), or past \
            the user's AUDIO_QUOTA_BYTES of stored audio (`audio_quota_exceeded`)", body = ErrorBody),
        (status = 415, description = "Not one of the accepted audio types", body = ErrorBody),
        (status = 429, description = "`audio_pending_limit`: AUDIO_PENDING_PER_USER uploads of this \
            user are still being processed; try again after `Retry-After`", body = ErrorBody),
        (status = 503, description = "Object storage (AUDIO_STORAGE_URL) is unreachable; nothing \
            was stored; try again after `Retry-After`", body = ErrorBody),
    )
)]
pub async fn upload(
    state: State,
    me: Authenticated,
    req: HttpRequest,
    path: web::Path<String>,
    mut body: web::Payload,
) -> Result<HttpResponse, AppError> {
    let post_id = match parse_id(&path, "post") {
        Ok(id) => id,
        Err(err) => {
            // As for every refusal before the body is read: the client sees the answer, not a
            // reset connection.
            drain(&mut body).await;
            return Err(err);
        }
    };
    let media_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    let declared_len = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let request = UploadRequest {
        requester: me.id,
        post_id,
        media_type,
        declared_len,
    };
    state
        .audio
        .upload(&state.db, &state.feeds, request, body)
        .await
        .map_err(upload_refused)?;
    Ok(HttpResponse::Accepted().json(AudioUploadJson {
        post_id,
        audio: AudioJson::pending(),
    }))
}

/// The answer to an upload that was not queued; the limits' refusals are counted.
fn upload_refused(err: UploadError) -> AppError {
    match err {
        UploadError::UnsupportedType => AppError::UnsupportedMediaType,
        UploadError::TooLarge | UploadError::Receive(ReceiveError::TooLarge(_)) => {
            AppError::PayloadTooLarge
        }
        UploadError::QuotaExceeded { quota_bytes } => refused(UploadRefusal::Quota { quota_bytes }),
        UploadError::Refused(refusal) => refused(refusal),
        UploadError::Receive(ReceiveError::Stalled) => AppError::RequestTimeout,
        UploadError::Receive(ReceiveError::Interrupted(why)) => AppError::bad_request(
            "upload_interrupted",
            format!("the upload was interrupted: {why}"),
        ),
        UploadError::Receive(ReceiveError::Io(e)) => AppError::internal("storing the upload", e),
        UploadError::Receive(ReceiveError::Storage(e)) => {
            AppError::unavailable("object_storage", e)
        }
        UploadError::Db(err) => err.into(),
    }
}

/// The processed audio of a post, as MP3, with `Range` support.
#[utoipa::path(
    get,
    path = "/api/v1/posts/{id}/audio",
    tag = "audio",
    params(
        ("id" = uuid::Uuid, Path, description = "Post id"),
        ("Range" = Option<String>, Header, description = "One byte range, e.g. `bytes=0-1023`; several ranges are answered with the whole file"),
        ("If-Range" = Option<String>, Header, description = "Serve the range only if the ETag still matches"),
        ("If-None-Match" = Option<String>, Header, description = "ETag of a copy the client has"),
    ),
    responses(
        (status = 200, description = "The whole MP3", body = AudioFile, content_type = "audio/mpeg",
            headers(
                ("X-Content-Type-Options" = String, description = "`nosniff`"),
                ("ETag" = String, description = "Strong validator of this upload's audio"),
                ("Accept-Ranges" = String, description = "`bytes`"),
                ("Content-Length" = i64, description = "Size in bytes"),
            )),
        (status = 206, description = "The requested range", body = AudioFile, content_type = "audio/mpeg",
            headers(
                ("X-Content-Type-Options" = String, description = "`nosniff`"),
                ("Content-Range" = String, description = "`bytes first-last/size`"),
                ("ETag" = String, description = "Strong validator of this upload's audio"),
                ("Accept-Ranges" = String, description = "`bytes`"),
                ("Content-Length" = i64, description = "Size of the range in bytes"),
            )),
        (status = 304, description = "The client's copy (If-None-Match) is current",
            headers(("ETag" = String, description = "Strong validator of this upload's audio"))),
        (status = 404, description = "No such post, or it has no audio", body = ErrorBody),
        (status = 409, description = "The audio is not ready (pending, processing or failed)", body = ErrorBody),
        (status = 416, description = "The range lies outside the file", body = ErrorBody,
            headers(("Content-Range" = String, description = "`bytes */size`"))),
        (status = 503, description = "Object storage (AUDIO_STORAGE_URL) is unreachable; try again \
            after `Retry-After`", body = ErrorBody),
    )
)]
pub async fn download(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let post_id = parse_id(&path, "post")?;
    let audio = state
        .db
        .run(move |conn| jobs::post_audio(conn, post_id))
        .await?;
    let upload = match (AudioStatus::from_stored(&audio.status), audio.upload_id) {
        (AudioStatus::Ready, Some(upload)) => upload,
        (AudioStatus::None, _) | (_, None) => return Err(AppError::NotFound("audio")),
        (AudioStatus::Failed, _) => {
            return Err(AppError::Conflict {
                code: "audio_not_ready",
                message: "the audio could not be processed",
            });
        }
        _ => {
            return Err(AppError::Conflict {
                code: "audio_not_ready",
                message: "the audio is still being processed",
            });
        }
    };

    let recorded = audio.bytes.and_then(|b| u64::try_from(b).ok());
    let mp3 = match state
        .audio
        .storage
        .open_mp3(post_id, upload, recorded)
        .await
    {
        Ok(mp3) => mp3,
        // Replaced or deleted since the row was read.
        Err(StorageError::NotFound) => return Err(AppError::NotFound("audio")),
        Err(e) => return Err(storage_fault(e)),
    };
    let size = mp3.size;
    // An upload's MP3 never changes: its id is a strong validator.
    let etag = format!("\"{}\"", upload.simple());
    let header_str = |name| req.headers().get(name).and_then(|v| v.to_str().ok());

    if header_str(header::IF_NONE_MATCH)
        .is_some_and(|v| v.trim() == "*" || v.split(',').any(|t| t.trim() == etag))
    {
        return Ok(HttpResponse::NotModified()
            .insert_header((header::ETAG, etag))
            .finish());
    }
    let range = match header_str(header::IF_RANGE) {
        Some(validator) if validator.trim() != etag => None,
        _ => header_str(header::RANGE),
    };

    let mut response;
    let (start, length) = match parse_range(range, size) {
        RangeRequest::Full => {
            response = HttpResponse::Ok();
            (0, size)
        }
        RangeRequest::Partial { start, end } => {
            response = HttpResponse::PartialContent();
            response.insert_header((header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}")));
            (start, end - start + 1)
        }
        RangeRequest::Unsatisfiable => return Err(AppError::RangeNotSatisfiable { size }),
    };
    let body = match mp3.read(start, length).await {
        Ok(body) => body,
        Err(StorageError::NotFound) => return Err(AppError::NotFound("audio")),
        Err(e) => return Err(storage_fault(e)),
    };
    Ok(response
        .content_type("audio/mpeg")
        // Served as what it is, never sniffed as something a browser would run.
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header((header::ETAG, etag))
        .body(SizedStream::new(length, body)))
}

/// Object storage out of reach is an outage (503, retry later); a local disk's error is a fault.
/// The answer to an upload refused by a per-user limit, counted.
fn refused(refusal: UploadRefusal) -> AppError {
    match refusal {
        UploadRefusal::Pending => {
            metrics::request_refused(Refusal::AudioPending);
            AppError::TooManyRequests {
                code: "audio_pending_limit",
                message: "too many uploads are still being processed; try again after Retry-After seconds",
                retry_after_s: jobs::PENDING_RETRY_AFTER_S,
            }
        }
        UploadRefusal::Quota { quota_bytes } => {
            metrics::request_refused(Refusal::AudioQuota);
            AppError::AudioQuotaExceeded { quota_bytes }
        }
    }
}

fn storage_fault(err: StorageError) -> AppError {
    match err {
        StorageError::Object(e) => AppError::unavailable("object_storage", e),
        other => AppError::internal("reading the audio", other),
    }
}
