use diesel::prelude::*;
use diesel::result::DatabaseErrorKind;
use uuid::Uuid;

use super::violated_constraint;
use crate::db::DbError;
use crate::db::models::{NewPost, PostRow, PostWithAuthor};
use crate::db::schema::{likes, posts, users};
use crate::domain::PostDraft;

pub fn insert(
    conn: &mut PgConnection,
    author_id: Uuid,
    draft: &PostDraft,
) -> Result<PostWithAuthor, DbError> {
    let tags = draft.tags.clone().into_inner();
    let row = diesel::insert_into(posts::table)
        .values(NewPost {
            id: Uuid::new_v4(),
            author_id,
            title: &draft.title,
            description: draft.description.as_deref(),
            bpm: draft.bpm,
            musical_key: draft.musical_key.as_deref(),
            daw: draft.daw.as_deref(),
            genre: draft.genre.as_deref(),
            tags: &tags,
        })
        .returning(PostRow::as_returning())
        .get_result(conn)?;
    let username = users::table
        .find(author_id)
        .select(users::username)
        .first(conn)?;
    Ok((row, username))
}

pub fn find(conn: &mut PgConnection, id: Uuid) -> Result<PostWithAuthor, DbError> {
    posts::table
        .inner_join(users::table)
        .filter(posts::id.eq(id))
        .select((PostRow::as_select(), users::username))
        .first(conn)
        .optional()?
        .ok_or(DbError::NotFound("post"))
}

/// Deletes a post if `requester` wrote it: 404 if there is no such post, 403 if it is someone
/// else's.
pub fn delete(conn: &mut PgConnection, id: Uuid, requester: Uuid) -> Result<(), DbError> {
    let author: Uuid = posts::table
        .find(id)
        .select(posts::author_id)
        .first(conn)
        .optional()?
        .ok_or(DbError::NotFound("post"))?;
    if author != requester {
        return Err(DbError::Forbidden("only the author can delete a post"));
    }
    diesel::delete(posts::table.find(id)).execute(conn)?;
    Ok(())
}

/// Likes a post; liking twice is not an error. The counter moves in the same transaction as the
/// row, only when the row is new.
pub fn like(conn: &mut PgConnection, post_id: Uuid, user_id: Uuid) -> Result<(), DbError> {
    conn.transaction(|conn| {
        let inserted = diesel::insert_into(likes::table)
            .values((likes::post_id.eq(post_id), likes::user_id.eq(user_id)))
            .on_conflict_do_nothing()
            .execute(conn)
            .map_err(|err| {
                match violated_constraint(&err, DatabaseErrorKind::ForeignKeyViolation) {
                    Some(_) => DbError::NotFound("post"),
                    None => err.into(),
                }
            })?;
        if inserted == 1 {
            diesel::update(posts::table.find(post_id))
                .set(posts::like_count.eq(posts::like_count + 1))
                .execute(conn)?;
        }
        Ok(())
    })
}

/// Removes a like; removing one that is not there is not an error, but the post must exist.
pub fn unlike(conn: &mut PgConnection, post_id: Uuid, user_id: Uuid) -> Result<(), DbError> {
    conn.transaction(|conn| {
        let exists = diesel::select(diesel::dsl::exists(posts::table.find(post_id)))
            .get_result::<bool>(conn)?;
        if !exists {
            return Err(DbError::NotFound("post"));
        }
        let deleted = diesel::delete(
            likes::table
                .filter(likes::post_id.eq(post_id))
                .filter(likes::user_id.eq(user_id)),
        )
        .execute(conn)?;
        if deleted == 1 {
            diesel::update(posts::table.find(post_id))
                .set(posts::like_count.eq(posts::like_count - 1))
                .execute(conn)?;
        }
        Ok(())
    })
}

pub(crate) fn invalid_cursor() -> DbError {
    DbError::InvalidCursor
}
