//! Search: posts by full text (trigram similarity of the title when full text finds nothing),
//! users by name prefix and similarity. Every statement is answered through an index
//! (`posts_search_idx`, `posts_title_trgm_idx`, `posts_created_idx`,
//! `users_username_prefix_idx`, `users_username_trgm_idx`), never by reading the posts table
//! (DESIGN.md, "Search stays in Postgres").
//!
//! ```text
//!  q ─▶ full text: matches among the newest 500, … ≤ 50,000 posts ─ page proven? ─ yes ─▶ page (f)
//!         │                                                   └─ no ─▶ every match ranked ─▶ page (f)
//!         └─ the first page found nothing ─▶ every title similar to the words, ranked (t)
//! ```
//!
//! Ranking: relevance in (0, 1] times an exponential decay of age with a half-life of
//! [`HALF_LIFE_DAYS`]. Ordered by its logarithm, `ln(relevance) + ln 2 · created_at /
//! half-life`, a post's score does not depend on when the search runs (the `now` of a decay is
//! the same factor for every post), so it is a keyset: a page's cursor holds the last score and
//! id, and the next page starts strictly below them.
//!
//! Relevance, full text: `ts_rank` over the weighted vector (title 1.0, tags 0.4, description
//! 0.2), divided by the rank of the query's own words as a title, capped at 1: a post with the
//! words in its title is a 1, one with them only in its description about 0.2, worth about 70
//! days of recency. Fallback: `word_similarity` of the title, already in (0, 1].
//!
//! Why the windows: ranking every match costs what the matches cost, and a common word matches
//! a share of the catalogue (a quarter of the benchmark's: 25,000 posts ranked, 66 ms, at
//! 100 k). Because relevance is at most 1, no post older than `t` scores above
//! `ln 2 · t / half-life`. So the matches among the newest [`FIRST_WINDOW`] posts are ranked
//! first (a range of `posts_created_idx` and the GIN index, whichever the planner finds
//! cheaper: both are bounded by the window); when the page's last score beats that bound at the
//! window's start, the page is exact and nothing older is read. Otherwise the next window is
//! sized from this one's matches to hold two pages, up to [`LAST_WINDOW`]; a window with under
//! a quarter of a page ends the search for one (a rare word: all its matches cost less than a
//! wider window).
//! Only when no window proves the page (few matches, or old or weak ones) is every match
//! ranked, through the GIN index.
//!
//! A window is a number of posts, not a time, so its cost does not grow with the catalogue;
//! and its start is passed as a value, not as a `LIMIT` on a newest-first walk of the matches,
//! whose cost the planner guesses from their density (a phrase of common words, sparse in
//! time, took 104 ms at 1 M benchmark posts that way, a rare word 340 ms).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use uuid::Uuid;

use super::Page;
use crate::db::DbError;
use crate::domain::{Cursor, Limit, SearchStrategy, SearchWords};

/// How fast recency outweighs relevance.
pub const HALF_LIFE_DAYS: u32 = 30;

/// The first window, in posts, that a page is looked for in (newest first); each next one is
/// sized from the matches of the last to hold two pages, up to [`LAST_WINDOW`].
pub const FIRST_WINDOW: i64 = 500;
/// The largest window: past it, every match is ranked.
pub const LAST_WINDOW: i64 = 50_000;

// The SQL pieces shared by the statements, so that a score is computed by the same expression
// in every one of them (a cursor's score must compare equal to the score it came from).
// `p.created_at` as decay: ln 2 · seconds / (HALF_LIFE_DAYS · 86,400).
macro_rules! decay {
    () => {
        "0.6931471805599453 * extract(epoch FROM p.created_at)::float8 / 2592000.0"
    };
}
// Full-text relevance of `$1` (web-search syntax), relative to its plain words `$2` as a title.
macro_rules! full_text_relevance {
    () => {
        "least(ts_rank(p.search_vector, websearch_to_tsquery('english', $1::text)) \
         / greatest(ts_rank(setweight(to_tsvector('english', $2::text), 'A'), \
                            websearch_to_tsquery('english', $1::text)), 1e-9), 1.0)"
    };
}
macro_rules! full_text_from {
    () => {
        concat!(
            "FROM posts p CROSS JOIN LATERAL (SELECT ln(greatest(",
            full_text_relevance!(),
            ", 1e-9)::float8) + ",
            decay!(),
            " AS score) s \
             WHERE p.search_vector @@ websearch_to_tsquery('english', $1::text) \
               AND p.created_at >= coalesce($6::timestamptz, '-infinity'::timestamptz) \
               AND (s.score, p.id) < (coalesce($3::float8, 'infinity'::float8), \
                                      coalesce($4::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid))"
        )
    };
}
macro_rules! trigram_from {
    () => {
        concat!(
            "FROM posts p CROSS JOIN LATERAL (SELECT ln(greatest(word_similarity($1::text, p.title), 1e-9)::float8) + ",
            decay!(),
            " AS score) s \
             WHERE $1::text <% p.title \
               AND p.created_at >= coalesce($5::timestamptz, '-infinity'::timestamptz) \
               AND (s.score, p.id) < (coalesce($2::float8, 'infinity'::float8), \
                                      coalesce($3::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid))"
        )
    };
}

