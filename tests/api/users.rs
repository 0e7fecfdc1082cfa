use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{assert_error, spawn_app};

#[tokio::test]
async fn profile_has_counts() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    app.post_titled(&alice, "one").await;
    app.post_titled(&alice, "two").await;
    assert_eq!(
        app.post("/api/v1/users/alice/follow", Some(&bob.token))
            .await
            .status(),
        204
    );
    assert_eq!(
        app.post("/api/v1/users/alice/follow", Some(&carol.token))
            .await
            .status(),
        204
    );
    assert_eq!(
        app.post("/api/v1/users/bob/follow", Some(&alice.token))
            .await
            .status(),
        204
    );

    let response = app.get("/api/v1/users/Alice").await;
    assert_eq!(response.status(), StatusCode::OK);
    let profile: Value = response.json().await.unwrap();
    assert_eq!(profile["username"], "alice");
    assert_eq!(profile["id"], alice.id.as_str());
    assert_eq!(profile["followers_count"], 2);
    assert_eq!(profile["following_count"], 1);
    assert_eq!(profile["posts_count"], 2);
    assert!(profile.get("email").is_none(), "emails are not public");
}

#[tokio::test]
async fn unknown_users_are_404() {
    let app = spawn_app().await;
    let user = app.register("alice").await;
    for path in [
        "/api/v1/users/nobody",
        "/api/v1/users/no%20body",
        "/api/v1/users/x",
        "/api/v1/users/nobody/posts",
    ] {
        assert_error(app.get(path).await, StatusCode::NOT_FOUND, "not_found").await;
    }
    assert_error(
        app.post("/api/v1/users/nobody/follow", Some(&user.token))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.delete("/api/v1/users/nobody/follow", Some(&user.token))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn follow_is_idempotent_and_self_follow_is_400() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    for _ in 0..3 {
        assert_eq!(
            app.post("/api/v1/users/alice/follow", Some(&bob.token))
                .await
                .status(),
            StatusCode::NO_CONTENT
        );
    }
    let profile: Value = app.get("/api/v1/users/alice").await.json().await.unwrap();
    assert_eq!(profile["followers_count"], 1);

    for _ in 0..2 {
        assert_eq!(
            app.delete("/api/v1/users/alice/follow", Some(&bob.token))
                .await
                .status(),
            StatusCode::NO_CONTENT
        );
    }
    let profile: Value = app.get("/api/v1/users/alice").await.json().await.unwrap();
    assert_eq!(profile["followers_count"], 0);

    let response = app
        .post("/api/v1/users/alice/follow", Some(&alice.token))
        .await;
    assert_error(response, StatusCode::BAD_REQUEST, "cannot_follow_self").await;
    let response = app.post("/api/v1/users/alice/follow", None).await;
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let response = app.delete("/api/v1/users/alice/follow", None).await;
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[tokio::test]
async fn user_posts_page_newest_first_without_gaps_or_duplicates() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut titles = Vec::new();
    for i in 0..23 {
        let title = format!("track {i}");
        app.post_titled(&alice, &title).await;
        titles.push(title);
        if i % 5 == 0 {
            app.post_titled(&bob, "not alice's").await;
        }
    }
    let items = app
        .collect_pages("/api/v1/users/alice/posts", 5, None)
        .await;
    let got: Vec<&str> = items.iter().map(|p| p["title"].as_str().unwrap()).collect();
    titles.reverse();
    assert_eq!(got, titles);
    let ids: HashSet<&str> = items.iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 23);
    assert!(items.iter().all(|p| p["author"]["username"] == "alice"));
}
