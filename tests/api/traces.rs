//! The trace of a request, as Tempo would receive it: one tree per request, with the
//! contract's names and attributes (CONTRACT.md §3).

use std::collections::HashMap;

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{
    KIND_CLIENT, KIND_SERVER, PASSWORD, ReceivedSpan, STATUS_ERROR, TestApp, spawn_app,
    spawn_app_with, traceresponse,
};

fn root(spans: &[ReceivedSpan]) -> &ReceivedSpan {
    let roots: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.kind == KIND_SERVER).collect();
    assert_eq!(roots.len(), 1, "one SERVER span per trace: {spans:#?}");
    roots[0]
}

fn named<'a>(spans: &'a [ReceivedSpan], name: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.name == name).collect()
}

/// Every span descends from the root, by parent links inside the trace.
fn assert_one_tree(spans: &[ReceivedSpan]) {
    let root = root(spans);
    let by_id: HashMap<&str, &ReceivedSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    for span in spans {
        let mut current = span;
        let mut hops = 0;
        while current.span_id != root.span_id {
            current = by_id
                .get(current.parent_span_id.as_str())
                .unwrap_or_else(|| panic!("{} has a parent outside the trace", span.name));
            hops += 1;
            assert!(hops < 10);
        }
    }
}

async fn trace_of(app: &TestApp, response: &Response) -> Vec<ReceivedSpan> {
    let (trace_id, root_id, _) = traceresponse(response);
    let spans = app.otlp.trace(&trace_id).await;
    assert_eq!(
        root(&spans).span_id,
        root_id,
        "traceresponse names the root span"
    );
    spans
}

