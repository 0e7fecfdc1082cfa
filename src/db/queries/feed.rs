//! The feed orderings. All newest-first listings share the `(created_at, id)` keyset; trending
//! pages on `(like_count, created_at, id)` within its window.
//!
//! Each is answered through an index, in time that follows its page, not the catalogue:
//!
//! - global and a user's posts: `posts_created_idx` / `posts_author_created_idx`, read for one
//!   page.
//! - the timeline: the newest page of each followed author through `posts_author_created_idx`
//!   (a `LATERAL` join), merged: at most (followed + 1) × page index entries, however old or
//!   quiet the followed accounts are. Walking the global index and filtering by author (the
//!   query this replaced) costs what the page costs only while the followed accounts posted
//!   lately, and the whole catalogue when one quiet account is followed. For someone who follows
//!   so many that the merge would read more than [`RECENT_WINDOW`] entries, the newest
//!   [`RECENT_WINDOW`] posts of everyone are tried first (their followed accounts usually fill
//!   a page there); only when they do not is the merge run too, so that case is bounded by
//!   `RECENT_WINDOW` plus the merge.
//! - trending: the window's posts through `posts_created_idx` (a range scan), sorted by likes.
//!   Its cost follows the window. The index on `like_count` it used to walk started at the most
//!   liked post of all time and skipped every older one, so its cost followed the catalogue
//!   wherever old posts hold the likes; it is gone (migration `indexed_reads`).

use chrono::{DateTime, Utc};
use diesel::dsl::count_star;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Timestamptz, Uuid as SqlUuid};
use uuid::Uuid;

use super::Page;
use super::posts::invalid_cursor;
use crate::db::DbError;
use crate::db::models::{PostRow, PostWithAuthor};
use crate::db::schema::{follows, posts, users};
use crate::domain::{Cursor, Limit};

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
) -> Result<Page<PostWithAuthor>, DbError> {
    let after = match cursor {
        None => None,
        Some(Cursor::Time { at, id }) => Some((at, id)),
        Some(_) => return Err(invalid_cursor()),
    };
    let mut query = posts::table
        .inner_join(users::table)
        .select((PostRow::as_select(), users::username))
        .into_boxed();
    match authors {
        Authors::Everyone => {}
        Authors::FollowedBy(user_id) => return timeline(conn, user_id, after, limit),
        Authors::Only(user_id) => query = query.filter(posts::author_id.eq(user_id)),
    }
    if let Some((at, id)) = after {
        query = query.filter(
            posts::created_at
                .lt(at)
                .or(posts::created_at.eq(at).and(posts::id.lt(id))),
        );
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

/// How many of everyone's newest posts a heavy follower's timeline looks through first.
pub const RECENT_WINDOW: i64 = 2048;

/// The timeline of `$1` (their own posts and those of the accounts they follow) below the
/// keyset bound `($2, $3)` (null on a first page), newest first, at most `$4`: the newest `$4`
/// of each author through `posts_author_created_idx`, merged.
pub const TIMELINE_MERGE_SQL: &str = "SELECT p.id, p.created_at FROM posts p \
    WHERE p.id = ANY (ARRAY( \
        SELECT n.id FROM (SELECT $1::uuid AS author_id \
                          UNION ALL SELECT f.followee_id FROM follows f WHERE f.follower_id = $1::uuid) a \
        CROSS JOIN LATERAL ( \
            SELECT q.id, q.created_at FROM posts q \
            WHERE q.author_id = a.author_id \
              AND (q.created_at, q.id) < (coalesce($2::timestamptz, 'infinity'::timestamptz), coalesce($3::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid)) \
            ORDER BY q.created_at DESC, q.id DESC LIMIT $4::int8) n \
        ORDER BY n.created_at DESC, n.id DESC LIMIT $4::int8)) \
    ORDER BY p.created_at DESC, p.id DESC";

/// The same page as [`TIMELINE_MERGE_SQL`] when it lies within the newest `$5` posts below the
/// bound: it is the page when it is full.
pub const TIMELINE_RECENT_SQL: &str = "SELECT r.id, r.created_at FROM ( \
        SELECT p.id, p.author_id, p.created_at FROM posts p \
        WHERE (p.created_at, p.id) < (coalesce($2::timestamptz, 'infinity'::timestamptz), coalesce($3::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid)) \
        ORDER BY p.created_at DESC, p.id DESC LIMIT $5::int8) r \
    WHERE r.author_id = $1::uuid OR r.author_id IN (SELECT f.followee_id FROM follows f WHERE f.follower_id = $1::uuid) \
    ORDER BY r.created_at DESC, r.id DESC LIMIT $4::int8";

#[derive(QueryableByName)]
struct TimeKey {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
}

fn timeline(
    conn: &mut PgConnection,
    user_id: Uuid,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: Limit,
) -> Result<Page<PostWithAuthor>, DbError> {
    let query = |sql: &'static str| {
        diesel::sql_query(sql)
            .bind::<SqlUuid, _>(user_id)
            .bind::<Nullable<Timestamptz>, _>(after.map(|(at, _)| at))
            .bind::<Nullable<SqlUuid>, _>(after.map(|(_, id)| id))
            .bind::<BigInt, _>(limit.probe())
    };
    let followed: i64 = follows::table
        .filter(follows::follower_id.eq(user_id))
        .select(count_star())
        .first(conn)?;
    let mut rows = Vec::new();
    if (followed + 1) * limit.probe() > RECENT_WINDOW {
        rows = query(TIMELINE_RECENT_SQL)
            .bind::<BigInt, _>(RECENT_WINDOW)
            .load::<TimeKey>(conn)?;
    }
    if (rows.len() as i64) < limit.probe() {
        rows = query(TIMELINE_MERGE_SQL).load::<TimeKey>(conn)?;
    }
    let page = Page::from_probe(rows, limit, |k| Cursor::Time {
        at: k.created_at,
        id: k.id,
    });
    with_posts(conn, page)
}

/// The most liked posts created after `$1`, ties broken by recency, below the keyset bound
/// `($2, $3, $4)` (null on a first page), at most `$5`: a range scan of `posts_created_idx`
/// over the window, sorted.
pub const TRENDING_SQL: &str = "SELECT p.id, p.like_count, p.created_at FROM posts p \
    WHERE p.created_at > $1::timestamptz \
      AND (p.like_count, p.created_at, p.id) < (coalesce($2::int8, 9223372036854775807::int8), coalesce($3::timestamptz, 'infinity'::timestamptz), coalesce($4::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid)) \
    ORDER BY p.like_count DESC, p.created_at DESC, p.id DESC LIMIT $5::int8";

#[derive(QueryableByName)]
struct LikesKey {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = BigInt)]
    like_count: i64,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
}

