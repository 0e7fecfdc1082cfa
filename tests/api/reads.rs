//! Timeline and trending pages where the catalogue is shaped against them: a followed account
//! whose posts are older than everyone else's, a follower of many whose page lies past a crowd
//! of other posts, likes held by posts outside the window.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::spawn_app;

fn titles(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|p| p["title"].as_str().unwrap().to_owned())
        .collect()
}

/// `n` users named `{prefix}_{i}` (1-based), straight into the database (registering through
/// HTTP hashes a password each, and is rate-limited).
fn seed_users(app: &crate::helpers::TestApp, prefix: &str, n: u32) {
    app.sql(&format!(
        "INSERT INTO users (id, username, email, password_hash) \
         SELECT md5('{prefix}' || i)::uuid, '{prefix}_' || i, '{prefix}_' || i || '@example.com', 'x' \
         FROM generate_series(1, {n}) AS i"
    ));
}

#[tokio::test]
async fn a_timeline_following_one_quiet_account_shows_its_old_posts() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let quiet = app.register("quiet").await;
    for i in 1..=3 {
        app.post_titled(&quiet, &format!("quiet {i}")).await;
    }
    app.sql("UPDATE posts SET created_at = created_at - interval '400 days'");
    // Everyone else posted since, a lot.
    seed_users(&app, "crowd", 50);
    app.sql(
        "INSERT INTO posts (id, author_id, title, created_at) \
         SELECT md5('crowd post' || i)::uuid, md5('crowd' || (1 + i % 50))::uuid, 'crowd ' || i, \
                now() - i * interval '1 minute' \
         FROM generate_series(1, 3000) AS i",
    );
    assert_eq!(
        app.post("/api/v1/users/quiet/follow", Some(&alice.token))
            .await
            .status(),
        204
    );
    app.post_titled(&alice, "alice 1").await;

    let page: Value = app
        .get_auth("/api/v1/feed/unified?type=timeline", &alice.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        titles(page["items"].as_array().unwrap()),
        ["alice 1", "quiet 3", "quiet 2", "quiet 1"]
    );
    assert_eq!(page["next_cursor"], Value::Null);
    let items = app
        .collect_pages("/api/v1/feed/unified?type=timeline", 1, Some(&alice.token))
        .await;
    assert_eq!(titles(&items), ["alice 1", "quiet 3", "quiet 2", "quiet 1"]);
}

#[tokio::test]
async fn a_timeline_following_many_walks_every_post_once() {
    let app = spawn_app().await;
    let bob = app.register("bob").await;
    seed_users(&app, "f", 120);
    // Bob follows f_1 … f_100 (enough that the newest posts of everyone are looked at first);
    // f_101 … f_120 post too, f_120 a crowd of 3000 posts between bob's first page and the rest.
    app.sql(&format!(
        "INSERT INTO follows (follower_id, followee_id) \
         SELECT '{}', md5('f' || i)::uuid FROM generate_series(1, 100) AS i",
        bob.id
    ));
    app.sql(
        "INSERT INTO posts (id, author_id, title, created_at) \
         SELECT md5('followed' || r)::uuid, md5('f' || (1 + r % 100))::uuid, \
                'followed ' || lpad(r::text, 3, '0'), \
                now() - CASE WHEN r <= 5 THEN interval '0' ELSE interval '2 hours' END \
                      - r * interval '1 second' \
         FROM generate_series(1, 300) AS r",
    );
    app.sql(
        "INSERT INTO posts (id, author_id, title, created_at) \
         SELECT md5('other' || i)::uuid, md5('f' || (101 + i % 20))::uuid, 'other ' || i, \
                now() - interval '1 hour' - i * interval '1 second' \
         FROM generate_series(1, 3000) AS i",
    );
    let expected: Vec<String> = (1..=300).map(|r| format!("followed {r:03}")).collect();

    for limit in [20, 7, 100] {
        let items = app
            .collect_pages(
                "/api/v1/feed/unified?type=timeline",
                limit,
                Some(&bob.token),
            )
            .await;
        assert_eq!(titles(&items), expected, "limit {limit}");
        let ids: HashSet<&str> = items.iter().map(|p| p["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 300);
    }
}

#[tokio::test]
async fn trending_is_the_window_when_old_posts_hold_the_likes() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    seed_users(&app, "old", 10);
    app.sql(
        "INSERT INTO posts (id, author_id, title, like_count, created_at) \
         SELECT md5('old' || i)::uuid, md5('old' || (1 + i % 10))::uuid, 'old ' || i, \
                1000 + i, now() - interval '8 days' - i * interval '1 hour' \
         FROM generate_series(1, 2000) AS i",
    );
    // In the window: like counts 5, 3, 3, 2, 0, 0, 0 (ties newest first).
    let mut ids = Vec::new();
    for title in ["r5", "r3a", "r3b", "r2", "r0a", "r0b", "r0c"] {
        let post = app.post_titled(&alice, title).await;
        ids.push((title, post["id"].as_str().unwrap().to_owned()));
    }
    for (title, id) in &ids {
        let likes: u32 = title[1..2].parse().unwrap();
        app.sql(&format!(
            "UPDATE posts SET like_count = {likes} WHERE id = '{id}'"
        ));
    }

    for limit in [1, 3, 20] {
        let items = app
            .collect_pages("/api/v1/feed/unified?type=trending", limit, None)
            .await;
        assert_eq!(
            titles(&items),
            ["r5", "r3b", "r3a", "r2", "r0c", "r0b", "r0a"],
            "limit {limit}"
        );
    }
    let response = app.get("/api/v1/feed/unified?type=trending&limit=2").await;
    assert_eq!(response.status(), StatusCode::OK);
}
