//! The feed cache's consistency rules (src/cache/feed.rs), through HTTP against real Postgres
//! and Redis: a user sees their own writes at once, nobody sees a deleted post once the delete
//! has returned, other readers' staleness is bounded by `FEED_CACHE_TTL_S`; a hit is one Redis
//! round trip; the hit/miss counters count pages.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{TestApp, TestUser, poll_within, spawn_app, spawn_app_with, traceresponse};

/// A page of a feed, read with `token` when given.
async fn feed(app: &TestApp, query: &str, token: Option<&str>) -> Value {
    let path = format!("/api/v1/feed/unified?{query}");
    let response = match token {
        Some(t) => app.get_auth(&path, t).await,
        None => app.get(&path).await,
    };
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    response.json().await.unwrap()
}

fn item<'a>(page: &'a Value, id: &str) -> Option<&'a Value> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
}

fn has(page: &Value, id: &str) -> bool {
    item(page, id).is_some()
}

fn id_of(post: &Value) -> String {
    post["id"].as_str().unwrap().to_owned()
}

/// Inserts a post behind the app's back, so that a page that shows it was built after, and a
/// page that does not was served from Redis.
fn sneak_post(app: &TestApp, author: &TestUser, title: &str) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    app.sql(&format!(
        "INSERT INTO posts (id, author_id, title) VALUES ('{id}', '{}', '{title}')",
        author.id
    ));
    id
}

async fn metric(app: &TestApp, needle: &str) -> f64 {
    let text = app.get("/metrics").await.text().await.unwrap();
    text.lines()
        .find(|l| l.starts_with(needle))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().unwrap())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_user_sees_their_own_like_comment_and_post_at_once() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let post = id_of(&app.post_titled(&bob, "bob's loop").await);
    assert_eq!(
        app.post("/api/v1/users/bob/follow", Some(&alice.token))
            .await
            .status(),
        204
    );
    let kinds = ["type=global", "type=trending", "type=timeline"];
    for kind in kinds {
        feed(&app, kind, Some(&alice.token)).await;
    }
    // Served from Redis from now on: a row written behind the app's back is not seen.
    let sneaky = sneak_post(&app, &bob, "sneaky");
    for kind in kinds {
        assert!(!has(&feed(&app, kind, Some(&alice.token)).await, &sneaky));
    }

    // Her like: every feed she reads shows it at once.
    let like = format!("/api/v1/posts/{post}/like");
    assert_eq!(app.post(&like, Some(&alice.token)).await.status(), 204);
    for kind in kinds {
        let page = feed(&app, kind, Some(&alice.token)).await;
        assert_eq!(item(&page, &post).unwrap()["like_count"], 1, "{kind}");
    }

    // Her comment count.
    let response = app
        .post_json(
            &format!("/api/v1/posts/{post}/comments"),
            &serde_json::json!({"body": "nice"}),
            Some(&alice.token),
        )
        .await;
    assert_eq!(response.status(), 201);
    for kind in kinds {
        let page = feed(&app, kind, Some(&alice.token)).await;
        assert_eq!(item(&page, &post).unwrap()["comment_count"], 1, "{kind}");
    }

    // Her unlike.
    assert_eq!(app.delete(&like, Some(&alice.token)).await.status(), 204);
    let page = feed(&app, "type=global", Some(&alice.token)).await;
    assert_eq!(item(&page, &post).unwrap()["like_count"], 0);

    // Her new post, on her timeline and on global.
    let mine = id_of(&app.post_titled(&alice, "alice's first").await);
    for kind in ["type=global", "type=timeline"] {
        let page = feed(&app, kind, Some(&alice.token)).await;
        assert_eq!(page["items"][0]["id"], mine.as_str(), "{kind}");
    }

    // Her unfollow takes bob off her timeline at once.
    assert_eq!(
        app.delete("/api/v1/users/bob/follow", Some(&alice.token))
            .await
            .status(),
        204
    );
    let page = feed(&app, "type=timeline", Some(&alice.token)).await;
    assert!(!has(&page, &post));
    assert!(has(&page, &mine));
}

