//! `POST /api/v1/auth/logout` revokes the token of the request, and only that one.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, assert_error, spawn_app};

#[tokio::test]
async fn logout_revokes_the_token_used_and_no_other() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let login: Value = app
        .post_json(
            "/api/v1/auth/login",
            &json!({"login": "alice", "password": PASSWORD}),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    let second = login["token"].as_str().unwrap().to_owned();

    let response = app.post("/api/v1/auth/logout", Some(&alice.token)).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(response.text().await.unwrap().is_empty());

    // The revoked token is a 401 everywhere, logout included; the other session goes on.
    let response = app
        .post_json(
            "/api/v1/posts",
            &json!({"title": "after"}),
            Some(&alice.token),
        )
        .await;
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let response = app.post("/api/v1/auth/logout", Some(&alice.token)).await;
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let response = app
        .post_json(
            "/api/v1/posts",
            &json!({"title": "still in"}),
            Some(&second),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn logout_without_a_valid_token_is_401() {
    let app = spawn_app().await;
    let response = app.post("/api/v1/auth/logout", None).await;
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let response = app
        .post("/api/v1/auth/logout", Some("sc_not-a-token"))
        .await;
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
}
