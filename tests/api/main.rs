//! Integration tests: the service over HTTP, against the real Postgres and Redis of this
//! machine, and its span exporter through its public API (`exporter`). One binary, so that the
//! harness in `helpers` serves them all and the dependencies are linked once.

mod helpers;

mod audio;
mod audio_limits;
mod audio_storage;
mod auth;
mod bad_input;
mod comments;
mod conformance;
mod export_faults;
mod exporter;
mod feed;
mod feed_cache;
mod health;
mod lifecycle;
mod limits;
mod logout;
mod methods;
mod observability;
mod otlp_logs;
mod posts;
mod protocol_errors;
mod read_plans;
mod reads;
mod replicas;
mod search;
mod tail_sampling;
mod throttle;
mod tracecontext;
mod traces;
mod users;
