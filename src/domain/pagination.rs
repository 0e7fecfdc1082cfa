use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{SearchStrategy, ValidationError, rules};

/// Page size: 1–100, default 20.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(u32);

impl Limit {
    pub const DEFAULT: Limit = Limit(rules::DEFAULT_LIMIT);

    /// Parses the raw query value, so `limit=abc` is a clean 400 rather than a framework error.
    pub fn parse(raw: Option<&str>) -> Result<Self, ValidationError> {
        let Some(raw) = raw else {
            return Ok(Self::DEFAULT);
        };
        // Digits only: `str::parse` would also take `+5`, which the document's integer is not.
        match digits(raw, 10).and_then(|d| d.parse::<u32>().ok()) {
            Some(n) if rules::LIMIT.contains(i64::from(n)) => Ok(Self(n)),
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

/// Where the next page starts. Opaque to clients, but plain text whose every valid spelling a
/// regular expression states exactly (the `CURSOR_*` patterns, written into the OpenAPI
/// document): `t.{micros}.{id}`, `l.{likes}.{micros}.{id}`, `o.{offset}` or
/// `s.{strategy}.{query}.{score}.{id}`, with the id as 32 lowercase hex digits. Each ordering has
/// its own kind.
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
    /// Keyset on `(score, id)` of one search: the strategy that ranked its first page, the
    /// query's fingerprint, and the score as the bits of an `f64` (written as 16 hex digits, so
    /// that it round-trips exactly: the next page's bound is the very value Postgres computed).
    Search {
        strategy: SearchStrategy,
        query: u32,
        score_bits: u64,
        id: Uuid,
    },
}

impl Cursor {
    pub fn encode(&self) -> String {
        match self {
            Cursor::Time { at, id } => format!("t.{}.{}", at.timestamp_micros(), id.simple()),
            Cursor::Likes { likes, at, id } => {
                format!("l.{likes}.{}.{}", at.timestamp_micros(), id.simple())
            }
            Cursor::Offset(n) => format!("o.{n}"),
            Cursor::Search {
                strategy,
                query,
                score_bits,
                id,
            } => format!(
                "s.{}.{query:08x}.{score_bits:016x}.{}",
                strategy.letter(),
                id.simple()
            ),
        }
    }

    pub fn decode(raw: &str) -> Result<Self, ValidationError> {
        Self::try_decode(raw)
            .ok_or_else(|| ValidationError::new("invalid_cursor", "cursor is not valid"))
    }

    /// Parses an optional query value.
    pub fn parse(raw: Option<&str>) -> Result<Option<Self>, ValidationError> {
        raw.map(Self::decode).transpose()
    }

    fn try_decode(raw: &str) -> Option<Self> {
        if raw.len() > rules::CURSOR_MAX_CHARS {
            return None;
        }
        let parts: Vec<&str> = raw.split('.').collect();
        match parts.as_slice() {
            ["t", micros, id] => Some(Cursor::Time {
                at: time(micros)?,
                id: hex_id(id)?,
            }),
            ["l", likes, micros, id] => Some(Cursor::Likes {
                likes: digits(likes, 18)?.parse().ok()?,
                at: time(micros)?,
                id: hex_id(id)?,
            }),
            ["o", n] => Some(Cursor::Offset(digits(n, 9)?.parse().ok()?)),
            ["s", strategy, query, score, id] => Some(Cursor::Search {
                strategy: SearchStrategy::from_letter(strategy)?,
                query: u32::from_str_radix(lower_hex(query, 8)?, 16).ok()?,
                score_bits: u64::from_str_radix(lower_hex(score, 16)?, 16).ok()?,
                id: hex_id(id)?,
            }),
            _ => None,
        }
    }
}

/// `s` if it is 1 to `max` ASCII digits (so that it parses, and nothing else does: no sign, no
/// space, which `str::parse` would take).
fn digits(s: &str, max: usize) -> Option<&str> {
    (!s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit())).then_some(s)
}

fn time(s: &str) -> Option<DateTime<Utc>> {
    let (negative, magnitude) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let micros: i64 = digits(magnitude, 16)?.parse().ok()?;
    DateTime::from_timestamp_micros(if negative { -micros } else { micros })
}

/// `s` if it is exactly `len` lowercase hex digits (no sign, no `0x`, which parsers would take).
fn lower_hex(s: &str, len: usize) -> Option<&str> {
    let well_formed = s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    well_formed.then_some(s)
}

/// A UUID as `Uuid::simple` writes it; other spellings are no cursor of ours.
fn hex_id(s: &str) -> Option<Uuid> {
    Uuid::try_parse(lower_hex(s, 32)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert_eq!(Limit::parse(None).unwrap().get(), 20);
        assert_eq!(Limit::parse(Some("100")).unwrap().get(), 100);
        for bad in ["0", "101", "-1", "abc", "1.5", "", "+5", " 5"] {
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
            Cursor::Search {
                strategy: SearchStrategy::Trigram,
                query: 7,
                score_bits: (-1.5f64).to_bits(),
                id,
            },
        ] {
            assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
        }
        for bad in [
            "",
            "!!",
            "t.1",
            "o.+1",
            "o. 1",
            "x.1.2",
            &format!("s.x.00000000.0000000000000000.{}", id.simple()),
            &format!("s.f.0000000.0000000000000000.{}", id.simple()),
            &format!("s.f.00000000.000000000000000G.{}", id.simple()),
            &format!("t.1.{}", id.simple().to_string().to_uppercase()),
            &format!("t.12345678901234567.{}", id.simple()),
            &"A".repeat(500),
        ] {
            assert!(Cursor::decode(bad).is_err(), "{bad}");
        }
    }
}