#[tokio::test]
async fn others_see_counts_and_new_posts_within_the_ttl() {
    let app = spawn_app_with(|c| {
        c.set("FEED_CACHE_TTL_S", "2");
    })
    .await;
    let alice = app.register("alice").await;
    let carol = app.register("carol").await;
    let post = id_of(&app.post_titled(&alice, "the loop").await);
    assert_eq!(
        app.post("/api/v1/users/alice/follow", Some(&carol.token))
            .await
            .status(),
        204
    );
    feed(&app, "type=global", None).await;
    feed(&app, "type=timeline", Some(&carol.token)).await;

    // Alice's like does not throw away the pages others read: they are served from Redis,
    // with the old count, until they expire.
    let like = format!("/api/v1/posts/{post}/like");
    assert_eq!(app.post(&like, Some(&alice.token)).await.status(), 204);
    let page = feed(&app, "type=global", None).await;
    assert_eq!(item(&page, &post).unwrap()["like_count"], 0, "cached");
    poll_within(
        "the like count for others, within FEED_CACHE_TTL_S",
        Duration::from_secs(2 + 2),
        || async {
            let anonymous = feed(&app, "type=global", None).await;
            let timeline = feed(&app, "type=timeline", Some(&carol.token)).await;
            let fresh = |p: &Value| item(p, &post).unwrap()["like_count"] == 1;
            (fresh(&anonymous) && fresh(&timeline)).then_some(())
        },
    )
    .await;

    // A new post: its author sees it at once; others on global and on their timelines within
    // the TTL, not necessarily at once.
    let newer = id_of(&app.post_titled(&alice, "newer").await);
    let page = feed(&app, "type=global", Some(&alice.token)).await;
    assert_eq!(page["items"][0]["id"], newer.as_str());
    poll_within(
        "alice's new post on global and carol's timeline, within FEED_CACHE_TTL_S",
        Duration::from_secs(2 + 2),
        || async {
            let global = feed(&app, "type=global", None).await;
            let timeline = feed(&app, "type=timeline", Some(&carol.token)).await;
            (has(&global, &newer) && has(&timeline, &newer)).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn nobody_sees_a_deleted_post_once_the_delete_returns() {
    let app = spawn_app().await;
    let bob = app.register("bob").await;
    let dave = app.register("dave").await;
    let doomed = id_of(&app.post_titled(&bob, "doomed").await);
    let mut titles = Vec::new();
    for i in 0..3 {
        titles.push(id_of(&app.post_titled(&bob, &format!("later {i}")).await));
    }
    assert_eq!(
        app.post("/api/v1/users/bob/follow", Some(&dave.token))
            .await
            .status(),
        204
    );
    // The doomed post is on the second page of global (limit 2) and on every other feed.
    let first = feed(&app, "type=global&limit=2", None).await;
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let reads: Vec<(String, Option<&str>)> = vec![
        (format!("type=global&limit=2&cursor={cursor}"), None),
        ("type=global".into(), None),
        ("type=trending".into(), None),
        ("type=global".into(), Some(dave.token.as_str())),
        ("type=trending".into(), Some(dave.token.as_str())),
        ("type=timeline".into(), Some(dave.token.as_str())),
        ("type=recommended".into(), Some(dave.token.as_str())),
    ];
    for (query, token) in &reads {
        assert!(has(&feed(&app, query, *token).await, &doomed), "{query}");
    }
    // Cached: a sneaked row is not seen.
    let sneaky = sneak_post(&app, &bob, "sneaky");
    assert!(!has(&feed(&app, "type=global", None).await, &sneaky));

    assert_eq!(
        app.delete(&format!("/api/v1/posts/{doomed}"), Some(&bob.token))
            .await
            .status(),
        204
    );
    for (query, token) in &reads {
        assert!(!has(&feed(&app, query, *token).await, &doomed), "{query}");
    }
}

#[tokio::test]
async fn a_hit_is_one_redis_round_trip_and_a_stored_page_is_a_feed_cached_event() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    for i in 0..3 {
        app.post_titled(&alice, &format!("p{i}")).await;
    }
    let hits_before = metric(
        &app,
        r#"cache_requests_total{operation="GET",result="hit",feed_type="trending"}"#,
    )
    .await;
    let misses_before = metric(
        &app,
        r#"cache_requests_total{operation="GET",result="miss",feed_type="trending"}"#,
    )
    .await;

    let miss = app.get("/api/v1/feed/unified?type=trending").await;
    let (miss_trace, _, _) = traceresponse(&miss);
    let body = miss.text().await.unwrap();
    let hit = app.get("/api/v1/feed/unified?type=trending").await;
    let (hit_trace, _, _) = traceresponse(&hit);
    assert_eq!(hit.text().await.unwrap(), body);

    let cache_spans = |spans: Vec<crate::helpers::ReceivedSpan>| -> Vec<_> {
        spans
            .into_iter()
            .filter(|s| s.str("db.system.name").as_deref() == Some("redis"))
            .collect()
    };
    // The miss: one MGET (page, clock, stamps) that missed, then the SET that stored the page.
    let spans = cache_spans(app.otlp.trace(&miss_trace).await);
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"MGET feed") && names.contains(&"SET feed"));
    let mget = spans.iter().find(|s| s.name == "MGET feed").unwrap();
    assert_eq!(mget.bool("cache.hit"), Some(false));
    assert!(
        mget.str("cache.key")
            .unwrap()
            .contains("feed:page:trending")
    );
    let set = spans.iter().find(|s| s.name == "SET feed").unwrap();
    let (event, attributes) = set
        .events
        .iter()
        .find(|(name, _)| name == "feed.cached")
        .expect("feed.cached on the SET span");
    assert_eq!(event, "feed.cached");
    use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
    assert_eq!(
        attributes.get("feed.type"),
        Some(&AnyValue::StringValue("trending".into()))
    );
    assert_eq!(
        attributes.get("feed.item_count"),
        Some(&AnyValue::IntValue(3))
    );
    assert_eq!(
        attributes.get("feed.bytes"),
        Some(&AnyValue::IntValue(body.len() as i64))
    );

    // The hit: one Redis operation, nothing else.
    let spans = cache_spans(app.otlp.trace(&hit_trace).await);
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(spans[0].name, "MGET feed");
    assert_eq!(spans[0].bool("cache.hit"), Some(true));

    // One page asked for, one count: the stamps fetched with it are not counted.
    let hits = metric(
        &app,
        r#"cache_requests_total{operation="GET",result="hit",feed_type="trending"}"#,
    )
    .await;
    let misses = metric(
        &app,
        r#"cache_requests_total{operation="GET",result="miss",feed_type="trending"}"#,
    )
    .await;
    assert_eq!((hits - hits_before, misses - misses_before), (1.0, 1.0));
}

#[tokio::test]
async fn feed_cache_ttl_zero_turns_the_cache_off() {
    let app = spawn_app_with(|c| {
        c.set("FEED_CACHE_TTL_S", "0");
    })
    .await;
    let alice = app.register("alice").await;
    app.post_titled(&alice, "first").await;
    feed(&app, "type=global", None).await;
    let sneaky = sneak_post(&app, &alice, "sneaky");
    assert!(has(&feed(&app, "type=global", None).await, &sneaky));

    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(
        !text.contains(r#"feed_type="global""#),
        "no page was asked of Redis"
    );
    let redis_url =
        std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let client = deadpool_redis::redis::Client::open(redis_url).unwrap();
    let mut conn = client.get_connection().unwrap();
    // The feed cache's keys only: registering counts against the client address
    // (`register:addr:…`), which is no feed state.
    let keys: Vec<String> = deadpool_redis::redis::cmd("KEYS")
        .arg(format!("{}feed:*", app.redis_prefix))
        .query(&mut conn)
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}
