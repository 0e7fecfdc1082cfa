use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{assert_error, spawn_app};

#[tokio::test]
async fn comments_are_created_counted_and_listed_oldest_first() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let post = app.post_titled(&alice, "feedback wanted").await;
    let id = post["id"].as_str().unwrap();
    let path = format!("/api/v1/posts/{id}/comments");

    let response = app
        .post_json(
            &path,
            &json!({"body": "  kick is too loud\nbut nice  "}),
            Some(&bob.token),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let comment: Value = response.json().await.unwrap();
    assert_eq!(comment["body"], "kick is too loud\nbut nice");
    assert_eq!(comment["post_id"], id);
    assert_eq!(comment["author"]["username"], "bob");

    let mut bodies = vec!["kick is too loud\nbut nice".to_owned()];
    for i in 0..11 {
        let body = format!("comment {i}");
        let response = app
            .post_json(&path, &json!({"body": body}), Some(&alice.token))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        bodies.push(body);
    }
    let read: Value = app
        .get(&format!("/api/v1/posts/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["comment_count"], 12);

    let items = app.collect_pages(&path, 5, None).await;
    let got: Vec<String> = items
        .iter()
        .map(|c| c["body"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, bodies);
    let ids: HashSet<&str> = items.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 12);
}

#[tokio::test]
async fn invalid_comments_and_unknown_posts() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let post = app.post_titled(&alice, "p").await;
    let path = format!("/api/v1/posts/{}/comments", post["id"].as_str().unwrap());
    for body in [
        json!({"body": ""}),
        json!({"body": "   "}),
        json!({"body": "x".repeat(2001)}),
    ] {
        let response = app.post_json(&path, &body, Some(&alice.token)).await;
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_body_text").await;
    }
    let response = app
        .post_json(&path, &json!({"text": "wrong field"}), Some(&alice.token))
        .await;
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_body").await;
    let response = app.post_json(&path, &json!({"body": "x"}), None).await;
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;

    let unknown = format!("/api/v1/posts/{}/comments", uuid::Uuid::new_v4());
    let response = app
        .post_json(&unknown, &json!({"body": "hello"}), Some(&alice.token))
        .await;
    assert_error(response, StatusCode::NOT_FOUND, "not_found").await;
    assert_error(app.get(&unknown).await, StatusCode::NOT_FOUND, "not_found").await;
    assert_error(
        app.get("/api/v1/posts/zzz/comments").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    // The boundary is accepted.
    let response = app
        .post_json(
            &path,
            &json!({"body": "x".repeat(2000)}),
            Some(&alice.token),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
}
