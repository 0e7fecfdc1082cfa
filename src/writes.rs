//! The writes that change what a feed shows, each with its feed change.
//!
//! A cached feed page stays fresh until a write it depends on is stamped (`cache::feed`). So
//! every such write must stamp its change, and here is where it does: a handler calls one of
//! these and cannot forget it (before, ten call sites each had to remember). Likes and follows
//! are one shape with a [`Toggle`].
//!
//! ```text
//!  route ─▶ FeedWrites::like(user, post, On) ─▶ Postgres: posts::like ─▶ feeds.changed(user, ByWriter)
//! ```
//!
//! The audio upload and the worker's end of a job stamp theirs in `audio/` (`upload.rs`,
//! `worker.rs`), where those writes are done.

use uuid::Uuid;

use crate::audio::AudioStorage;
use crate::cache::feed::{FeedCache, FeedChange};
use crate::db::models::PostWithAuthor;
use crate::db::queries::comments::{self, CommentWithAuthor};
use crate::db::queries::{posts, users};
use crate::db::{Db, DbError};
use crate::domain::{PostDraft, Username};
use crate::errors::ErrorChain;
use crate::telemetry::logging;

/// On or off: a like, a follow. Both are idempotent either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toggle {
    On,
    Off,
}

/// Why a follow was not written.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("you cannot follow yourself")]
    Yourself,
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The feed-changing writes (module doc).
#[derive(Clone)]
pub struct FeedWrites {
    db: Db,
    feeds: FeedCache,
    /// A deleted post's audio goes with it.
    storage: AudioStorage,
}

impl FeedWrites {
    pub fn new(db: Db, feeds: FeedCache, storage: AudioStorage) -> Self {
        Self { db, feeds, storage }
    }

    /// Publishes a post: stale at once for its author's pages.
    pub async fn create_post(
        &self,
        author: Uuid,
        draft: PostDraft,
    ) -> Result<PostWithAuthor, DbError> {
        let post = self
            .db
            .run(move |conn| posts::insert(conn, author, &draft))
            .await?;
        self.feeds.changed(author, FeedChange::NewPost).await;
        Ok(post)
    }

    /// Deletes a post (its author only) and its audio: every page is stale.
    pub async fn delete_post(&self, post: Uuid, requester: Uuid) -> Result<(), DbError> {
        self.db
            .run(move |conn| posts::delete(conn, post, requester))
            .await?;
        // The rows are gone (jobs with them); a worker still busy with one finds it lost.
        if let Err(err) = self.storage.remove_post(post).await {
            slog::warn!(logging::logger(), "could not remove a deleted post's audio";
                "post.id" => %post, "error" => %ErrorChain(&err));
        }
        self.feeds.changed(requester, FeedChange::DeletedPost).await;
        Ok(())
    }

    /// Likes or unlikes a post.
    pub async fn like(&self, user: Uuid, post: Uuid, toggle: Toggle) -> Result<(), DbError> {
        self.db
            .run(move |conn| match toggle {
                Toggle::On => posts::like(conn, post, user),
                Toggle::Off => posts::unlike(conn, post, user),
            })
            .await?;
        self.feeds.changed(user, FeedChange::ByWriter).await;
        Ok(())
    }

    /// Follows or unfollows the user named `followee`.
    pub async fn follow(
        &self,
        me: Uuid,
        followee: Username,
        toggle: Toggle,
    ) -> Result<(), FollowError> {
        self.db
            .run(move |conn| {
                let followee = users::id_by_username(conn, followee.as_str())?;
                match toggle {
                    Toggle::On if followee == me => Err(FollowError::Yourself),
                    Toggle::On => Ok(users::follow(conn, me, followee)?),
                    Toggle::Off => Ok(users::unfollow(conn, me, followee)?),
                }
            })
            .await?;
        self.feeds.changed(me, FeedChange::ByWriter).await;
        Ok(())
    }

    /// Comments on a post.
    pub async fn comment(
        &self,
        post: Uuid,
        author: Uuid,
        text: String,
    ) -> Result<CommentWithAuthor, DbError> {
        let comment = self
            .db
            .run(move |conn| comments::insert(conn, post, author, &text))
            .await?;
        self.feeds.changed(author, FeedChange::ByWriter).await;
        Ok(comment)
    }
}
