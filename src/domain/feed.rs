use std::fmt;
use std::str::FromStr;

use super::{Cursor, ValidationError};

/// Which feed `GET /api/v1/feed/unified` serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FeedKind {
    /// Posts of the people the caller follows, and the caller's own. Needs a token.
    Timeline,
    /// Everyone's posts, newest first.
    Global,
    /// The most liked posts of the recent window.
    Trending,
    /// What the recommender suggests for the caller; `Trending` when it cannot answer.
    Recommended,
}

impl FeedKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeline => "timeline",
            Self::Global => "global",
            Self::Trending => "trending",
            Self::Recommended => "recommended",
        }
    }

    /// Whether `cursor` is one this feed's ordering writes. One `cursor` parameter serves all
    /// four feeds, so a cursor of another ordering (a client that switched `type` mid-way)
    /// starts this feed from its first page instead of failing, as `recommended` falling back
    /// to `trending` always has.
    pub fn accepts(self, cursor: &Cursor) -> bool {
        match self {
            Self::Timeline | Self::Global => matches!(cursor, Cursor::Time { .. }),
            Self::Trending => matches!(cursor, Cursor::Likes { .. }),
            Self::Recommended => matches!(cursor, Cursor::Offset(_) | Cursor::Likes { .. }),
        }
    }

    /// The `type` values, in the order the document lists them.
    pub const ALL: [FeedKind; 4] = [
        Self::Timeline,
        Self::Global,
        Self::Trending,
        Self::Recommended,
    ];

    /// Whether the feed is per user and so needs a token.
    pub fn needs_user(self) -> bool {
        matches!(self, Self::Timeline | Self::Recommended)
    }
}

impl FromStr for FeedKind {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "timeline" => Ok(Self::Timeline),
            "global" => Ok(Self::Global),
            "trending" => Ok(Self::Trending),
            "recommended" => Ok(Self::Recommended),
            _ => Err(ValidationError::new(
                "invalid_feed_type",
                "type must be one of timeline, global, trending, recommended",
            )),
        }
    }
}

impl fmt::Display for FeedKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