/// The full-text matches of `$1` (its plain words `$2`) below the keyset bound `($3, $4)`
/// (both null on a first page), created at or after `$6` (null: any time), best first, at most
/// `$5`.
pub const FULL_TEXT_SQL: &str = concat!(
    "SELECT p.id, s.score ",
    full_text_from!(),
    " ORDER BY s.score DESC, p.id DESC LIMIT $5::int8"
);

/// The titles holding a word similar to the words `$1` (pg_trgm's `<%`: word similarity at
/// least `pg_trgm.word_similarity_threshold`, 0.6 by default) below the keyset bound `($2, $3)`,
/// created at or after `$5` (null: any time), best first, at most `$4`.
pub const TRIGRAM_SQL: &str = concat!(
    "SELECT p.id, s.score ",
    trigram_from!(),
    " ORDER BY s.score DESC, p.id DESC LIMIT $4::int8"
);

/// When the newest `$1` + 1 posts start (no row when there are not that many), and the decay
/// there: a window's start and the highest score of anything older, read from
/// `posts_created_idx`.
pub const WINDOW_START_SQL: &str = concat!(
    "SELECT p.created_at, ",
    decay!(),
    " AS bound FROM posts p ORDER BY p.created_at DESC, p.id DESC OFFSET $1::int8 LIMIT 1"
);

/// Users whose lower-cased name starts with `$1` (a `LIKE` pattern), by name, at most `$2`: a
/// range of `users_username_prefix_idx`, read for one page.
pub const USERS_PREFIX_SQL: &str = "SELECT id, username FROM users \
    WHERE lower(username) COLLATE \"C\" LIKE $1::text \
    ORDER BY lower(username) COLLATE \"C\" LIMIT $2::int8";

/// Users whose lower-cased name does not start with `$1` but is similar to `$2` (pg_trgm's `%`,
/// similarity at least `pg_trgm.similarity_threshold`, 0.3 by default), most similar first, at
/// most `$3`: through `users_username_trgm_idx`.
pub const USERS_SIMILAR_SQL: &str = "SELECT id, username FROM users \
    WHERE lower(username) % $2::text AND NOT lower(username) COLLATE \"C\" LIKE $1::text \
    ORDER BY similarity(lower(username), $2::text) DESC, lower(username) COLLATE \"C\" LIMIT $3::int8";

// The decay constant in the SQL above is ln 2 / (HALF_LIFE_DAYS · 86,400 s).
const _: () = assert!(HALF_LIFE_DAYS * 86_400 == 2_592_000);

#[derive(QueryableByName)]
struct Scored {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Double)]
    score: f64,
}

#[derive(QueryableByName)]
struct WindowStart {
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = Double)]
    bound: f64,
}

#[derive(QueryableByName)]
struct UserMatch {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Text)]
    username: String,
}

/// Where a search's page starts: after `(score, id)` of the previous page's last post, ranked by
/// `strategy`.
#[derive(Debug, Clone, Copy)]
pub struct After {
    pub strategy: SearchStrategy,
    pub score: f64,
    pub id: Uuid,
}

/// One page of matching post ids, best first, and the strategy that found them.
pub struct PostMatches {
    pub strategy: SearchStrategy,
    pub page: Page<Uuid>,
}