fn assert_db_span(span: &ReceivedSpan, app: &TestApp, operation: &str, table: &str) {
    assert_eq!(span.kind, KIND_CLIENT);
    assert_eq!(span.name, format!("{operation} {table}"));
    assert_eq!(span.str("db.system.name").as_deref(), Some("postgresql"));
    assert_eq!(span.str("db.operation.name").as_deref(), Some(operation));
    assert_eq!(span.str("db.collection.name").as_deref(), Some(table));
    assert_eq!(
        span.str("db.namespace").as_deref(),
        Some(app.db_name.as_str())
    );
    assert_eq!(span.str("server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(span.int("server.port"), Some(5432));
    let text = span.str("db.query.text").unwrap();
    assert!(text.to_uppercase().starts_with(operation), "{text}");
    assert!(!text.contains("binds"), "{text}");
}

#[tokio::test]
async fn a_feed_request_is_one_tree_with_cache_and_query_spans() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    app.post_titled(&alice, "first").await;

    // Miss: one read of the page and its stamps (miss), query, page write.
    let response = app.get("/api/v1/feed/unified?type=global&limit=5").await;
    assert_eq!(response.status(), StatusCode::OK);
    let spans = trace_of(&app, &response).await;
    assert_one_tree(&spans);
    let server = root(&spans);
    assert_eq!(server.name, "GET /api/v1/feed/unified");
    assert_eq!(server.str("http.request.method").as_deref(), Some("GET"));
    assert_eq!(
        server.str("http.route").as_deref(),
        Some("/api/v1/feed/unified")
    );
    assert_eq!(
        server.str("url.path").as_deref(),
        Some("/api/v1/feed/unified")
    );
    assert_eq!(server.int("http.response.status_code"), Some(200));
    assert_eq!(server.str("feed.type").as_deref(), Some("global"));
    assert_eq!(server.str("client.address").as_deref(), Some("127.0.0.1"));
    assert!(server.str("user_agent.original").is_some());
    assert!(
        server.parent_span_id.is_empty(),
        "a new trace starts at the server"
    );
    assert_ne!(server.status_code, STATUS_ERROR);

    let cache_reads = named(&spans, "MGET feed");
    assert_eq!(cache_reads.len(), 1, "the page and its stamps, together");
    let page_read = cache_reads[0];
    assert_eq!(page_read.kind, KIND_CLIENT);
    assert_eq!(page_read.str("db.system.name").as_deref(), Some("redis"));
    assert_eq!(page_read.str("db.operation.name").as_deref(), Some("MGET"));
    let key = page_read.str("cache.key").unwrap();
    assert!(key.starts_with(&app.redis_prefix) && key.contains(":global:"));
    assert_eq!(page_read.bool("cache.hit"), Some(false));
    assert_eq!(named(&spans, "SET feed").len(), 1);
    let selects = named(&spans, "SELECT posts");
    assert_eq!(selects.len(), 1);
    assert_db_span(selects[0], &app, "SELECT", "posts");
    assert!(selects[0].str("db.query.text").unwrap().contains("$1"));

    // Hit: no query at all.
    let response = app.get("/api/v1/feed/unified?type=global&limit=5").await;
    let spans = trace_of(&app, &response).await;
    assert_one_tree(&spans);
    let page_reads = named(&spans, "MGET feed");
    assert_eq!(page_reads.len(), 1, "a hit is one round trip");
    assert_eq!(page_reads[0].bool("cache.hit"), Some(true));
    assert!(named(&spans, "SELECT posts").is_empty());
    assert!(named(&spans, "SET feed").is_empty());
}

#[tokio::test]
async fn reading_and_creating_posts() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;

    let response = app
        .post_json(
            "/api/v1/posts",
            &json!({"title": "traced"}),
            Some(&alice.token),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let spans = trace_of(&app, &response).await;
    assert_one_tree(&spans);
    let server = root(&spans);
    assert_eq!(server.name, "POST /api/v1/posts");
    assert_eq!(
        server.str("user.id").as_deref(),
        Some(alice.id.as_str()),
        "authenticated requests name the user"
    );
    assert_eq!(server.int("http.response.status_code"), Some(201));
    assert_db_span(
        named(&spans, "SELECT auth_tokens")[0],
        &app,
        "SELECT",
        "auth_tokens",
    );
    assert_db_span(named(&spans, "INSERT posts")[0], &app, "INSERT", "posts");
    assert_eq!(
        named(&spans, "EVAL feed").len(),
        1,
        "what the post changed is stamped"
    );
    let post: Value = response.json().await.unwrap();

    let response = app
        .get(&format!("/api/v1/posts/{}", post["id"].as_str().unwrap()))
        .await;
    let spans = trace_of(&app, &response).await;
    assert_one_tree(&spans);
    let server = root(&spans);
    assert_eq!(server.name, "GET /api/v1/posts/{id}");
    assert_eq!(
        server.str("http.route").as_deref(),
        Some("/api/v1/posts/{id}")
    );
    assert!(server.str("user.id").is_none());
    assert_db_span(named(&spans, "SELECT posts")[0], &app, "SELECT", "posts");
}

#[tokio::test]
async fn client_errors_are_not_span_errors_and_unmatched_routes_have_a_fixed_name() {
    let app = spawn_app().await;
    let response = app
        .get(&format!("/api/v1/posts/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let spans = trace_of(&app, &response).await;
    let server = root(&spans);
    assert_eq!(server.int("http.response.status_code"), Some(404));
    assert_ne!(server.status_code, STATUS_ERROR);
    assert!(server.events.is_empty());

    let response = app.get("/no/such/route/12345").await;
    let spans = trace_of(&app, &response).await;
    let server = root(&spans);
    assert_eq!(server.name, "GET", "never the raw path");
    assert!(server.str("http.route").is_none());
}

#[tokio::test]
async fn a_server_error_marks_the_span_and_records_an_exception() {
    let app = spawn_app_with(|c| {
        c.set("DB_POOL_TIMEOUT_MS", "300");
    })
    .await;
    let alice = app.register("alice").await;
    let post = app.post_titled(&alice, "p").await;
    app.refuse_database();

    let response = app
        .get(&format!("/api/v1/posts/{}", post["id"].as_str().unwrap()))
        .await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let (trace_id, _, _) = traceresponse(&response);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["error"]["trace_id"],
        trace_id.as_str(),
        "the error body names the trace"
    );
    let spans = app.otlp.trace(&trace_id).await;
    let server = root(&spans);
    assert_eq!(server.status_code, STATUS_ERROR);
    assert_eq!(server.int("http.response.status_code"), Some(503));
    assert_eq!(server.str("error.type").as_deref(), Some("503"));
    let (name, attrs) = server
        .events
        .iter()
        .find(|(n, _)| n == "exception")
        .expect("an exception event");
    assert_eq!(name, "exception");
    assert!(attrs.contains_key("exception.type") && attrs.contains_key("exception.message"));
    // If the failing query ran, its span says so too.
    for span in spans
        .iter()
        .filter(|s| s.str("db.system.name").as_deref() == Some("postgresql"))
    {
        assert_eq!(span.status_code, STATUS_ERROR, "{}", span.name);
        assert!(span.str("error.type").is_some());
    }
    app.accept_database();
}

#[tokio::test]
async fn an_incoming_traceparent_is_continued() {
    let app = spawn_app().await;
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let response = app
        .api
        .get(app.url("/api/v1/feed/unified"))
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .header("tracestate", "vendor=opaque,other=1")
        .send()
        .await
        .unwrap();
    let (trace_id, _, flags) = traceresponse(&response);
    assert_eq!(trace_id, caller_trace);
    assert_eq!(flags, "01");
    let spans = app.otlp.trace(caller_trace).await;
    assert_one_tree(&spans);
    let server = root(&spans);
    assert_eq!(server.parent_span_id, caller_span);
    assert_eq!(server.trace_state, "vendor=opaque,other=1");
    assert_eq!(server.flags & 0x300, 0x300, "the parent is flagged remote");
}

#[tokio::test]
async fn an_unsampled_parent_is_obeyed() {
    let app = spawn_app().await;
    let unsampled = "5bf92f3577b34da6a3ce929d0e0e4736";
    let response = app
        .api
        .get(app.url("/health"))
        .header("traceparent", format!("00-{unsampled}-00f067aa0ba902b7-00"))
        .send()
        .await
        .unwrap();
    let (trace_id, _, flags) = traceresponse(&response);
    assert_eq!(trace_id, unsampled);
    assert_eq!(flags, "00");
    // A sampled request after it: once its spans arrive, the unsampled ones would have too.
    let marker = app.get("/health").await;
    let (marker_trace, _, _) = traceresponse(&marker);
    app.otlp.trace(&marker_trace).await;
    assert!(
        app.otlp
            .spans()
            .await
            .iter()
            .all(|s| s.trace_id != unsampled)
    );
}

#[tokio::test]
async fn an_invalid_traceparent_starts_a_new_trace() {
    let app = spawn_app().await;
    for bad in [
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra!",
    ] {
        let response = app
            .api
            .get(app.url("/health"))
            .header("traceparent", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let (trace_id, _, _) = traceresponse(&response);
        assert_ne!(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
        let spans = app.otlp.trace(&trace_id).await;
        assert!(root(&spans).parent_span_id.is_empty(), "{bad}");
    }
}

#[tokio::test]
async fn the_recommender_call_is_a_client_span_and_carries_its_traceparent() {
    let recommender = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&recommender)
        .await;
    let uri = recommender.uri();
    let app = spawn_app_with(|c| {
        c.set("RECOMMENDER_URL", uri);
    })
    .await;
    let alice = app.register("alice").await;
    let response = app
        .get_auth("/api/v1/feed/unified?type=recommended", &alice.token)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let spans = trace_of(&app, &response).await;
    assert_one_tree(&spans);
    assert_eq!(
        root(&spans).str("feed.type").as_deref(),
        Some("recommended")
    );
    let client = named(&spans, "GET recommender");
    assert_eq!(client.len(), 1, "{spans:#?}");
    let client = client[0];
    assert_eq!(client.kind, KIND_CLIENT);
    assert_eq!(client.str("http.request.method").as_deref(), Some("GET"));
    assert_eq!(client.int("http.response.status_code"), Some(200));
    assert_eq!(client.str("server.address").as_deref(), Some("127.0.0.1"));
    let port = recommender.address().port();
    assert_eq!(client.int("server.port"), Some(i64::from(port)));
    assert!(client.str("url.full").unwrap().starts_with(&format!(
        "{}/api/recommend/{}",
        recommender.uri(),
        alice.id
    )));

    let seen = recommender.received_requests().await.unwrap();
    let traceparent = seen[0]
        .headers
        .get("traceparent")
        .expect("traceparent sent")
        .to_str()
        .unwrap();
    assert_eq!(
        traceparent,
        format!("00-{}-{}-01", client.trace_id, client.span_id)
    );
}

#[tokio::test]
async fn no_bind_value_password_or_token_reaches_a_span() {
    let app = spawn_app().await;
    let canary = "zq-bind-canary-7731";
    let user = app.register("canary_user").await;
    app.post_titled(&user, canary).await;
    let response = app
        .post_json(
            "/api/v1/auth/login",
            &json!({"login": "canary_user", "password": PASSWORD}),
            None,
        )
        .await;
    let login: Value = response.json().await.unwrap();
    let login_token = login["token"].as_str().unwrap().to_owned();
    app.get(&format!("/api/v1/search?q={canary}")).await;
    let comment_path = "/api/v1/feed/unified?type=timeline";
    let last = app.get_auth(comment_path, &user.token).await;
    let (last_trace, _, _) = traceresponse(&last);
    app.otlp.trace(&last_trace).await;

    let spans = app.otlp.spans().await;
    assert!(spans.len() > 10);
    assert!(spans.iter().any(|s| s.name == "INSERT posts"));
    for span in &spans {
        for value in span.all_strings() {
            for secret in [
                canary,
                PASSWORD,
                user.token.as_str(),
                login_token.as_str(),
                "canary_user@example.com",
            ] {
                assert!(
                    !value.contains(secret),
                    "{} leaks {secret:?} in {value:?}",
                    span.name
                );
            }
        }
        assert!(
            !span
                .attributes
                .contains_key("http.request.header.authorization")
        );
    }
}

#[tokio::test]
async fn resource_and_export_request_format() {
    let app = spawn_app_with(|c| {
        c.set("OTEL_SERVICE_NAME", "sidechain-test")
            .set("OTEL_ENVIRONMENT", "ci")
            .set("OTEL_RESOURCE_ATTRIBUTES", "team=audio,region=eu%2Dwest")
            .set("OTEL_EXPORTER_OTLP_HEADERS", "X-Scope-OrgID=tenant-7");
    })
    .await;
    let response = app.get("/health").await;
    let spans = trace_of(&app, &response).await;
    let resource = &root(&spans).resource;
    let s = |k: &str| match resource.get(k) {
        Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(v)) => v.clone(),
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(s("service.name"), "sidechain-test");
    assert_eq!(s("service.version"), env!("CARGO_PKG_VERSION"));
    assert!(uuid::Uuid::parse_str(&s("service.instance.id")).is_ok());
    assert_eq!(s("deployment.environment.name"), "ci");
    assert!(!s("host.name").is_empty());
    assert_eq!(s("telemetry.sdk.language"), "rust");
    assert_eq!(s("telemetry.sdk.name"), "opentelemetry");
    assert!(!s("telemetry.sdk.version").is_empty());
    assert_eq!(s("team"), "audio");
    assert_eq!(s("region"), "eu-west");

    let requests = app.otlp.server.received_requests().await.unwrap();
    let request = &requests[0];
    assert_eq!(request.method.as_str(), "POST");
    assert_eq!(request.url.path(), "/v1/traces");
    assert_eq!(request.headers["content-type"], "application/x-protobuf");
    assert_eq!(request.headers["content-encoding"], "gzip");
    assert_eq!(request.headers["x-scope-orgid"], "tenant-7");
}

#[tokio::test]
async fn compression_can_be_turned_off() {
    let app = spawn_app_with(|c| {
        c.set("OTEL_EXPORTER_OTLP_COMPRESSION", "none");
    })
    .await;
    let response = app.get("/health").await;
    trace_of(&app, &response).await;
    let requests = app.otlp.server.received_requests().await.unwrap();
    assert!(requests[0].headers.get("content-encoding").is_none());
    assert!(!requests[0].body.starts_with(&[0x1f, 0x8b]), "not gzip");
}

#[tokio::test]
async fn with_otel_disabled_nothing_is_traced_or_exported() {
    let app = spawn_app_with(|c| {
        c.set("OTEL_ENABLED", "false");
    })
    .await;
    let alice = app.register("alice").await;
    app.post_titled(&alice, "untraced").await;
    let response = app.get("/api/v1/posts/not-a-uuid").await;
    assert!(response.headers().get("traceresponse").is_none());
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].get("trace_id").is_none());
    // Logs and metrics still work.
    app.logs
        .wait_for("an access line", |l| {
            l["msg"] == "request completed" && l["status"] == 404
        })
        .await;
    assert!(app.logs.lines().iter().all(|l| l.get("trace_id").is_none()));
    assert!(
        app.logs
            .lines()
            .iter()
            .all(|l| l.get("trace_sampled").is_none()),
        "trace_sampled only when tracing is on"
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("http_server_request_duration_seconds_count"));
    // Absence cannot be polled for: give a running exporter ample time (the test schedule
    // delay is 50 ms) to have sent something.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        app.otlp
            .server
            .received_requests()
            .await
            .unwrap()
            .is_empty()
    );
}

