use diesel::prelude::*;
use diesel::result::DatabaseErrorKind;
use uuid::Uuid;

use super::posts::invalid_cursor;
use super::{Page, violated_constraint};
use crate::db::DbError;
use crate::db::models::{CommentRow, NewComment};
use crate::db::schema::{comments, posts, users};
use crate::domain::{Cursor, Limit};

/// A comment with its author's name.
pub type CommentWithAuthor = (CommentRow, String);

/// Adds a comment and bumps the post's counter, atomically; 404 if the post does not exist.
pub fn insert(
    conn: &mut PgConnection,
    post_id: Uuid,
    author_id: Uuid,
    body: &str,
) -> Result<CommentWithAuthor, DbError> {
    conn.transaction(|conn| {
        let row = diesel::insert_into(comments::table)
            .values(NewComment {
                id: Uuid::new_v4(),
                post_id,
                author_id,
                body,
            })
            .returning(CommentRow::as_returning())
            .get_result(conn)
            .map_err(|err| {
                match violated_constraint(&err, DatabaseErrorKind::ForeignKeyViolation) {
                    Some(_) => DbError::NotFound("post"),
                    None => err.into(),
                }
            })?;
        diesel::update(posts::table.find(post_id))
            .set(posts::comment_count.eq(posts::comment_count + 1))
            .execute(conn)?;
        let username = users::table
            .find(author_id)
            .select(users::username)
            .first(conn)?;
        Ok((row, username))
    })
}

/// A post's comments, oldest first; 404 if the post does not exist.
pub fn for_post(
    conn: &mut PgConnection,
    post_id: Uuid,
    cursor: Option<Cursor>,
    limit: Limit,
) -> Result<Page<CommentWithAuthor>, DbError> {
    let exists =
        diesel::select(diesel::dsl::exists(posts::table.find(post_id))).get_result::<bool>(conn)?;
    if !exists {
        return Err(DbError::NotFound("post"));
    }
    let mut query = comments::table
        .inner_join(users::table)
        .filter(comments::post_id.eq(post_id))
        .select((CommentRow::as_select(), users::username))
        .into_boxed();
    match cursor {
        None => {}
        Some(Cursor::Time { at, id }) => {
            query = query.filter(
                comments::created_at
                    .gt(at)
                    .or(comments::created_at.eq(at).and(comments::id.gt(id))),
            );
        }
        Some(_) => return Err(invalid_cursor()),
    }
    let rows = query
        .order((comments::created_at.asc(), comments::id.asc()))
        .limit(limit.probe())
        .load(conn)?;
    Ok(Page::from_probe(rows, limit, |(c, _)| Cursor::Time {
        at: c.created_at,
        id: c.id,
    }))
}
