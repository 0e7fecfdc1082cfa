use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{assert_error, spawn_app};

#[tokio::test]
async fn create_and_read_a_post() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let response = app
        .post_json(
            "/api/v1/posts",
            &json!({
                "title": "  Late night loop  ",
                "description": "Dusty keys",
                "bpm": 92,
                "musical_key": "F# minor",
                "daw": "Ableton Live",
                "genre": "lo-fi",
                "tags": ["Chill", "keys", "chill"],
            }),
            Some(&alice.token),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let post: Value = response.json().await.unwrap();
    assert_eq!(post["title"], "Late night loop");
    assert_eq!(post["bpm"], 92);
    assert_eq!(post["tags"], json!(["chill", "keys"]));
    assert_eq!(post["author"]["id"], alice.id.as_str());
    assert_eq!(post["author"]["username"], "alice");
    assert_eq!(post["like_count"], 0);
    assert_eq!(post["comment_count"], 0);
    let id = post["id"].as_str().unwrap();
    assert_eq!(location, format!("/api/v1/posts/{id}"));

    let response = app.get(&location).await;
    assert_eq!(response.status(), StatusCode::OK);
    let read: Value = response.json().await.unwrap();
    assert_eq!(read, post);
}

#[tokio::test]
async fn optional_fields_may_be_absent() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let post = app.create_post(&alice, json!({"title": "bare"})).await;
    assert_eq!(post["bpm"], Value::Null);
    assert_eq!(post["description"], Value::Null);
    assert_eq!(post["tags"], json!([]));
}

#[tokio::test]
async fn invalid_posts_are_400() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let cases = [
        (json!({"title": ""}), "invalid_title"),
        (json!({"title": "   "}), "invalid_title"),
        (json!({"title": "x".repeat(201)}), "invalid_title"),
        (json!({"title": "ok", "bpm": 0}), "invalid_bpm"),
        (json!({"title": "ok", "bpm": 1000}), "invalid_bpm"),
        (json!({"title": "ok", "bpm": -5}), "invalid_bpm"),
        (json!({"title": "ok", "bpm": "fast"}), "invalid_body"),
        (json!({"title": "ok", "bpm": 120.5}), "invalid_body"),
        (json!({"title": "ok", "bpm": 1e30}), "invalid_body"),
        (json!({"title": "ok", "tags": "trap"}), "invalid_body"),
        (
            json!({"title": "ok", "tags": vec!["t"; 11]}),
            "invalid_tags",
        ),
        (json!({"title": 7}), "invalid_body"),
        (json!({}), "invalid_body"),
    ];
    for (body, code) in cases {
        let response = app
            .post_json("/api/v1/posts", &body, Some(&alice.token))
            .await;
        assert_error(response, StatusCode::BAD_REQUEST, code).await;
    }
    // Boundaries are accepted.
    app.create_post(&alice, json!({"title": "é".repeat(200), "bpm": 1}))
        .await;
    app.create_post(&alice, json!({"title": "x", "bpm": 999}))
        .await;
}

#[tokio::test]
async fn unknown_and_malformed_ids_are_404() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let unknown = uuid::Uuid::new_v4();
    for path in [
        format!("/api/v1/posts/{unknown}"),
        "/api/v1/posts/not-a-uuid".into(),
        "/api/v1/posts/1%27%20OR%201=1".into(),
    ] {
        assert_error(app.get(&path).await, StatusCode::NOT_FOUND, "not_found").await;
        assert_error(
            app.delete(&path, Some(&alice.token)).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
        assert_error(
            app.post(&format!("{path}/like"), Some(&alice.token)).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
        assert_error(
            app.delete(&format!("{path}/like"), Some(&alice.token))
                .await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
}

#[tokio::test]
async fn only_the_author_deletes() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let post = app.post_titled(&alice, "mine").await;
    let path = format!("/api/v1/posts/{}", post["id"].as_str().unwrap());

    assert_error(
        app.delete(&path, Some(&bob.token)).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_error(
        app.delete(&path, None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    assert_eq!(app.get(&path).await.status(), StatusCode::OK);

    assert_eq!(
        app.delete(&path, Some(&alice.token)).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_error(app.get(&path).await, StatusCode::NOT_FOUND, "not_found").await;
    assert_error(
        app.delete(&path, Some(&alice.token)).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn likes_are_idempotent_and_counted() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let post = app.post_titled(&alice, "likeable").await;
    let path = format!("/api/v1/posts/{}", post["id"].as_str().unwrap());
    let like = format!("{path}/like");

    for _ in 0..3 {
        assert_eq!(
            app.post(&like, Some(&bob.token)).await.status(),
            StatusCode::NO_CONTENT
        );
    }
    assert_eq!(
        app.post(&like, Some(&carol.token)).await.status(),
        StatusCode::NO_CONTENT
    );
    let read: Value = app.get(&path).await.json().await.unwrap();
    assert_eq!(read["like_count"], 2);

    for _ in 0..2 {
        assert_eq!(
            app.delete(&like, Some(&bob.token)).await.status(),
            StatusCode::NO_CONTENT
        );
    }
    let read: Value = app.get(&path).await.json().await.unwrap();
    assert_eq!(read["like_count"], 1);

    assert_error(
        app.post(&like, None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
}