/// Head sampling (`OTEL_TRACE_SAMPLER_RATE`): a trace is exported whole or not at all, by the
/// ratio rule on its trace id, and every exported span carries the ratio as its sampling
/// probability (CONTRACT.md §3 "Sampling weight"); a caller's sampled `traceparent` is obeyed,
/// and its spans say 1 (its decision's probability is not known here).
#[tokio::test]
async fn head_sampling_keeps_its_share_and_weighs_every_span() {
    const RATE: f64 = 0.5;
    let app = spawn_app_with(|c| {
        c.set("OTEL_TRACE_SAMPLER_RATE", RATE.to_string());
    })
    .await;
    let alice = app.register("alice").await;
    let post = app.post_titled(&alice, "weighed").await;
    let post_path = format!("/api/v1/posts/{}", post["id"].as_str().unwrap());
    let mut sampled = Vec::new();
    let mut dropped = Vec::new();
    for _ in 0..80 {
        let response = app.get(&post_path).await;
        assert_eq!(response.status(), StatusCode::OK);
        let (trace_id, _, flag) = traceresponse(&response);
        let low = u64::from_str_radix(&trace_id[16..], 16).unwrap();
        let by_rule = (low >> 1) < (RATE * (1u64 << 63) as f64) as u64;
        assert_eq!(flag == "01", by_rule, "the ratio rule decides {trace_id}");
        if by_rule {
            sampled.push(trace_id);
        } else {
            dropped.push(trace_id);
        }
    }
    assert!(sampled.len() >= 20 && dropped.len() >= 20, "{sampled:?}");
    let remote = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = app
        .api
        .get(app.url(&post_path))
        .header("traceparent", format!("00-{remote}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(traceresponse(&response).2, "01");
    let continued = app.otlp.trace(remote).await;
    for span in &continued {
        assert_eq!(span.double("sampling.ratio"), Some(1.0), "{}", span.name);
    }
    for trace_id in &sampled {
        let spans = app.otlp.trace(trace_id).await;
        assert_one_tree(&spans);
        for span in &spans {
            assert_eq!(span.double("sampling.ratio"), Some(RATE), "{}", span.name);
        }
    }
    let arrived = app.otlp.spans().await;
    for trace_id in &dropped {
        assert!(
            arrived.iter().all(|s| &s.trace_id != trace_id),
            "{trace_id} was sampled out"
        );
    }
}
