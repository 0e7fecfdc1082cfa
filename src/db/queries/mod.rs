//! Queries, one module per aggregate. Plain functions over `&mut PgConnection`; they run inside
//! [`Db::run`](super::Db::run), on the blocking pool.

pub mod comments;
pub mod feed;
pub mod posts;
pub mod search;
pub mod tokens;
pub mod users;

use diesel::result::{DatabaseErrorKind, Error as DieselError};

use crate::domain::{Cursor, Limit};

/// One page of rows and the cursor of the next page, if there is one.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<Cursor>,
}

impl<T> Page<T> {
    /// Cuts the `limit + 1` rows a keyset query fetched down to `limit`; the extra row only says
    /// that a next page exists, and the page's last row is where it starts.
    pub fn from_probe(mut rows: Vec<T>, limit: Limit, cursor_of: impl Fn(&T) -> Cursor) -> Self {
        let page = limit.get() as usize;
        let next = if rows.len() > page {
            rows.truncate(page);
            rows.last().map(cursor_of)
        } else {
            None
        };
        Page { items: rows, next }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next: self.next,
        }
    }
}

/// The constraint a unique or foreign-key violation names, if it is one.
pub(crate) fn violated_constraint(err: &DieselError, kind: DatabaseErrorKind) -> Option<String> {
    match err {
        DieselError::DatabaseError(k, info)
            if std::mem::discriminant(k) == std::mem::discriminant(&kind) =>
        {
            Some(info.constraint_name().unwrap_or_default().to_owned())
        }
        _ => None,
    }
}
