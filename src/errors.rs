//! The error policy, in one place.
//!
//! Every handler returns `Result<_, AppError>`. An `AppError` renders as
//! `{"error":{"code","message","trace_id"}}` with the status its variant names:
//!
//! Nothing below the routes knows of it: the domain returns `ValidationError`, the queries and
//! the job queue `db::DbError` (or their own small enums), and the conversions here (or the
//! route, where the answer depends on it) turn them into answers:
//!
//! - bad input → 400 with a specific code; never a 500, whatever the bytes;
//! - `diesel::NotFound`, `DbError::NotFound` → 404;
//! - a Postgres or Redis outage (pool timeout, broken connection) → 503;
//! - anything else → 500 whose message says nothing of the internals. Its cause chain is logged
//!   once, here at the boundary, and nowhere else.

use std::error::Error as StdError;
use std::fmt;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::db::DbError;
use crate::domain::ValidationError;
use crate::telemetry::logging;
use crate::telemetry::propagation;
use crate::telemetry::root_span::ServerFault;

/// `Retry-After` of a 503: outages of Postgres or Redis that a retry can outlast are short
/// (a pool timeout, a restart).
pub const UNAVAILABLE_RETRY_AFTER_S: u64 = 5;

type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Everything a request can fail with.
#[derive(Debug)]
pub enum AppError {
    /// 400: the input is malformed or breaks a rule.
    BadRequest { code: &'static str, message: String },
    /// 401: no valid bearer token (or wrong credentials at login).
    Unauthorized {
        code: &'static str,
        message: &'static str,
    },
    /// 403: authenticated, but not allowed.
    Forbidden(&'static str),
    /// 404: the named thing does not exist.
    NotFound(&'static str),
    /// 405.
    MethodNotAllowed,
    /// 409: a unique value is taken.
    Conflict {
        code: &'static str,
        message: &'static str,
    },
    /// 408: the request body sent nothing for `REQUEST_BODY_IDLE_TIMEOUT_S`; the connection is
    /// closed with the answer.
    RequestTimeout,
    /// 413.
    PayloadTooLarge,
    /// 413: the upload would take the user's stored audio past `AUDIO_QUOTA_BYTES`.
    AudioQuotaExceeded { quota_bytes: u64 },
    /// 415.
    UnsupportedMediaType,
    /// 416: the `Range` asked for lies outside a resource of `size` bytes.
    RangeNotSatisfiable { size: u64 },
    /// 429: a rate limit was reached; `Retry-After` says when to try again.
    TooManyRequests {
        code: &'static str,
        message: &'static str,
        retry_after_s: u64,
    },
    /// 503 `busy`: every password-hashing slot stayed taken for `PASSWORD_HASH_WAIT_MS`.
    Busy { retry_after_s: u64 },
    /// 503: a dependency the request needs is down.
    Unavailable {
        dependency: &'static str,
        source: BoxError,
    },
    /// 500: a real server fault.
    Internal {
        context: &'static str,
        source: BoxError,
    },
}

impl AppError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn internal(context: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Internal {
            context,
            source: source.into(),
        }
    }

    pub fn unavailable(dependency: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Unavailable {
            dependency,
            source: source.into(),
        }
    }

    pub fn unauthorized() -> Self {
        Self::Unauthorized {
            code: "unauthorized",
            message: "a valid bearer token is required",
        }
    }

    /// The machine-readable code of the body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. } => code,
            Self::Unauthorized { code, .. } => code,
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict { code, .. } => code,
            Self::RequestTimeout => "request_timeout",
            Self::PayloadTooLarge => "payload_too_large",
            Self::AudioQuotaExceeded { .. } => "audio_quota_exceeded",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::RangeNotSatisfiable { .. } => "range_not_satisfiable",
            Self::TooManyRequests { code, .. } => code,
            Self::Busy { .. } => "busy",
            Self::Unavailable { .. } => "service_unavailable",
            Self::Internal { .. } => "internal_error",
        }
    }

    /// The `exception.type` of a server fault: the kind, never the message.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unavailable { dependency, .. } => dependency,
            Self::Internal { context, .. } => context,
            _ => self.code(),
        }
    }
}

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadRequest { message, .. } => f.write_str(message),
            Self::Unauthorized { message, .. } => f.write_str(message),
            Self::Forbidden(message) => f.write_str(message),
            Self::NotFound(what) => write!(f, "{what} not found"),
            Self::MethodNotAllowed => f.write_str("method not allowed on this route"),
            Self::Conflict { message, .. } => f.write_str(message),
            Self::RequestTimeout => f.write_str("the request body stopped arriving"),
            Self::PayloadTooLarge => f.write_str("the request body is too large"),
            Self::AudioQuotaExceeded { quota_bytes } => write!(
                f,
                "this upload would take your stored audio past its quota of {quota_bytes} bytes"
            ),
            Self::UnsupportedMediaType => f.write_str("unsupported content type"),
            Self::RangeNotSatisfiable { size } => {
                write!(f, "the range lies outside the {size} bytes of the resource")
            }
            Self::TooManyRequests { message, .. } => f.write_str(message),
            Self::Busy { .. } => {
                f.write_str("the server is busy; try again after Retry-After seconds")
            }
            Self::Unavailable { dependency, .. } => {
                write!(f, "a backing service ({dependency}) is unavailable")
            }
            Self::Internal { .. } => f.write_str("internal server error"),
        }
    }
}

