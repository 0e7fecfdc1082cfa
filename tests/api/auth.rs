use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, assert_error, spawn_app};

#[tokio::test]
async fn register_returns_the_user_and_a_working_token() {
    let app = spawn_app().await;
    let response = app
        .post_json(
            "/api/v1/auth/register",
            &json!({"username": "Beatsmith", "email": "Beats@Example.com", "password": PASSWORD}),
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["user"]["username"], "Beatsmith");
    assert_eq!(body["user"]["email"], "beats@example.com");
    assert!(uuid::Uuid::parse_str(body["user"]["id"].as_str().unwrap()).is_ok());
    assert!(body["user"].get("password_hash").is_none());
    let token = body["token"].as_str().unwrap();

    // The token authenticates.
    let response = app
        .post_json("/api/v1/posts", &json!({"title": "first"}), Some(token))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn taken_usernames_and_emails_are_409() {
    let app = spawn_app().await;
    app.register("producer").await;
    let response = app
        .post_json(
            "/api/v1/auth/register",
            &json!({"username": "PRODUCER", "email": "other@example.com", "password": PASSWORD}),
            None,
        )
        .await;
    assert_error(response, StatusCode::CONFLICT, "username_taken").await;
    let response = app
        .post_json(
            "/api/v1/auth/register",
            &json!({"username": "other", "email": "Producer@example.com", "password": PASSWORD}),
            None,
        )
        .await;
    assert_error(response, StatusCode::CONFLICT, "email_taken").await;
}

#[tokio::test]
async fn invalid_registrations_are_400() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({"username": "ab", "email": "a@b.io", "password": PASSWORD}),
            "invalid_username",
        ),
        (
            json!({"username": "bad name", "email": "a@b.io", "password": PASSWORD}),
            "invalid_username",
        ),
        (
            json!({"username": "okname", "email": "nope", "password": PASSWORD}),
            "invalid_email",
        ),
        (
            json!({"username": "okname", "email": "a@b.io", "password": "short"}),
            "invalid_password",
        ),
        (
            json!({"username": "okname", "email": "a@b.io"}),
            "invalid_body",
        ),
        (
            json!({"username": 5, "email": "a@b.io", "password": PASSWORD}),
            "invalid_body",
        ),
    ];
    for (body, code) in cases {
        let response = app.post_json("/api/v1/auth/register", &body, None).await;
        assert_error(response, StatusCode::BAD_REQUEST, code).await;
    }
}

#[tokio::test]
async fn login_by_username_or_email() {
    let app = spawn_app().await;
    let user = app.register("looper").await;
    for login in [
        "looper",
        "LOOPER",
        "looper@example.com",
        "Looper@Example.com",
    ] {
        let response = app
            .post_json(
                "/api/v1/auth/login",
                &json!({"login": login, "password": PASSWORD}),
                None,
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{login}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["user"]["id"], user.id.as_str());
        let token = body["token"].as_str().unwrap();
        assert_ne!(token, user.token, "each login is a new token");
        let response = app
            .post(
                &format!("/api/v1/posts/{}/like", uuid::Uuid::new_v4()),
                Some(token),
            )
            .await;
        // Authenticated (so 404 for the post, not 401).
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn wrong_credentials_are_401() {
    let app = spawn_app().await;
    app.register("looper").await;
    for body in [
        json!({"login": "looper", "password": "wrong-password"}),
        json!({"login": "nobody", "password": PASSWORD}),
        json!({"login": "", "password": ""}),
    ] {
        let response = app.post_json("/api/v1/auth/login", &body, None).await;
        assert_error(response, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    }
}

#[tokio::test]
async fn protected_routes_need_a_valid_token() {
    let app = spawn_app().await;
    let response = app
        .post_json("/api/v1/posts", &json!({"title": "x"}), None)
        .await;
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let response = app
        .post_json(
            "/api/v1/posts",
            &json!({"title": "x"}),
            Some("sc_not-a-real-token"),
        )
        .await;
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let response = app
        .api
        .post(app.url("/api/v1/posts"))
        .header("Authorization", "Basic Ym9iOnNlY3JldA==")
        .json(&json!({"title": "x"}))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[tokio::test]
async fn expired_tokens_are_401() {
    let app = spawn_app().await;
    let user = app.register("sleeper").await;
    app.sql("UPDATE auth_tokens SET expires_at = now() - interval '1 second'");
    let response = app
        .post_json("/api/v1/posts", &json!({"title": "x"}), Some(&user.token))
        .await;
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
}
