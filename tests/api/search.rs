use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error, spawn_app, traceresponse};

fn encode(q: &str) -> String {
    url::form_urlencoded::byte_serialize(q.as_bytes()).collect()
}

async fn search(app: &TestApp, q: &str) -> Value {
    let response = app.get(&format!("/api/v1/search?q={}", encode(q))).await;
    assert_eq!(response.status(), StatusCode::OK, "{q}");
    response.json().await.unwrap()
}

fn titles(body: &Value) -> Vec<String> {
    body["posts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["title"].as_str().unwrap().to_owned())
        .collect()
}

/// Every page of a search, following `next_cursor`; asserts each page's size bound.
async fn all_pages(app: &TestApp, q: &str, limit: usize) -> Vec<Value> {
    let mut posts = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let mut url = format!("/api/v1/search?q={}&limit={limit}", encode(q));
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let response = app.get(&url).await;
        assert_eq!(response.status(), StatusCode::OK, "{url}");
        let page: Value = response.json().await.unwrap();
        let items = page["posts"].as_array().unwrap();
        assert!(items.len() <= limit);
        if cursor.is_some() {
            assert_eq!(
                page["users"],
                json!([]),
                "users come with the first page only"
            );
        }
        posts.extend(items.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return posts,
        }
    }
    panic!("pagination did not end");
}

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

    let body = search(&app, "trap").await;
    let mut titles = titles(&body);
    titles.sort();
    assert_eq!(titles, ["Dark TRAP beat", "smooth keys"]);
    let users: Vec<&str> = body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["TrapLord"]);
    assert_eq!(body["next_cursor"], Value::Null);
}

#[tokio::test]
async fn words_are_stemmed_phrases_kept_and_exclusions_honoured() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    app.post_titled(&alice, "Dusty loop").await;
    app.post_titled(&alice, "warm tape groove").await;
    app.post_titled(&alice, "tape, then a warm groove").await;
    app.post_titled(&alice, "dark trap sketch").await;
    app.post_titled(&alice, "dark house sketch").await;
    app.create_post(
        &alice,
        json!({"title": "untitled", "description": "a chopped vocal idea"}),
    )
    .await;

    assert_eq!(titles(&search(&app, "loops").await), ["Dusty loop"]);
    assert_eq!(titles(&search(&app, "Looping").await), ["Dusty loop"]);
    assert_eq!(
        titles(&search(&app, "\"warm tape\"").await),
        ["warm tape groove"]
    );
    assert_eq!(
        titles(&search(&app, "dark -trap").await),
        ["dark house sketch"]
    );
    let mut either = titles(&search(&app, "trap or house").await);
    either.sort();
    assert_eq!(either, ["dark house sketch", "dark trap sketch"]);
    // Descriptions are searched too.
    assert_eq!(titles(&search(&app, "vocals").await), ["untitled"]);
}

#[tokio::test]
async fn typos_and_partial_words_find_titles_by_similarity() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    app.post_titled(&alice, "Midnight melody").await;
    app.post_titled(&alice, "synthwave sunrise").await;
    app.post_titled(&alice, "drum break").await;

    assert_eq!(titles(&search(&app, "melodyy").await), ["Midnight melody"]);
    assert_eq!(titles(&search(&app, "midnite").await), ["Midnight melody"]);
    assert_eq!(titles(&search(&app, "synthw").await), ["synthwave sunrise"]);
    assert_eq!(titles(&search(&app, "zzqqxx").await), Vec::<String>::new());
}

#[tokio::test]
async fn a_title_match_ranks_above_a_description_match() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    app.post_titled(&alice, "Rainy keys").await;
    // Newer, so recency alone would put it first.
    app.create_post(
        &alice,
        json!({"title": "afternoon sketch", "description": "recorded on a rainy day"}),
    )
    .await;
    app.create_post(&alice, json!({"title": "tagged", "tags": ["rainy"]}))
        .await;

    assert_eq!(
        titles(&search(&app, "rainy").await),
        ["Rainy keys", "tagged", "afternoon sketch"]
    );
}

