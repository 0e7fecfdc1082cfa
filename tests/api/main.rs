//! Integration tests: the service over HTTP, against the real Postgres and Redis of this
//! machine.

mod helpers;

mod auth;
mod bad_input;
mod comments;
mod export_faults;
mod feed;
mod health;
mod lifecycle;
mod observability;
mod posts;
mod search;
mod tracecontext;
mod traces;
mod users;
