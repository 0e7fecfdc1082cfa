//! Clients of external HTTP APIs, all over one traced `reqwest` client.

pub mod http;
pub mod recommender;