#[tokio::test]
async fn an_old_title_match_outranks_many_newer_description_matches() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let old = app.post_titled(&alice, "Loop from the vault").await;
    app.sql(&format!(
        "UPDATE posts SET created_at = now() - interval '40 days' WHERE id = '{}'",
        old["id"].as_str().unwrap()
    ));
    // Newer description matches, more than a page.
    app.sql(&format!(
        "INSERT INTO posts (id, author_id, title, description, created_at) \
         SELECT md5('d' || i)::uuid, '{}', 'take ' || i, 'a loop of mine', \
                now() - i * interval '1 minute' \
         FROM generate_series(1, 160) AS i",
        alice.id
    ));
    // A much older title match loses to them.
    let older = app.post_titled(&alice, "loop from the attic").await;
    app.sql(&format!(
        "UPDATE posts SET created_at = now() - interval '200 days' WHERE id = '{}'",
        older["id"].as_str().unwrap()
    ));

    for limit in [1, 3] {
        let page: Value = app
            .get(&format!("/api/v1/search?q=loop&limit={limit}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(titles(&page)[0], "Loop from the vault", "limit {limit}");
        let posts = all_pages(&app, "loop", limit).await;
        assert_eq!(posts.len(), 162);
        assert_eq!(posts[0]["title"], "Loop from the vault");
        assert_eq!(posts[161]["title"], "loop from the attic");
        let ids: HashSet<&str> = posts.iter().map(|p| p["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 162);
    }
}

#[tokio::test]
async fn pages_over_a_catalogue_larger_than_the_windows_are_exact_and_complete() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    // 6,000 posts an hour apart: a title match every third, a description match every third.
    app.sql(&format!(
        "INSERT INTO posts (id, author_id, title, description, created_at) \
         SELECT md5('w' || i)::uuid, '{}', \
                CASE WHEN i % 3 = 0 THEN 'loop take ' || i ELSE 'filler ' || i END, \
                CASE WHEN i % 3 = 1 THEN 'a loop in the description' END, \
                now() - i * interval '1 hour' \
         FROM generate_series(1, 6000) AS i",
        alice.id
    ));
    app.sql("ANALYZE posts");

    // The newest title matches first: a description match would have to be 70 days newer.
    let first: Value = app
        .get("/api/v1/search?q=loop&limit=50")
        .await
        .json()
        .await
        .unwrap();
    let expected: Vec<String> = (1..=50).map(|k| format!("loop take {}", 3 * k)).collect();
    assert_eq!(titles(&first), expected);

    let posts = all_pages(&app, "loop", 100).await;
    let ids: HashSet<&str> = posts.iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(posts.len(), 4000);
    assert_eq!(ids.len(), 4000);
}

#[tokio::test]
async fn pagination_walks_every_result_once() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let mut expected = HashSet::new();
    for i in 0..13 {
        let post = match i % 3 {
            0 => app.post_titled(&alice, &format!("loop {i}")).await,
            1 => {
                app.create_post(
                    &alice,
                    json!({"title": format!("take {i}"), "tags": ["loop"]}),
                )
                .await
            }
            _ => {
                app.create_post(
                    &alice,
                    json!({"title": format!("idea {i}"), "description": "a loop"}),
                )
                .await
            }
        };
        expected.insert(post["id"].as_str().unwrap().to_owned());
    }
    app.post_titled(&alice, "unrelated").await;
    // Same timestamps, so that the id breaks ties between equal scores.
    app.sql("UPDATE posts SET created_at = date_trunc('hour', now())");

    for limit in [1, 2, 5, 13, 20] {
        let posts = all_pages(&app, "loop", limit).await;
        let ids: Vec<String> = posts
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids.len(), 13, "limit {limit}");
        assert_eq!(ids.iter().cloned().collect::<HashSet<_>>(), expected);
        assert_eq!(ids, {
            let first = all_pages(&app, "loop", 20).await;
            first
                .iter()
                .map(|p| p["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        });
    }
    // The trigram fallback pages the same way.
    let typo = all_pages(&app, "loopp", 4).await;
    let titles: HashSet<&str> = typo.iter().map(|p| p["title"].as_str().unwrap()).collect();
    assert_eq!(titles.len(), 5, "{titles:?}");
    assert!(titles.iter().all(|t| t.starts_with("loop")));
}

#[tokio::test]
async fn users_are_found_by_name_prefix_and_similarity() {
    let app = spawn_app().await;
    app.register("beatsmith").await;
    app.register("BeatMaker").await;
    app.register("smith").await;
    app.register("producer").await;

    let names = |body: &Value| -> Vec<String> {
        body["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["username"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut beat = names(&search(&app, "beat").await);
    beat.sort();
    assert_eq!(beat, ["BeatMaker", "beatsmith"]);
    // The prefix match first, the merely similar after it.
    assert_eq!(
        names(&search(&app, "BEATM").await),
        ["BeatMaker", "beatsmith"]
    );
    assert_eq!(names(&search(&app, "producr").await), ["producer"]);
    // The prefix is a prefix: metacharacters are literal.
    assert_eq!(names(&search(&app, "b_at").await), Vec::<String>::new());
}

#[tokio::test]
async fn pattern_metacharacters_are_literal() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    app.post_titled(&alice, "100% analog").await;
    app.post_titled(&alice, "digital").await;
    for (q, expected) in [("100%", 1), ("%25", 0), ("' OR '1'='1", 0), ("analog%", 1)] {
        assert_eq!(titles(&search(&app, q).await).len(), expected, "{q}");
    }
}

#[tokio::test]
async fn empty_long_wordless_queries_and_foreign_cursors_are_400() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    for i in 0..3 {
        app.post_titled(&alice, &format!("loop {i}")).await;
    }
    let mut queries: Vec<String> = [
        "",
        "?q=",
        "?q=%20%20",
        "?q=ok&limit=0",
        "?q=-",
        "?q=%22%22",
        "?q=or",
        "?q=-loop",
        "?q=%25",
        "?q=_",
        "?q=%5C",
    ]
    .map(String::from)
    .to_vec();
    queries.push(format!("?q={}", "a".repeat(101)));
    for query in &queries {
        let response = app.get(&format!("/api/v1/search{query}")).await;
        let code = if query.contains("limit") {
            "invalid_limit"
        } else {
            "invalid_query"
        };
        assert_error(response, StatusCode::BAD_REQUEST, code).await;
    }

    let page: Value = app
        .get("/api/v1/search?q=loop&limit=1")
        .await
        .json()
        .await
        .unwrap();
    let search_cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let feed: Value = app
        .get("/api/v1/feed/unified?type=global&limit=1")
        .await
        .json()
        .await
        .unwrap();
    let time_cursor = feed["next_cursor"].as_str().unwrap().to_owned();
    for path in [
        // A cursor of another listing, of another query, or none of ours.
        format!("/api/v1/search?q=loop&cursor={time_cursor}"),
        format!("/api/v1/search?q=loops&cursor={search_cursor}"),
        "/api/v1/search?q=loop&cursor=s.f.zz".to_owned(),
        format!(
            "/api/v1/posts/{}/comments?cursor={search_cursor}",
            page["posts"][0]["id"].as_str().unwrap()
        ),
        format!("/api/v1/users/alice/posts?cursor={search_cursor}"),
    ] {
        assert_error(
            app.get(&path).await,
            StatusCode::BAD_REQUEST,
            "invalid_cursor",
        )
        .await;
    }
    let next = app
        .get(&format!(
            "/api/v1/search?q=loop&limit=1&cursor={search_cursor}"
        ))
        .await;
    assert_eq!(next.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_search_span_names_its_strategy_and_counts_without_the_query() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    app.post_titled(&alice, "Midnight melody").await;
    app.post_titled(&alice, "melody two").await;

    for (q, strategy, posts) in [("melodies", "full_text", 2), ("midnite", "trigram", 1)] {
        let response = app.get(&format!("/api/v1/search?q={q}")).await;
        let (trace_id, _, _) = traceresponse(&response);
        let spans = app.otlp.trace(&trace_id).await;
        let span = spans
            .iter()
            .find(|s| s.name == "search")
            .unwrap_or_else(|| panic!("no search span: {spans:?}"));
        assert_eq!(span.str("search.strategy").as_deref(), Some(strategy));
        assert_eq!(span.int("search.posts.returned"), Some(posts));
        assert_eq!(span.int("search.users.returned"), Some(0));
        let queries: Vec<_> = spans
            .iter()
            .filter(|s| s.parent_span_id == span.span_id)
            .filter_map(|s| s.str("db.query.text"))
            .collect();
        assert!(queries.iter().any(|t| t.contains("$1")), "{queries:?}");
        for s in &spans {
            for value in s.all_strings() {
                assert!(!value.contains(q), "{q} in {}: {value}", s.name);
            }
        }
    }
}
