use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use crate::db::models::NewToken;
use crate::db::schema::{auth_tokens, users};
use crate::errors::AppError;

pub fn insert(
    conn: &mut PgConnection,
    token_hash: &[u8],
    user_id: Uuid,
    expires_at: DateTime<Utc>,
) -> Result<(), AppError> {
    diesel::insert_into(auth_tokens::table)
        .values(NewToken {
            token_hash,
            user_id,
            expires_at,
        })
        .execute(conn)?;
    Ok(())
}

/// The user (id, username) a live token belongs to.
pub fn user_for(
    conn: &mut PgConnection,
    token_hash: &[u8],
) -> Result<Option<(Uuid, String)>, AppError> {
    Ok(auth_tokens::table
        .inner_join(users::table)
        .filter(auth_tokens::token_hash.eq(token_hash))
        .filter(auth_tokens::expires_at.gt(diesel::dsl::now))
        .select((users::id, users::username))
        .first(conn)
        .optional()?)
}

/// Revokes one token (logout). Revoking a token that is already gone changes nothing.
pub fn delete(conn: &mut PgConnection, token_hash: &[u8]) -> Result<(), AppError> {
    diesel::delete(auth_tokens::table.filter(auth_tokens::token_hash.eq(token_hash)))
        .execute(conn)?;
    Ok(())
}
