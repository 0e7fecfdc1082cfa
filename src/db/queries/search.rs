//! Search: posts by full text (trigram similarity of the title when full text finds nothing),
//! users by name prefix and similarity. Every statement is answered through an index
//! (`posts_search_idx`, `posts_title_trgm_idx`, `users_username_trgm_idx`), so its cost follows
//! the matches, not the catalogue (DESIGN.md, "Search stays in Postgres").
//!
//! ```text
//!  q ─▶ FULL_TEXT_SQL (GIN on search_vector) ── rows ─────────────────▶ page (strategy f)
//!              └─ first page found nothing ─▶ TRIGRAM_SQL (GIN trigram on title) ─▶ page (strategy t)
//! ```
//!
//! Ranking: relevance times an exponential decay of age with a half-life of
//! [`HALF_LIFE_DAYS`]. Ordered by its logarithm, `ln(relevance) + ln 2 · created_at / half-life`,
//! the score of a post does not depend on when the search runs (the `now` of a decay is the same
//! factor for every post), so it can be the key of a keyset: a page's cursor holds the last
//! score and id, and the next page starts strictly below them. Relevance is `ts_rank` over the
//! weighted vector (title 1.0, tags 0.4, description 0.2: a title match is worth about 70 days
//! of recency over a description match) or, for the fallback, `word_similarity` of the title.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Nullable, Text, Uuid as SqlUuid};
use uuid::Uuid;

use super::Page;
use crate::domain::{Cursor, Limit, SearchStrategy, SearchWords};
use crate::errors::AppError;

/// How fast recency outweighs relevance.
pub const HALF_LIFE_DAYS: u32 = 30;

/// Full-text matches of `$1` (web-search syntax) below the keyset bound `($2, $3)` (both null
/// on a first page), best first, at most `$4`.
pub const FULL_TEXT_SQL: &str = "SELECT p.id, s.score FROM posts p \
    CROSS JOIN LATERAL (SELECT ln(greatest(ts_rank(p.search_vector, websearch_to_tsquery('english', $1::text)), 1e-9)::float8) \
        + 0.6931471805599453 * extract(epoch FROM p.created_at)::float8 / 2592000.0 AS score) s \
    WHERE p.search_vector @@ websearch_to_tsquery('english', $1::text) \
      AND (s.score, p.id) < (coalesce($2::float8, 'infinity'::float8), coalesce($3::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid)) \
    ORDER BY s.score DESC, p.id DESC LIMIT $4::int8";

/// Titles holding a word similar to the words `$1` (pg_trgm's `<%`, word similarity at least
/// `pg_trgm.word_similarity_threshold`, 0.6 by default), ranked and paged as [`FULL_TEXT_SQL`].
pub const TRIGRAM_SQL: &str = "SELECT p.id, s.score FROM posts p \
    CROSS JOIN LATERAL (SELECT ln(greatest(word_similarity($1::text, p.title), 1e-9)::float8) \
        + 0.6931471805599453 * extract(epoch FROM p.created_at)::float8 / 2592000.0 AS score) s \
    WHERE $1::text <% p.title \
      AND (s.score, p.id) < (coalesce($2::float8, 'infinity'::float8), coalesce($3::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid)) \
    ORDER BY s.score DESC, p.id DESC LIMIT $4::int8";

/// Users whose lower-cased name starts with `$1` (a `LIKE` pattern) or is similar to `$2`
/// (pg_trgm's `%`): prefix matches first, then by similarity and name; at most `$3`.
pub const USERS_SQL: &str = "SELECT id, username FROM users \
    WHERE lower(username) LIKE $1::text OR lower(username) % $2::text \
    ORDER BY lower(username) LIKE $1::text DESC, similarity(lower(username), $2::text) DESC, lower(username) \
    LIMIT $3::int8";

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
/// fallback). A first page falls back to trigrams when full text finds nothing; a later page
/// goes on with the strategy of its cursor. `fingerprint` goes into the next cursor.
pub fn posts(
    conn: &mut PgConnection,
    query: &str,
    words: &SearchWords,
    fingerprint: u32,
    after: Option<After>,
    limit: Limit,
) -> Result<PostMatches, AppError> {
    let mut strategy = after.map_or(SearchStrategy::FullText, |a| a.strategy);
    let run = |conn: &mut PgConnection, strategy| {
        let (sql, text) = match strategy {
            SearchStrategy::FullText => (FULL_TEXT_SQL, query),
            SearchStrategy::Trigram => (TRIGRAM_SQL, words.as_str()),
        };
        diesel::sql_query(sql)
            .bind::<Text, _>(text)
            .bind::<Nullable<Double>, _>(after.map(|a| a.score))
            .bind::<Nullable<SqlUuid>, _>(after.map(|a| a.id))
            .bind::<BigInt, _>(limit.probe())
            .load::<Scored>(conn)
    };
    let mut rows = run(conn, strategy)?;
    if rows.is_empty() && after.is_none() {
        strategy = SearchStrategy::Trigram;
        rows = run(conn, strategy)?;
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

/// Users whose name starts with the words or resembles them, best first.
pub fn users(
    conn: &mut PgConnection,
    words: &SearchWords,
    limit: Limit,
) -> Result<Vec<(Uuid, String)>, AppError> {
    Ok(diesel::sql_query(USERS_SQL)
        .bind::<Text, _>(words.prefix_pattern())
        .bind::<Text, _>(words.as_str())
        .bind::<BigInt, _>(i64::from(limit.get()))
        .load::<UserMatch>(conn)?
        .into_iter()
        .map(|u| (u.id, u.username))
        .collect())
}
