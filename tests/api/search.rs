use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{assert_error, spawn_app};

#[tokio::test]
async fn search_matches_titles_tags_and_usernames_ignoring_case() {
    let app = spawn_app().await;
    let trapper = app.register("TrapLord").await;
    let other = app.register("jazzcat").await;
    app.create_post(&trapper, json!({"title": "Dark TRAP beat"}))
        .await;
    app.create_post(&other, json!({"title": "smooth keys", "tags": ["Trap"]}))
        .await;
    app.create_post(&other, json!({"title": "nothing here"}))
        .await;

    let response = app.get("/api/v1/search?q=trap").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let mut titles: Vec<&str> = body["posts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    titles.sort();
    assert_eq!(titles, ["Dark TRAP beat", "smooth keys"]);
    let users: Vec<&str> = body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["TrapLord"]);
}

#[tokio::test]
async fn like_metacharacters_are_literal() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    app.post_titled(&alice, "100% analog").await;
    app.post_titled(&alice, "digital").await;
    for (q, expected) in [
        ("%", 1),
        ("_", 0),
        ("100%", 1),
        ("%25", 0),
        ("\\", 0),
        ("' OR '1'='1", 0),
    ] {
        let encoded: String = url::form_urlencoded::byte_serialize(q.as_bytes()).collect();
        let response = app.get(&format!("/api/v1/search?q={encoded}")).await;
        assert_eq!(response.status(), StatusCode::OK, "{q}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["posts"].as_array().unwrap().len(), expected, "{q}");
    }
}

#[tokio::test]
async fn empty_or_long_queries_are_400() {
    let app = spawn_app().await;
    for query in [
        "",
        "?q=",
        "?q=%20%20",
        &format!("?q={}", "a".repeat(101)),
        "?q=ok&limit=0",
    ] {
        let response = app.get(&format!("/api/v1/search{query}")).await;
        let code = if query.contains("limit") {
            "invalid_limit"
        } else {
            "invalid_query"
        };
        assert_error(response, StatusCode::BAD_REQUEST, code).await;
    }
}