/// The posts matching `query` (the text as typed, for full text; its plain `words`, for the
/// fallback and the relevance scale). A first page falls back to trigrams when full text finds
/// nothing; a later page goes on with the strategy of its cursor. `fingerprint` goes into the
/// next cursor.
pub fn posts(
    conn: &mut PgConnection,
    query: &str,
    words: &SearchWords,
    fingerprint: u32,
    after: Option<After>,
    limit: Limit,
) -> Result<PostMatches, DbError> {
    let mut strategy = after.map_or(SearchStrategy::FullText, |a| a.strategy);
    let mut rows = best(conn, strategy, query, words, after, limit)?;
    if rows.is_empty() && after.is_none() && strategy == SearchStrategy::FullText {
        strategy = SearchStrategy::Trigram;
        rows = best(conn, strategy, query, words, after, limit)?;
    }
    let page = Page::from_probe(rows, limit, |row| Cursor::Search {
        strategy,
        query: fingerprint,
        score_bits: row.score.to_bits(),
        id: row.id,
    });
    Ok(PostMatches {
        strategy,
        page: page.map(|row| row.id),
    })
}

/// The best `limit.probe()` matches below `after`: from a window of the newest posts when it
/// proves to hold them (see the module docs), otherwise by ranking every match.
fn best(
    conn: &mut PgConnection,
    strategy: SearchStrategy,
    query: &str,
    words: &SearchWords,
    after: Option<After>,
    limit: Limit,
) -> Result<Vec<Scored>, DbError> {
    let probe = limit.probe();
    let run = |conn: &mut PgConnection, since: Option<DateTime<Utc>>| {
        let (score, id) = (after.map(|a| a.score), after.map(|a| a.id));
        match strategy {
            SearchStrategy::FullText => diesel::sql_query(FULL_TEXT_SQL)
                .bind::<Text, _>(query)
                .bind::<Text, _>(words.as_str())
                .bind::<Nullable<Double>, _>(score)
                .bind::<Nullable<SqlUuid>, _>(id)
                .bind::<BigInt, _>(probe)
                .bind::<Nullable<Timestamptz>, _>(since)
                .load::<Scored>(conn),
            SearchStrategy::Trigram => diesel::sql_query(TRIGRAM_SQL)
                .bind::<Text, _>(words.as_str())
                .bind::<Nullable<Double>, _>(score)
                .bind::<Nullable<SqlUuid>, _>(id)
                .bind::<BigInt, _>(probe)
                .bind::<Nullable<Timestamptz>, _>(since)
                .load::<Scored>(conn),
        }
    };
    // The fallback's matches are few (word similarity of at least 0.6 to a typo or a partial
    // word), and scoring a window's titles by similarity costs about five times what matching
    // them by full text does: it ranks every match at once.
    let mut window = match strategy {
        SearchStrategy::FullText => FIRST_WINDOW,
        SearchStrategy::Trigram => LAST_WINDOW + 1,
    };
    while window <= LAST_WINDOW {
        let start = diesel::sql_query(WINDOW_START_SQL)
            .bind::<BigInt, _>(window)
            .get_result::<WindowStart>(conn)
            .optional()?;
        let Some(start) = start else {
            // The catalogue is smaller than the window: every match is in it.
            break;
        };
        let rows = run(conn, Some(start.created_at))?;
        // Every match left out of the window is older than its start, so it scores at most the
        // start's bound: the page is proven when its last post scores above that.
        let proven = rows
            .get(probe as usize - 1)
            .is_some_and(|last| last.score > start.bound);
        if proven {
            return Ok(rows);
        }
        // The next window holds two pages at this one's density (a full page that did not
        // prove itself: its matches are weak or old, look four times as far). Under a quarter
        // of a page: a rare word (or too few matches to tell), whose every match costs less
        // than a wider window.
        window = match rows.len() as i64 {
            n if n == probe => window * 4,
            n if n * 4 < probe => break,
            n => window * 2 * probe / n,
        };
    }
    Ok(run(conn, None)?)
}

/// Users whose name starts with the words (by name), then, to fill the page, users whose name
/// resembles them (most similar first).
pub fn users(
    conn: &mut PgConnection,
    words: &SearchWords,
    limit: Limit,
) -> Result<Vec<(Uuid, String)>, DbError> {
    let limit = i64::from(limit.get());
    let mut found = diesel::sql_query(USERS_PREFIX_SQL)
        .bind::<Text, _>(words.prefix_pattern())
        .bind::<BigInt, _>(limit)
        .load::<UserMatch>(conn)?;
    let missing = limit - found.len() as i64;
    if missing > 0 {
        found.extend(
            diesel::sql_query(USERS_SIMILAR_SQL)
                .bind::<Text, _>(words.prefix_pattern())
                .bind::<Text, _>(words.as_str())
                .bind::<BigInt, _>(missing)
                .load::<UserMatch>(conn)?,
        );
    }
    Ok(found.into_iter().map(|u| (u.id, u.username)).collect())
}