impl StdError for AppError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Unavailable { source, .. } | Self::Internal { source, .. } => Some(&**source),
            _ => None,
        }
    }
}

/// The JSON error envelope.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable, stable: `not_found`, `invalid_limit`, `username_taken`, …
    pub code: &'static str,
    /// For humans; never holds internals.
    pub message: String,
    /// The trace of the request (32 hex), when it is traced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

impl ResponseError for AppError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::PayloadTooLarge | Self::AudioQuotaExceeded { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        // This runs once per failed request, inside the request's span: the one place where
        // server faults are logged.
        if let Self::Unavailable { .. } | Self::Internal { .. } = self {
            slog::error!(logging::logger(), "request failed";
                "error.kind" => self.kind(),
                "error" => %ErrorChain(self),
            );
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
                trace_id: propagation::current_trace_id(),
            },
        };
        let mut response = HttpResponse::build(self.status_code());
        if self.status_code().is_server_error() {
            response.extensions_mut().insert(ServerFault {
                kind: self.kind(),
                message: self.to_string(),
            });
        }
        match self {
            Self::TooManyRequests { retry_after_s, .. } | Self::Busy { retry_after_s } => {
                response.insert_header((header::RETRY_AFTER, retry_after_s.max(&1).to_string()));
            }
            Self::RequestTimeout => {
                // The rest of the body may still come, or never: the connection cannot be
                // read from any further in step with the client.
                response.force_close();
            }
            Self::Unavailable { .. } => {
                response
                    .insert_header((header::RETRY_AFTER, UNAVAILABLE_RETRY_AFTER_S.to_string()));
            }
            Self::RangeNotSatisfiable { size } => {
                // RFC 9110 §15.5.17: the current length, so the client can ask again.
                response.insert_header((header::CONTENT_RANGE, format!("bytes */{size}")));
            }
            _ => {}
        }
        response.json(body)
    }
}

/// Displays an error and its causes: `a: b: c`.
pub struct ErrorChain<'a>(pub &'a (dyn StdError + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Trimmed: Postgres ends its messages with a newline.
        write!(f, "{}", self.0.to_string().trim_end())?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {}", cause.to_string().trim_end())?;
            source = cause.source();
        }
        Ok(())
    }
}

/// A value that broke a rule of the domain: 400 with its code.
impl From<ValidationError> for AppError {
    fn from(err: ValidationError) -> Self {
        AppError::BadRequest {
            code: err.code,
            message: err.message,
        }
    }
}

/// What a database call failed with, as an answer (the policy at the top of this file).
impl From<DbError> for AppError {
    fn from(err: DbError) -> Self {
        match err {
            DbError::NotFound(what) => AppError::NotFound(what),
            DbError::Forbidden(message) => AppError::Forbidden(message),
            DbError::Conflict { code, message } => AppError::Conflict { code, message },
            DbError::InvalidCursor => {
                AppError::bad_request("invalid_cursor", "cursor does not belong to this listing")
            }
            DbError::Unavailable(source) => AppError::unavailable("postgres", source),
            DbError::Task(source) => AppError::internal("database task", source),
            DbError::Query(source) => source.into(),
        }
    }
}

impl From<diesel::result::Error> for AppError {
    fn from(err: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match err {
            Error::NotFound => AppError::NotFound("resource"),
            Error::DatabaseError(
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                _,
            ) => AppError::unavailable("postgres", err),
            other => AppError::internal("database", other),
        }
    }
}

impl From<actix_web::error::JsonPayloadError> for AppError {
    fn from(err: actix_web::error::JsonPayloadError) -> Self {
        use actix_web::error::JsonPayloadError as E;
        match err {
            E::OverflowKnownLength { .. } | E::Overflow { .. } => AppError::PayloadTooLarge,
            E::ContentType => AppError::UnsupportedMediaType,
            E::Deserialize(e) => {
                AppError::bad_request("invalid_body", format!("invalid JSON body: {e}"))
            }
            E::Payload(actix_web::error::PayloadError::Overflow) => AppError::PayloadTooLarge,
            E::Payload(actix_web::error::PayloadError::Io(ref e))
                if e.kind() == std::io::ErrorKind::TimedOut =>
            {
                AppError::RequestTimeout
            }
            other => AppError::bad_request("invalid_body", format!("unreadable body: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_hide_their_cause_from_the_client() {
        let err = AppError::internal("loading post", "relation \"posts\" does not exist");
        assert_eq!(err.to_string(), "internal server error");
        assert_eq!(err.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            ErrorChain(&err).to_string(),
            "internal server error: relation \"posts\" does not exist"
        );
    }

    #[test]
    fn diesel_not_found_is_404() {
        let err: AppError = diesel::result::Error::NotFound.into();
        assert_eq!(err.status_code(), StatusCode::NOT_FOUND);
    }
}
