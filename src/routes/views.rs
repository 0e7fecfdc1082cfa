//! Response views: the JSON shapes of responses (CONTRACT.md §2), built from database rows.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::audio::AudioStatus;
use crate::db::models::{CommentRow, PostAudio, PostWithAuthor, ProfileCounts, UserRow};
use crate::db::queries::Page;

/// The account of the caller, as returned by register and login.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountJson {
    pub id: Uuid,
    pub username: String,
    pub email: String,
    pub created_at: DateTime<Utc>,
}

impl From<UserRow> for AccountJson {
    fn from(u: UserRow) -> Self {
        Self {
            id: u.id,
            username: u.username,
            email: u.email,
            created_at: u.created_at,
        }
    }
}

/// A new session.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuthJson {
    pub user: AccountJson,
    /// Bearer token for the `Authorization` header.
    pub token: String,
}

/// A public profile.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProfileJson {
    pub id: Uuid,
    pub username: String,
    pub created_at: DateTime<Utc>,
    pub followers_count: i64,
    pub following_count: i64,
    pub posts_count: i64,
}

impl ProfileJson {
    pub fn new(user: UserRow, counts: ProfileCounts) -> Self {
        Self {
            id: user.id,
            username: user.username,
            created_at: user.created_at,
            followers_count: counts.followers,
            following_count: counts.following,
            posts_count: counts.posts,
        }
    }
}

/// A user as shown next to their content.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuthorJson {
    pub id: Uuid,
    pub username: String,
}

/// A post.
#[derive(Debug, Serialize, ToSchema)]
pub struct PostJson {
    pub id: Uuid,
    pub author: AuthorJson,
    pub title: String,
    pub description: Option<String>,
    pub bpm: Option<i32>,
    pub musical_key: Option<String>,
    pub daw: Option<String>,
    pub genre: Option<String>,
    pub tags: Vec<String>,
    pub like_count: i64,
    pub comment_count: i64,
    pub created_at: DateTime<Utc>,
    pub audio: AudioJson,
}

/// A post's audio (CONTRACT.md §2, §6). Fields are null until processing knows them.
#[derive(Debug, Serialize, ToSchema)]
pub struct AudioJson {
    pub status: AudioStatus,
    /// Length in milliseconds.
    pub duration_ms: Option<i64>,
    /// Hz, of the upload.
    pub sample_rate: Option<i32>,
    pub channels: Option<i32>,
    /// The upload's container as ffprobe names it: `wav`, `flac`, `mp3`, `ogg`, `aiff`, …
    pub source_format: Option<String>,
    /// 200 absolute peak levels, 0.0–1.0, evenly over the whole audio.
    #[schema(min_items = 200, max_items = 200)]
    pub waveform: Option<Vec<f32>>,
    /// Why processing failed, in words for the uploader (`failed` only).
    pub error: Option<String>,
}

impl AudioJson {
    /// The state right after an upload.
    pub fn pending() -> Self {
        Self {
            status: AudioStatus::Pending,
            duration_ms: None,
            sample_rate: None,
            channels: None,
            source_format: None,
            waveform: None,
            error: None,
        }
    }
}

impl From<PostAudio> for AudioJson {
    fn from(a: PostAudio) -> Self {
        Self {
            status: AudioStatus::from_stored(&a.status),
            duration_ms: a.duration_ms,
            sample_rate: a.sample_rate,
            channels: a.channels,
            source_format: a.source_format,
            waveform: a
                .waveform
                .map(|w| w.into_iter().map(|p| p.unwrap_or(0.0)).collect()),
            error: a.error,
        }
    }
}

/// The answer to an upload: processing has been queued.
#[derive(Debug, Serialize, ToSchema)]
pub struct AudioUploadJson {
    pub post_id: Uuid,
    pub audio: AudioJson,
}

impl From<PostWithAuthor> for PostJson {
    fn from((p, username): PostWithAuthor) -> Self {
        Self {
            id: p.id,
            author: AuthorJson {
                id: p.author_id,
                username,
            },
            title: p.title,
            description: p.description,
            bpm: p.bpm,
            musical_key: p.musical_key,
            daw: p.daw,
            genre: p.genre,
            tags: p.tags.into_iter().flatten().collect(),
            like_count: p.like_count,
            comment_count: p.comment_count,
            created_at: p.created_at,
            audio: AudioJson::from(p.audio),
        }
    }
}

/// A comment.
#[derive(Debug, Serialize, ToSchema)]
pub struct CommentJson {
    pub id: Uuid,
    pub post_id: Uuid,
    pub author: AuthorJson,
    pub body: String,
    pub created_at: DateTime<Utc>,
}

impl From<(CommentRow, String)> for CommentJson {
    fn from((c, username): (CommentRow, String)) -> Self {
        Self {
            id: c.id,
            post_id: c.post_id,
            author: AuthorJson {
                id: c.author_id,
                username,
            },
            body: c.body,
            created_at: c.created_at,
        }
    }
}

/// A page of a listing; `next_cursor` is null on the last page.
#[derive(Debug, Serialize, ToSchema)]
pub struct PageJson<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> PageJson<T> {
    pub fn from_page<R>(page: Page<R>) -> Self
    where
        T: From<R>,
    {
        Self {
            next_cursor: page.next.map(|c| c.encode()),
            items: page.items.into_iter().map(T::from).collect(),
        }
    }
}

/// A page of the unified feed, with the feed it came from (`recommended` falls back to
/// `trending` when the recommender cannot answer).
#[derive(Debug, Serialize, ToSchema)]
pub struct FeedJson {
    pub items: Vec<PostJson>,
    pub next_cursor: Option<String>,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// A page of search results: posts best first, `next_cursor` (null on the last page) for the
/// next page of posts; matching users on the first page only (empty on later pages).
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchJson {
    pub posts: Vec<PostJson>,
    pub users: Vec<AuthorJson>,
    pub next_cursor: Option<String>,
}