/// The most liked posts created since `since`; ties broken by recency.
pub fn trending(
    conn: &mut PgConnection,
    since: DateTime<Utc>,
    cursor: Option<Cursor>,
    limit: Limit,
) -> Result<Page<PostWithAuthor>, DbError> {
    let after = match cursor {
        None => None,
        Some(Cursor::Likes { likes, at, id }) => Some((likes, at, id)),
        Some(_) => return Err(invalid_cursor()),
    };
    let rows = diesel::sql_query(TRENDING_SQL)
        .bind::<Timestamptz, _>(since)
        .bind::<Nullable<BigInt>, _>(after.map(|(likes, _, _)| likes))
        .bind::<Nullable<Timestamptz>, _>(after.map(|(_, at, _)| at))
        .bind::<Nullable<SqlUuid>, _>(after.map(|(_, _, id)| id))
        .bind::<BigInt, _>(limit.probe())
        .load::<LikesKey>(conn)?;
    let page = Page::from_probe(rows, limit, |k| Cursor::Likes {
        likes: k.like_count,
        at: k.created_at,
        id: k.id,
    });
    with_posts(conn, page)
}

/// A page of keys as the page of their posts (one primary-key lookup of the page's ids).
fn with_posts<K: Keyed>(
    conn: &mut PgConnection,
    page: Page<K>,
) -> Result<Page<PostWithAuthor>, DbError> {
    let ids: Vec<Uuid> = page.items.iter().map(Keyed::id).collect();
    Ok(Page {
        items: by_ids(conn, &ids)?,
        next: page.next,
    })
}

trait Keyed {
    fn id(&self) -> Uuid;
}

impl Keyed for TimeKey {
    fn id(&self) -> Uuid {
        self.id
    }
}

impl Keyed for LikesKey {
    fn id(&self) -> Uuid {
        self.id
    }
}

/// The posts with these ids, in the order given; ids without a post are skipped.
pub fn by_ids(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<PostWithAuthor>, DbError> {
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
