use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use crate::db::DbError;
use crate::db::models::NewToken;
use crate::db::schema::{auth_tokens, users};

/// Stores a new token of `user_id`, then revokes the user's oldest live tokens beyond
/// `keep` (`TOKEN_MAX_PER_USER`) and their expired ones. The caller runs it in a transaction
/// with whatever else the login or registration writes.
pub fn insert(
    conn: &mut PgConnection,
    token_hash: &[u8],
    user_id: Uuid,
    expires_at: DateTime<Utc>,
    keep: u32,
) -> Result<(), DbError> {
    diesel::insert_into(auth_tokens::table)
        .values(NewToken {
            token_hash,
            user_id,
            expires_at,
        })
        .execute(conn)?;
    // Newest first by creation; the token hash breaks ties (tokens of one transaction share
    // `now()`), and the new token is kept whatever its hash, since `keep` is at least 1.
    diesel::sql_query(
        "DELETE FROM auth_tokens WHERE user_id = $1 AND token_hash <> $2 AND ( \
             expires_at <= now() OR token_hash IN ( \
                 SELECT token_hash FROM auth_tokens WHERE user_id = $1 AND token_hash <> $2 \
                 ORDER BY created_at DESC, token_hash OFFSET $3))",
    )
    .bind::<diesel::sql_types::Uuid, _>(user_id)
    .bind::<diesel::sql_types::Bytea, _>(token_hash)
    .bind::<diesel::sql_types::BigInt, _>(i64::from(keep.max(1)) - 1)
    .execute(conn)?;
    Ok(())
}

/// Deletes up to `batch` expired tokens of any user, if no other replica is purging now (a
/// transaction-scoped advisory lock); returns how many went, or `None` when another replica
/// holds the lock.
pub fn purge_expired(conn: &mut PgConnection, batch: i64) -> QueryResult<Option<usize>> {
    conn.transaction(|conn| {
        let locked: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
            "pg_try_advisory_xact_lock(hashtext('sidechain.purge_expired_tokens'))",
        ))
        .get_result(conn)?;
        if !locked {
            return Ok(None);
        }
        diesel::sql_query(
            "DELETE FROM auth_tokens WHERE token_hash IN ( \
                 SELECT token_hash FROM auth_tokens WHERE expires_at <= now() LIMIT $1)",
        )
        .bind::<diesel::sql_types::BigInt, _>(batch)
        .execute(conn)
        .map(Some)
    })
}

/// The user (id, username) a live token belongs to.
pub fn user_for(
    conn: &mut PgConnection,
    token_hash: &[u8],
) -> Result<Option<(Uuid, String)>, DbError> {
    Ok(auth_tokens::table
        .inner_join(users::table)
        .filter(auth_tokens::token_hash.eq(token_hash))
        .filter(auth_tokens::expires_at.gt(diesel::dsl::now))
        .select((users::id, users::username))
        .first(conn)
        .optional()?)
}

/// Revokes one token (logout). Revoking a token that is already gone changes nothing.
pub fn delete(conn: &mut PgConnection, token_hash: &[u8]) -> Result<(), DbError> {
    diesel::delete(auth_tokens::table.filter(auth_tokens::token_hash.eq(token_hash)))
        .execute(conn)?;
    Ok(())
}
