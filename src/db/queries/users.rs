use diesel::dsl::count_star;
use diesel::prelude::*;
use diesel::result::DatabaseErrorKind;
use uuid::Uuid;

use super::violated_constraint;
use crate::db::DbError;
use crate::db::models::{NewUser, ProfileCounts, UserRow};
use crate::db::schema::{follows, posts, users};

diesel::define_sql_function!(fn lower(x: diesel::sql_types::Text) -> diesel::sql_types::Text);

/// Inserts a user; a taken username or email is a 409 naming which.
pub fn insert(conn: &mut PgConnection, user: &NewUser<'_>) -> Result<UserRow, DbError> {
    diesel::insert_into(users::table)
        .values(user)
        .returning(UserRow::as_returning())
        .get_result(conn)
        .map_err(
            |err| match violated_constraint(&err, DatabaseErrorKind::UniqueViolation) {
                Some(c) if c.contains("email") => DbError::Conflict {
                    code: "email_taken",
                    message: "this email is already registered",
                },
                Some(_) => DbError::Conflict {
                    code: "username_taken",
                    message: "this username is taken",
                },
                None => err.into(),
            },
        )
}

/// Finds a user by username (any case) or, when `login` holds an `@`, by email.
pub fn find_by_login(conn: &mut PgConnection, login: &str) -> Result<Option<UserRow>, DbError> {
    let query = users::table.select(UserRow::as_select()).into_boxed();
    let query = if login.contains('@') {
        query.filter(users::email.eq(login.trim().to_lowercase()))
    } else {
        query.filter(lower(users::username).eq(login.to_lowercase()))
    };
    Ok(query.first(conn).optional()?)
}

/// Finds a user by username, ignoring case.
pub fn find_by_username(
    conn: &mut PgConnection,
    username: &str,
) -> Result<Option<UserRow>, DbError> {
    Ok(users::table
        .filter(lower(users::username).eq(username.to_lowercase()))
        .select(UserRow::as_select())
        .first(conn)
        .optional()?)
}

/// The id of the user with this username; 404 if there is none.
pub fn id_by_username(conn: &mut PgConnection, username: &str) -> Result<Uuid, DbError> {
    users::table
        .filter(lower(users::username).eq(username.to_lowercase()))
        .select(users::id)
        .first(conn)
        .optional()?
        .ok_or(DbError::NotFound("user"))
}

pub fn profile_counts(conn: &mut PgConnection, user_id: Uuid) -> Result<ProfileCounts, DbError> {
    let followers = follows::table
        .filter(follows::followee_id.eq(user_id))
        .select(count_star())
        .first(conn)?;
    let following = follows::table
        .filter(follows::follower_id.eq(user_id))
        .select(count_star())
        .first(conn)?;
    let posts = posts::table
        .filter(posts::author_id.eq(user_id))
        .select(count_star())
        .first(conn)?;
    Ok(ProfileCounts {
        followers,
        following,
        posts,
    })
}

/// Follows `followee`; following twice is not an error.
pub fn follow(conn: &mut PgConnection, follower: Uuid, followee: Uuid) -> Result<(), DbError> {
    diesel::insert_into(follows::table)
        .values((
            follows::follower_id.eq(follower),
            follows::followee_id.eq(followee),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .map_err(|err| {
            // The followee was deleted between the lookup and the insert.
            match violated_constraint(&err, DatabaseErrorKind::ForeignKeyViolation) {
                Some(_) => DbError::NotFound("user"),
                None => err.into(),
            }
        })?;
    Ok(())
}

/// Unfollows `followee`; unfollowing someone not followed is not an error.
pub fn unfollow(conn: &mut PgConnection, follower: Uuid, followee: Uuid) -> Result<(), DbError> {
    diesel::delete(
        follows::table
            .filter(follows::follower_id.eq(follower))
            .filter(follows::followee_id.eq(followee)),
    )
    .execute(conn)?;
    Ok(())
}
