//! Login throttling (CONTRACT.md §1 `LOGIN_MAX_FAILURES`, §2 429): failed logins counted per
//! account and per client address in Redis, shared by replicas, failing open without Redis.
//!
//! Client addresses: the app listens on 127.0.0.1, and a client bound to another loopback
//! address (127.0.0.2, …) is another client address.

use std::net::IpAddr;
use std::time::Duration;

use deadpool_redis::redis;
use reqwest::{Response, StatusCode};
use serde_json::json;

use crate::helpers::{PASSWORD, TestApp, assert_error, poll_within, spawn_app_with};

const MAX: u32 = 3;

async fn throttled_app() -> TestApp {
    spawn_app_with(|c| {
        c.set("LOGIN_MAX_FAILURES", MAX.to_string());
    })
    .await
}

/// A client whose requests come from `address`.
fn client_from(address: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(address.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn login(app: &TestApp, from: &reqwest::Client, login: &str, password: &str) -> Response {
    from.post(app.url("/api/v1/auth/login"))
        .json(&json!({"login": login, "password": password}))
        .send()
        .await
        .unwrap()
}

/// Asserts a 429 and returns its `Retry-After` in seconds.
async fn assert_throttled(response: Response) -> u64 {
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .expect("a Retry-After header")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in seconds");
    assert_error(response, StatusCode::TOO_MANY_REQUESTS, "too_many_requests").await;
    retry_after
}

#[tokio::test]
async fn an_account_is_blocked_after_max_failures_from_any_address() {
    let app = throttled_app().await;
    app.register("alice").await;
    let first = client_from("127.0.0.2");
    // By name and by email: one account.
    for name in ["alice", "alice@example.com", "ALICE"] {
        let response = login(&app, &first, name, "wrong-password").await;
        assert_error(response, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    }
    let retry_after = assert_throttled(login(&app, &first, "alice", "wrong-password").await).await;
    assert!((1..=900).contains(&retry_after), "{retry_after}");

    // The right password from an address that has failed nothing: still the account's block.
    let other = client_from("127.0.0.3");
    assert_throttled(login(&app, &other, "alice", PASSWORD).await).await;
    // Other accounts are not blocked from there.
    app.register("bob").await;
    let response = login(&app, &other, "bob", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_address_is_blocked_after_max_failures_on_any_accounts() {
    let app = throttled_app().await;
    app.register("alice").await;
    let guesser = client_from("127.0.0.4");
    // Unknown names count like known ones.
    for name in ["nobody", "no-one", "nemo@example.com"] {
        let response = login(&app, &guesser, name, "wrong-password").await;
        assert_error(response, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    }
    let retry_after = assert_throttled(login(&app, &guesser, "alice", PASSWORD).await).await;
    assert!((1..=900).contains(&retry_after), "{retry_after}");
    // alice, from her own address, logs in.
    let response = login(&app, &client_from("127.0.0.5"), "alice", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_block_ends_with_the_window() {
    let app = throttled_app().await;
    app.register("alice").await;
    let client = client_from("127.0.0.6");
    for _ in 0..MAX {
        login(&app, &client, "alice", "wrong-password").await;
    }
    assert_throttled(login(&app, &client, "alice", PASSWORD).await).await;

    // The window is the keys' lifetime: end it now instead of waiting 15 minutes.
    let keys = redis_keys(&format!("{}login:*", app.redis_prefix));
    assert_eq!(
        keys.len(),
        2,
        "one account key and one address key: {keys:?}"
    );
    let mut conn = redis_connection();
    for key in &keys {
        let ttl: i64 = redis::cmd("TTL").arg(key).query(&mut conn).unwrap();
        assert!((1..=900).contains(&ttl), "{key}: {ttl}");
        let _: () = redis::cmd("PEXPIRE")
            .arg(key)
            .arg(1)
            .query(&mut conn)
            .unwrap();
    }
    let response = poll_within("the block to end", Duration::from_secs(10), || async {
        let response = login(&app, &client, "alice", PASSWORD).await;
        (response.status() != StatusCode::TOO_MANY_REQUESTS).then_some(response)
    })
    .await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn replicas_share_the_counts() {
    let first = throttled_app().await;
    first.register("alice").await;
    let db_url = first.db_url.clone();
    let prefix = first.redis_prefix.clone();
    let second = spawn_app_with(move |c| {
        c.set("LOGIN_MAX_FAILURES", MAX.to_string())
            .set("DATABASE_URL", db_url)
            .set("REDIS_KEY_PREFIX", prefix);
    })
    .await;
    let client = client_from("127.0.0.7");
    for _ in 0..MAX {
        let response = login(&first, &client, "alice", "wrong-password").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    assert_throttled(login(&second, &client, "alice", PASSWORD).await).await;
}

#[tokio::test]
async fn without_redis_logins_are_not_throttled_and_one_warning_says_so() {
    let app = spawn_app_with(|c| {
        c.set("LOGIN_MAX_FAILURES", MAX.to_string())
            .set("REDIS_URL", "redis://127.0.0.1:1")
            .set("REDIS_TIMEOUT_MS", "200");
    })
    .await;
    app.register("alice").await;
    let client = client_from("127.0.0.8");
    for _ in 0..MAX + 2 {
        let response = login(&app, &client, "alice", "wrong-password").await;
        assert_error(response, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    }
    let response = login(&app, &client, "alice", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);

    let warned = |l: &serde_json::Value| {
        l["msg"]
            .as_str()
            .is_some_and(|m| m.starts_with("login throttling is off"))
    };
    app.logs.wait_for("the warning", warned).await;
    let warnings: Vec<_> = app.logs.lines().into_iter().filter(warned).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0]["level"], "warn");
}

fn redis_connection() -> redis::Connection {
    let url = std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    redis::Client::open(url).unwrap().get_connection().unwrap()
}

fn redis_keys(pattern: &str) -> Vec<String> {
    redis::cmd("KEYS")
        .arg(pattern)
        .query(&mut redis_connection())
        .unwrap()
}
