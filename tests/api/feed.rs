use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{assert_error, spawn_app, spawn_app_with};

fn titles(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["title"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn global_feed_is_newest_first_and_paginates_without_gaps() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut expected = Vec::new();
    for i in 0..25 {
        let who = if i % 2 == 0 { &alice } else { &bob };
        let title = format!("post {i}");
        app.post_titled(who, &title).await;
        expected.push(title);
    }
    expected.reverse();

    let first: Value = app
        .get("/api/v1/feed/unified?type=global&limit=10")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["type"], "global");
    assert_eq!(titles(&first), expected[..10]);

    let items = app
        .collect_pages("/api/v1/feed/unified?type=global", 10, None)
        .await;
    let got: Vec<&str> = items.iter().map(|p| p["title"].as_str().unwrap()).collect();
    assert_eq!(got, expected);
    let ids: HashSet<&str> = items.iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 25);

    // No type means global; the default limit is 20.
    let default: Value = app.get("/api/v1/feed/unified").await.json().await.unwrap();
    assert_eq!(default["type"], "global");
    assert_eq!(default["items"].as_array().unwrap().len(), 20);
}

#[tokio::test]
async fn timeline_is_followed_and_own_posts_and_needs_a_token() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    app.post_titled(&alice, "alice 1").await;
    app.post_titled(&bob, "bob 1").await;
    app.post_titled(&carol, "carol 1").await;
    assert_eq!(
        app.post("/api/v1/users/bob/follow", Some(&alice.token))
            .await
            .status(),
        204
    );
    app.post_titled(&bob, "bob 2").await;

    let response = app
        .get_auth("/api/v1/feed/unified?type=timeline", &alice.token)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let page: Value = response.json().await.unwrap();
    assert_eq!(page["type"], "timeline");
    assert_eq!(titles(&page), ["bob 2", "bob 1", "alice 1"]);

    // Unfollowing takes bob out of alice's timeline at once (her own write).
    assert_eq!(
        app.delete("/api/v1/users/bob/follow", Some(&alice.token))
            .await
            .status(),
        204
    );
    let page: Value = app
        .get_auth("/api/v1/feed/unified?type=timeline", &alice.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(titles(&page), ["alice 1"]);

    assert_error(
        app.get("/api/v1/feed/unified?type=timeline").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    assert_error(
        app.get("/api/v1/feed/unified?type=recommended").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
}

#[tokio::test]
async fn trending_orders_by_likes() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let fans = [
        app.register("fan1").await,
        app.register("fan2").await,
        app.register("fan3").await,
    ];
    let a = app.post_titled(&alice, "one like").await;
    let b = app.post_titled(&alice, "three likes").await;
    app.post_titled(&alice, "no likes").await;
    let c = app.post_titled(&alice, "two likes").await;
    let like = |post: &Value| format!("/api/v1/posts/{}/like", post["id"].as_str().unwrap());
    for fan in &fans {
        assert_eq!(app.post(&like(&b), Some(&fan.token)).await.status(), 204);
    }
    for fan in &fans[..2] {
        assert_eq!(app.post(&like(&c), Some(&fan.token)).await.status(), 204);
    }
    assert_eq!(
        app.post(&like(&a), Some(&fans[0].token)).await.status(),
        204
    );
    // A post outside the window does not trend, however liked.
    let old = app.post_titled(&alice, "old hit").await;
    for fan in &fans {
        assert_eq!(app.post(&like(&old), Some(&fan.token)).await.status(), 204);
    }
    app.sql(&format!(
        "UPDATE posts SET created_at = now() - interval '30 days' WHERE id = '{}'",
        old["id"].as_str().unwrap()
    ));
    // Nothing has read trending yet, so no page of it is cached that the SQL above could leave
    // stale.
    app.post_titled(&fans[0], "fan post").await;

    let items = app
        .collect_pages("/api/v1/feed/unified?type=trending", 2, None)
        .await;
    let got: Vec<&str> = items.iter().map(|p| p["title"].as_str().unwrap()).collect();
    assert_eq!(got[..3], ["three likes", "two likes", "one like"]);
    assert_eq!(got.len(), 5);
    assert!(!got.contains(&"old hit"));
    let page: Value = app
        .get("/api/v1/feed/unified?type=trending")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["type"], "trending");
    assert_eq!(page["items"][0]["like_count"], 3);
}

