//! Domain values, parsed once at the edge. After parsing, nothing handles raw strings: a
//! `Username` is valid by construction, a `Limit` is within 1–100, a `Cursor` decodes.

pub mod credentials;
mod feed;
mod pagination;
mod post;
pub mod rules;
mod search;
mod user;

pub use feed::FeedKind;
pub use pagination::{Cursor, Limit};
pub use post::{CommentBody, PostDraft, Tags};
pub use search::{SearchQuery, SearchStrategy, SearchWords};
pub use user::{Email, Password, Username};

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

/// Checks a free-text field against its rule (see [`rules::TextRule`]) and returns it trimmed.
pub(crate) fn text_field(
    value: &str,
    field: &'static str,
    code: &'static str,
    rule: rules::TextRule,
) -> Result<String, ValidationError> {
    let trimmed = value.trim();
    let (min, max) = (rule.min_chars, rule.max_chars);
    if trimmed.chars().count() < min || value.chars().count() > max {
        return Err(ValidationError::new(
            code,
            if min > 0 {
                format!("{field} must be {min} to {max} characters")
            } else {
                format!("{field} must be at most {max} characters")
            },
        ));
    }
    if !trimmed.chars().all(|c| rule.allows(c)) {
        return Err(ValidationError::new(
            code,
            format!("{field} contains control characters"),
        ));
    }
    Ok(trimmed.to_owned())
}
