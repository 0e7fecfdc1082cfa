//! Domain values, parsed once at the edge. After parsing, nothing handles raw strings: a
//! `Username` is valid by construction, a `Limit` is within 1–100, a `Cursor` decodes.

pub mod credentials;
mod feed;
mod pagination;
mod post;
mod search;
mod user;

pub use feed::FeedKind;
pub use pagination::{Cursor, Limit};
pub use post::{CommentBody, PostDraft, Tags};
pub use search::SearchQuery;
pub use user::{Email, Password, Username};

use crate::errors::AppError;

/// A value that breaks a rule: becomes a 400 with `code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    pub code: &'static str,
    pub message: String,
}

impl ValidationError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ValidationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ValidationError {}

impl From<ValidationError> for AppError {
    fn from(err: ValidationError) -> Self {
        AppError::BadRequest {
            code: err.code,
            message: err.message,
        }
    }
}

/// Checks a free-text field: length in characters within `min..=max` after trimming, and no
/// NUL or other control characters except newlines and tabs (Postgres rejects NUL in text,
/// which would otherwise surface as a 500).
pub(crate) fn text_field(
    value: &str,
    field: &'static str,
    code: &'static str,
    min: usize,
    max: usize,
    multiline: bool,
) -> Result<String, ValidationError> {
    let trimmed = value.trim();
    let chars = trimmed.chars().count();
    if chars < min || chars > max {
        return Err(ValidationError::new(
            code,
            if min > 0 {
                format!("{field} must be {min} to {max} characters")
            } else {
                format!("{field} must be at most {max} characters")
            },
        ));
    }
    let allowed = |c: char| !c.is_control() || (multiline && matches!(c, '\n' | '\r' | '\t'));
    if !trimmed.chars().all(allowed) {
        return Err(ValidationError::new(
            code,
            format!("{field} contains control characters"),
        ));
    }
    Ok(trimmed.to_owned())
}
