use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{assert_error, spawn_app, spawn_app_with};

#[tokio::test]
async fn health_is_ok() {
    let app = spawn_app().await;
    let response = app.get("/health").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"status": "ok"})
    );
}

#[tokio::test]
async fn ready_when_postgres_and_redis_answer() {
    let app = spawn_app().await;
    let response = app.get("/ready").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"postgres": "ok", "redis": "ok"})
    );
}

#[tokio::test]
async fn not_ready_names_redis_when_it_is_down() {
    // Nothing listens on port 1.
    let app = spawn_app_with(|c| {
        c.set("REDIS_URL", "redis://127.0.0.1:1");
    })
    .await;
    let response = app.get("/ready").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"postgres": "ok", "redis": "down"})
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_are_json_errors() {
    let app = spawn_app().await;
    assert_error(app.get("/nope").await, StatusCode::NOT_FOUND, "not_found").await;
    assert_error(
        app.get("/api/v1/nope").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let response = app.api.put(app.url("/health")).send().await.unwrap();
    assert_error(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    let response = app
        .api
        .patch(app.url("/api/v1/posts/x"))
        .send()
        .await
        .unwrap();
    assert_error(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
}

#[tokio::test]
async fn openapi_lists_every_route() {
    let app = spawn_app().await;
    let response = app.get("/api-docs/openapi.json").await;
    assert_eq!(response.status(), StatusCode::OK);
    let doc: Value = response.json().await.unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    let expected = [
        ("/health", "get"),
        ("/ready", "get"),
        ("/metrics", "get"),
        ("/api-docs/openapi.json", "get"),
        ("/api/v1/auth/register", "post"),
        ("/api/v1/auth/login", "post"),
        ("/api/v1/auth/logout", "post"),
        ("/api/v1/users/{username}", "get"),
        ("/api/v1/users/{username}/posts", "get"),
        ("/api/v1/users/{username}/follow", "post"),
        ("/api/v1/users/{username}/follow", "delete"),
        ("/api/v1/posts", "post"),
        ("/api/v1/posts/{id}", "get"),
        ("/api/v1/posts/{id}", "delete"),
        ("/api/v1/posts/{id}/audio", "put"),
        ("/api/v1/posts/{id}/audio", "get"),
        ("/api/v1/posts/{id}/like", "post"),
        ("/api/v1/posts/{id}/like", "delete"),
        ("/api/v1/posts/{id}/comments", "post"),
        ("/api/v1/posts/{id}/comments", "get"),
        ("/api/v1/feed/unified", "get"),
        ("/api/v1/search", "get"),
    ];
    for (path, method) in expected {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} missing");
        assert!(
            op["responses"].is_object(),
            "{method} {path} has no responses"
        );
    }
    // Request and response schemas are there.
    assert!(doc["paths"]["/api/v1/posts"]["post"]["requestBody"].is_object());
    for schema in [
        "PostJson",
        "ErrorBody",
        "FeedJson",
        "ProfileJson",
        "CreatePostRequest",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "{schema} missing"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}