#[tokio::test]
async fn bad_feed_parameters_are_400() {
    let app = spawn_app().await;
    let cases = [
        ("type=bogus", "invalid_feed_type"),
        ("type=", "invalid_feed_type"),
        ("type=global&limit=0", "invalid_limit"),
        ("type=global&limit=101", "invalid_limit"),
        ("type=global&limit=abc", "invalid_limit"),
        ("type=global&limit=-1", "invalid_limit"),
        ("type=global&cursor=garbage!", "invalid_cursor"),
        ("type=global&cursor=bC4xLjIuMw", "invalid_cursor"),
        ("type=global&cursor=t.1.2", "invalid_cursor"),
    ];
    for (query, code) in cases {
        let response = app.get(&format!("/api/v1/feed/unified?{query}")).await;
        assert_error(response, StatusCode::BAD_REQUEST, code).await;
    }
    // A trending cursor does not continue the global feed: it starts it from its first page.
    let alice = app.register("alice").await;
    for i in 0..3 {
        app.post_titled(&alice, &format!("p{i}")).await;
    }
    let page: Value = app
        .get("/api/v1/feed/unified?type=trending&limit=1")
        .await
        .json()
        .await
        .unwrap();
    let cursor = page["next_cursor"].as_str().unwrap();
    let response = app
        .get(&format!(
            "/api/v1/feed/unified?type=global&limit=1&cursor={cursor}"
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let restarted: Value = response.json().await.unwrap();
    let first: Value = app
        .get("/api/v1/feed/unified?type=global&limit=1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(restarted["items"][0]["id"], first["items"][0]["id"]);
    assert_eq!(restarted["items"][0]["title"], "p2");
}

#[tokio::test]
async fn feed_is_cached_and_a_new_post_invalidates_it() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    app.post_titled(&alice, "first").await;
    let page: Value = app
        .get("/api/v1/feed/unified?type=global")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(titles(&page), ["first"]);

    // A row written behind the app's back is not seen: the page comes from Redis.
    app.sql(&format!(
        "INSERT INTO posts (id, author_id, title) VALUES (gen_random_uuid(), '{}', 'sneaky')",
        alice.id
    ));
    let page: Value = app
        .get("/api/v1/feed/unified?type=global")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(titles(&page), ["first"], "served from the cache");

    // A post through the API makes every page stale for its author: her next read misses and
    // sees everything (others: within the TTL, see feed_cache.rs).
    app.post_titled(&alice, "second").await;
    let page: Value = app
        .get_auth("/api/v1/feed/unified?type=global", &alice.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(titles(&page), ["second", "sneaky", "first"]);

    // A like changes the count at once for the one who liked (others: within the TTL, see
    // feed_cache.rs).
    let id = page["items"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.post(&format!("/api/v1/posts/{id}/like"), Some(&alice.token))
            .await
            .status(),
        204
    );
    let page: Value = app
        .get_auth("/api/v1/feed/unified?type=global", &alice.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"][0]["like_count"], 1);
}

#[tokio::test]
async fn feeds_are_served_from_postgres_when_redis_is_down() {
    let app = spawn_app_with(|c| {
        c.set("REDIS_URL", "redis://127.0.0.1:1");
    })
    .await;
    let alice = app.register("alice").await;
    app.post_titled(&alice, "still here").await;
    for kind in ["global", "trending", "timeline"] {
        let response = app
            .get_auth(&format!("/api/v1/feed/unified?type={kind}"), &alice.token)
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{kind}");
        let page: Value = response.json().await.unwrap();
        assert_eq!(titles(&page), ["still here"], "{kind}");
    }
}

async fn recommender() -> MockServer {
    MockServer::start().await
}

#[tokio::test]
async fn recommended_comes_from_the_recommender_in_its_order() {
    let rec = recommender().await;
    let rec_uri = rec.uri();
    let app = spawn_app_with(|c| {
        c.set("RECOMMENDER_URL", rec_uri);
    })
    .await;
    let alice = app.register("alice").await;
    let posts: Vec<Value> = {
        let mut v = Vec::new();
        for i in 0..4 {
            v.push(app.post_titled(&alice, &format!("p{i}")).await);
        }
        v
    };
    let id = |i: usize| posts[i]["id"].as_str().unwrap().to_owned();
    Mock::given(method("GET"))
        .and(path(format!("/api/recommend/{}", alice.id)))
        .and(query_param("offset", "0"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            id(2),
            "not-a-uuid",
            id(0),
            uuid::Uuid::new_v4().to_string(),
            id(3)
        ])))
        .mount(&rec)
        .await;

    let response = app
        .get_auth(
            "/api/v1/feed/unified?type=recommended&limit=2",
            &alice.token,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let page: Value = response.json().await.unwrap();
    assert_eq!(page["type"], "recommended");
    // Ids that are not UUIDs or name no post are skipped; the recommender's order is kept.
    assert_eq!(titles(&page), ["p2", "p0"]);
    let requests = rec.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    assert!(
        requests[0].url.query().unwrap().contains("n=3"),
        "{}",
        requests[0].url
    );
    assert!(
        page["next_cursor"].is_string(),
        "more ids were offered than the limit"
    );
}

#[tokio::test]
async fn recommended_falls_back_to_trending() {
    // Unset recommender.
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    app.post_titled(&alice, "p").await;
    let page: Value = app
        .get_auth("/api/v1/feed/unified?type=recommended", &alice.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["type"], "trending");
    assert_eq!(titles(&page), ["p"]);
}

#[tokio::test]
async fn a_failing_or_slow_recommender_falls_back_to_trending() {
    let rec = recommender().await;
    let rec_uri = rec.uri();
    let app = spawn_app_with(|c| {
        c.set("RECOMMENDER_URL", rec_uri)
            .set("RECOMMENDER_TIMEOUT_MS", "300");
    })
    .await;
    let alice = app.register("alice").await;
    app.post_titled(&alice, "p").await;

    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .mount(&rec)
        .await;
    let page: Value = app
        .get_auth("/api/v1/feed/unified?type=recommended", &alice.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["type"], "trending");
    assert_eq!(titles(&page), ["p"]);

    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!([]))
                .set_delay(Duration::from_secs(5)),
        )
        .mount(&rec)
        .await;
    let started = Instant::now();
    let page: Value = app
        .get_auth("/api/v1/feed/unified?type=recommended", &alice.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["type"], "trending");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the recommender's timeout bounds the wait"
    );
    assert_eq!(rec.received_requests().await.unwrap().len(), 2);
}
