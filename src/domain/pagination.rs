use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::ValidationError;

/// Page size: 1–100, default 20.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(u32);

impl Limit {
    pub const DEFAULT: Limit = Limit(20);
    pub const MAX: u32 = 100;

    /// Parses the raw query value, so `limit=abc` is a clean 400 rather than a framework error.
    pub fn parse(raw: Option<&str>) -> Result<Self, ValidationError> {
        let Some(raw) = raw else {
            return Ok(Self::DEFAULT);
        };
        match raw.trim().parse::<u32>() {
            Ok(n) if (1..=Self::MAX).contains(&n) => Ok(Self(n)),
            _ => Err(ValidationError::new(
                "invalid_limit",
                "limit must be an integer from 1 to 100",
            )),
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }

    /// Rows to fetch: one more than the page, to know whether a next page exists.
    pub fn probe(self) -> i64 {
        i64::from(self.0) + 1
    }
}

/// Where the next page starts. Opaque to clients (base64url); each feed ordering has its own
/// kind, and a cursor of the wrong kind is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// Keyset on `(created_at, id)`: posts by time (either direction), comments.
    Time { at: DateTime<Utc>, id: Uuid },
    /// Keyset on `(like_count, created_at, id)`: trending.
    Likes {
        likes: i64,
        at: DateTime<Utc>,
        id: Uuid,
    },
    /// An offset into the recommender's list.
    Offset(u32),
}

impl Cursor {
    pub fn encode(&self) -> String {
        let raw = match self {
            Cursor::Time { at, id } => format!("t.{}.{}", at.timestamp_micros(), id.simple()),
            Cursor::Likes { likes, at, id } => {
                format!("l.{likes}.{}.{}", at.timestamp_micros(), id.simple())
            }
            Cursor::Offset(n) => format!("o.{n}"),
        };
        URL_SAFE_NO_PAD.encode(raw)
    }

    pub fn decode(raw: &str) -> Result<Self, ValidationError> {
        Self::try_decode(raw.trim())
            .ok_or_else(|| ValidationError::new("invalid_cursor", "cursor is not valid"))
    }

    /// Parses an optional query value.
    pub fn parse(raw: Option<&str>) -> Result<Option<Self>, ValidationError> {
        raw.map(Self::decode).transpose()
    }

    fn try_decode(raw: &str) -> Option<Self> {
        if raw.len() > 128 {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(raw).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let parts: Vec<&str> = text.split('.').collect();
        let time = |micros: &str| DateTime::from_timestamp_micros(micros.parse().ok()?);
        match parts.as_slice() {
            ["t", micros, id] => Some(Cursor::Time {
                at: time(micros)?,
                id: Uuid::try_parse(id).ok()?,
            }),
            ["l", likes, micros, id] => Some(Cursor::Likes {
                likes: likes.parse().ok()?,
                at: time(micros)?,
                id: Uuid::try_parse(id).ok()?,
            }),
            ["o", n] => Some(Cursor::Offset(n.parse().ok()?)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert_eq!(Limit::parse(None).unwrap().get(), 20);
        assert_eq!(Limit::parse(Some("100")).unwrap().get(), 100);
        for bad in ["0", "101", "-1", "abc", "1.5", ""] {
            assert!(Limit::parse(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn cursors_round_trip() {
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let id = Uuid::new_v4();
        for cursor in [
            Cursor::Time { at, id },
            Cursor::Likes { likes: 42, at, id },
            Cursor::Offset(60),
        ] {
            assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
        }
        for bad in ["", "!!", "dA", "eC4xLjI", &"A".repeat(500)] {
            assert!(Cursor::decode(bad).is_err(), "{bad}");
        }
    }
}
