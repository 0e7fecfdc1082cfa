//! The feed orderings. All newest-first listings share the `(created_at, id)` keyset; trending
//! pages on `(like_count, created_at, id)` within its window.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use super::Page;
use super::posts::invalid_cursor;
use crate::db::models::{PostRow, PostWithAuthor};
use crate::db::schema::{follows, posts, users};
use crate::domain::{Cursor, Limit};
use crate::errors::AppError;

/// Whose posts a newest-first listing shows.
#[derive(Debug, Clone, Copy)]
pub enum Authors {
    /// Everyone's: the global feed.
    Everyone,
    /// The people this user follows, and the user: the timeline.
    FollowedBy(Uuid),
    /// This user's only: their profile's posts.
    Only(Uuid),
}

/// Posts of `authors`, newest first.
pub fn newest_first(
    conn: &mut PgConnection,
    authors: Authors,
    cursor: Option<Cursor>,
    limit: Limit,
) -> Result<Page<PostWithAuthor>, AppError> {
    let mut query = posts::table
        .inner_join(users::table)
        .select((PostRow::as_select(), users::username))
        .into_boxed();
    match authors {
        Authors::Everyone => {}
        Authors::FollowedBy(user_id) => {
            let followed = follows::table
                .filter(follows::follower_id.eq(user_id))
                .select(follows::followee_id);
            query = query.filter(
                posts::author_id
                    .eq(user_id)
                    .or(posts::author_id.eq_any(followed)),
            );
        }
        Authors::Only(user_id) => query = query.filter(posts::author_id.eq(user_id)),
    }
    match cursor {
        None => {}
        Some(Cursor::Time { at, id }) => {
            query = query.filter(
                posts::created_at
                    .lt(at)
                    .or(posts::created_at.eq(at).and(posts::id.lt(id))),
            );
        }
        Some(_) => return Err(invalid_cursor()),
    }
    let rows = query
        .order((posts::created_at.desc(), posts::id.desc()))
        .limit(limit.probe())
        .load(conn)?;
    Ok(Page::from_probe(rows, limit, |(p, _)| Cursor::Time {
        at: p.created_at,
        id: p.id,
    }))
}

/// The most liked posts created since `since`; ties broken by recency.
pub fn trending(
    conn: &mut PgConnection,
    since: DateTime<Utc>,
    cursor: Option<Cursor>,
    limit: Limit,
) -> Result<Page<PostWithAuthor>, AppError> {
    let mut query = posts::table
        .inner_join(users::table)
        .filter(posts::created_at.gt(since))
        .select((PostRow::as_select(), users::username))
        .into_boxed();
    match cursor {
        None => {}
        Some(Cursor::Likes { likes, at, id }) => {
            query = query.filter(
                posts::like_count
                    .lt(likes)
                    .or(posts::like_count.eq(likes).and(
                        posts::created_at
                            .lt(at)
                            .or(posts::created_at.eq(at).and(posts::id.lt(id))),
                    )),
            );
        }
        Some(_) => return Err(invalid_cursor()),
    }
    let rows = query
        .order((
            posts::like_count.desc(),
            posts::created_at.desc(),
            posts::id.desc(),
        ))
        .limit(limit.probe())
        .load(conn)?;
    Ok(Page::from_probe(rows, limit, |(p, _)| Cursor::Likes {
        likes: p.like_count,
        at: p.created_at,
        id: p.id,
    }))
}

/// The posts with these ids, in the order given; ids without a post are skipped.
pub fn by_ids(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<PostWithAuthor>, AppError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut rows: Vec<PostWithAuthor> = posts::table
        .inner_join(users::table)
        .filter(posts::id.eq_any(ids))
        .select((PostRow::as_select(), users::username))
        .load(conn)?;
    rows.sort_by_key(|(p, _)| ids.iter().position(|id| *id == p.id));
    Ok(rows)
}
