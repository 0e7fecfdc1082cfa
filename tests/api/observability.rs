//! Logs and metrics that lead to traces (CONTRACT.md §4 and §5): every log line and every
//! latency exemplar names the exact trace.

use std::io::Write;
use std::process::{Command, Stdio};

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{KIND_SERVER, PASSWORD, TestApp, spawn_app, spawn_app_with};

fn ids(response: &Response) -> (String, String) {
    let value = response.headers()["traceresponse"]
        .to_str()
        .unwrap()
        .to_owned();
    let parts: Vec<&str> = value.split('-').collect();
    (parts[1].to_owned(), parts[2].to_owned())
}

async fn access_line(app: &TestApp, trace_id: &str) -> Value {
    app.logs
        .wait_for("the access line", |l| {
            l["msg"] == "request completed" && l["trace_id"] == trace_id
        })
        .await
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

#[tokio::test]
async fn access_lines_carry_the_ids_of_the_exported_root_span() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let requests = vec![
        app.get("/health").await,
        app.post_json(
            "/api/v1/posts",
            &json!({"title": "logged"}),
            Some(&alice.token),
        )
        .await,
        app.get("/api/v1/feed/unified?type=global").await,
        app.get(&format!("/api/v1/posts/{}", uuid::Uuid::new_v4()))
            .await,
        app.get("/definitely/not/a/route").await,
    ];
    for response in &requests {
        let (trace_id, root_id) = ids(response);
        let line = access_line(&app, &trace_id).await;
        assert_eq!(line["span_id"], root_id.as_str());
        let spans = app.otlp.trace(&trace_id).await;
        let root = spans.iter().find(|s| s.kind == KIND_SERVER).unwrap();
        assert_eq!(
            root.span_id, root_id,
            "the line's ids are the exported root span's"
        );
        assert_eq!(line["status"], response.status().as_u16());
        assert_eq!(
            line["method"].as_str(),
            root.str("http.request.method").as_deref()
        );
        assert!(line["duration_ms"].as_f64().is_some());
        assert_eq!(
            line["trace_sampled"], true,
            "head-sampled, no tail sampling"
        );
        assert!(line["path"].is_string());
    }
    let post_line = access_line(&app, &ids(&requests[1]).0).await;
    assert_eq!(post_line["route"], "/api/v1/posts");
    assert_eq!(post_line["user_id"], alice.id.as_str());
    let feed_line = access_line(&app, &ids(&requests[2]).0).await;
    assert!(
        feed_line.get("user_id").is_none(),
        "no user_id when not authenticated"
    );
    let unmatched = access_line(&app, &ids(&requests[4]).0).await;
    assert_eq!(unmatched["route"], "unmatched");
    assert_eq!(unmatched["path"], "/definitely/not/a/route");
    // A caller's unsampled traceparent is obeyed: the line says the trace is not exported.
    app.api
        .get(app.url("/unsampled/probe"))
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        )
        .send()
        .await
        .unwrap();
    let unsampled = app
        .logs
        .wait_for("the unsampled request's line", |l| {
            l["msg"] == "request completed" && l["path"] == "/unsampled/probe"
        })
        .await;
    assert_eq!(unsampled["trace_sampled"], false, "{unsampled}");

    // Every line, the app's and the libraries', is one JSON object with the common fields.
    let lines = app.logs.lines();
    assert!(lines.len() > 10);
    for line in &lines {
        let ts = line["ts"]
            .as_str()
            .unwrap_or_else(|| panic!("no ts: {line}"));
        assert!(ts.ends_with('Z'), "{ts}");
        chrono::DateTime::parse_from_rfc3339(ts).unwrap_or_else(|e| panic!("{ts}: {e}"));
        assert!(
            ["trace", "debug", "info", "warn", "error", "critical"]
                .contains(&line["level"].as_str().unwrap()),
            "{line}"
        );
        assert!(line["msg"].is_string(), "{line}");
        assert_eq!(line["service"], "sidechain-backend");
        if let Some(t) = line.get("trace_id") {
            assert!(is_hex(t.as_str().unwrap(), 32), "{line}");
            assert!(is_hex(line["span_id"].as_str().unwrap(), 16), "{line}");
        }
    }
    let library = lines
        .iter()
        .find(|l| {
            l["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("actix_server"))
        })
        .expect("actix-server's own lines come out in the same format");
    assert!(library["msg"].as_str().unwrap().len() > 3);
}

#[tokio::test]
async fn a_line_logged_inside_a_query_carries_the_query_span() {
    let app = spawn_app_with(|c| {
        c.set("DB_SLOW_QUERY_MS", "0");
    })
    .await;
    let alice = app.register("alice").await;
    let post = app.post_titled(&alice, "slow").await;
    let response = app
        .get(&format!("/api/v1/posts/{}", post["id"].as_str().unwrap()))
        .await;
    let (trace_id, root_id) = ids(&response);
    let line = app
        .logs
        .wait_for("the slow query line", |l| {
            l["msg"] == "slow query" && l["trace_id"] == trace_id.as_str()
        })
        .await;
    assert_eq!(line["level"], "warn");
    assert_eq!(line["db.collection.name"], "posts");
    assert!(line["db.query.text"].as_str().unwrap().contains("$1"));
    let spans = app.otlp.trace(&trace_id).await;
    let query = spans.iter().find(|s| s.name == "SELECT posts").unwrap();
    assert_eq!(
        line["span_id"],
        query.span_id.as_str(),
        "the line names the query's span"
    );
    assert_ne!(query.span_id, root_id);
}

#[tokio::test]
async fn secrets_never_reach_the_log() {
    let app = spawn_app_with(|c| {
        c.set("DB_SLOW_QUERY_MS", "0").set("LOG_LEVEL", "trace");
    })
    .await;
    let canary = "zq-log-canary-5519";
    let user = app.register("secretive").await;
    let login: Value = app
        .post_json(
            "/api/v1/auth/login",
            &json!({"login": "secretive", "password": PASSWORD}),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    let login_token = login["token"].as_str().unwrap().to_owned();
    let post = app
        .create_post(
            &user,
            json!({"title": canary, "description": canary, "tags": [canary]}),
        )
        .await;
    let id = post["id"].as_str().unwrap();
    app.post_json(
        &format!("/api/v1/posts/{id}/comments"),
        &json!({"body": canary}),
        Some(&login_token),
    )
    .await;
    app.post_json(
        "/api/v1/auth/login",
        &json!({"login": "secretive", "password": "wrong-but-secret"}),
        None,
    )
    .await;
    let last = app.get(&format!("/api/v1/search?q={canary}")).await;
    access_line(&app, &ids(&last).0).await;

    let text = app.logs.raw_lines().join("\n");
    for secret in [
        canary,
        PASSWORD,
        "wrong-but-secret",
        user.token.as_str(),
        login_token.as_str(),
        "secretive@example.com",
    ] {
        assert!(!text.contains(secret), "the log holds {secret:?}");
    }
    assert!(
        !text.to_lowercase().contains("bearer "),
        "no Authorization header"
    );
    assert!(
        text.contains("slow query"),
        "queries were logged, without their values"
    );
}

#[tokio::test]
async fn metrics_in_both_formats_with_exemplars_that_lead_to_traces() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let post = app.post_titled(&alice, "measured").await;
    let id = post["id"].as_str().unwrap();
    let traced = app.get(&format!("/api/v1/posts/{id}")).await;
    let (trace_id, _) = ids(&traced);
    app.get(&format!("/api/v1/posts/{}", uuid::Uuid::new_v4()))
        .await;
    app.get("/api/v1/feed/unified?type=global").await;
    app.get("/some/unmatched/path").await;
    app.otlp.trace(&trace_id).await;

    // Classic text format.
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let classic = response.text().await.unwrap();
    for needle in [
        r#"",method="GET",route="/api/v1/posts/{id}",status="200"} "#,
        r#"http_server_request_duration_seconds_count{method="GET",route="/api/v1/posts/{id}",status="404"}"#,
        r#"http_server_request_duration_seconds_count{method="GET",route="unmatched",status="404"}"#,
        r#"db_client_operation_duration_seconds_count{operation="SELECT",table="posts"}"#,
        r#"db_client_operation_duration_seconds_count{operation="INSERT",table="posts"}"#,
        r#"cache_requests_total{operation="GET",result="miss",feed_type="global"}"#,
        r#"otel_exporter_spans_total{outcome="exported"}"#,
        "# TYPE otel_exporter_queue_spans gauge",
        "# TYPE otel_exporter_export_duration_seconds histogram",
    ] {
        assert!(classic.contains(needle), "missing {needle}\n{classic}");
    }
    assert!(
        !classic.contains(" # {"),
        "no exemplars in the classic format"
    );
    assert!(!classic.contains("# EOF"));
    let uuid =
        regex::Regex::new(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").unwrap();
    assert!(!uuid.is_match(&classic), "a label value holds an id");
    promtool_check_metrics(&classic);

    // OpenMetrics, as Prometheus asks for it.
    let response = app
        .api
        .get(app.url("/metrics"))
        .header("accept", "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1")
        .send()
        .await
        .unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text; version=1.0.0")
    );
    let openmetrics = response.text().await.unwrap();
    assert!(openmetrics.trim_end().ends_with("# EOF"));
    let exemplar = regex::Regex::new(
        r#"http_server_request_duration_seconds_bucket\{le="[^"]+",method="GET",route="/api/v1/posts/\{id\}",status="200"\} \d+ # \{(?:span_id="([0-9a-f]{16})",trace_id="([0-9a-f]{32})"|trace_id="([0-9a-f]{32})",span_id="([0-9a-f]{16})")\}"#,
    )
    .unwrap();
    let captures = exemplar
        .captures(&openmetrics)
        .unwrap_or_else(|| panic!("no exemplar:\n{openmetrics}"));
    let (exemplar_trace, exemplar_span) = match (captures.get(2), captures.get(3)) {
        (Some(t), _) => (t.as_str(), captures.get(1).unwrap().as_str()),
        (None, Some(t)) => (t.as_str(), captures.get(4).unwrap().as_str()),
        _ => unreachable!(),
    };
    assert_eq!(
        exemplar_trace, trace_id,
        "the exemplar leads to the request's trace"
    );
    let spans = app.otlp.trace(exemplar_trace).await;
    assert!(
        spans
            .iter()
            .any(|s| s.span_id == exemplar_span && s.kind == KIND_SERVER)
    );
    assert!(
        !uuid.is_match(
            &openmetrics
                .lines()
                .map(|l| l.split(" # ").next().unwrap())
                .collect::<Vec<_>>()
                .join("\n")
        )
    );
}

/// Prometheus's own parser and linter.
fn promtool_check_metrics(exposition: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (Debian package `prometheus`; .ci/run installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_loki_derived_field_finds_trace_ids_in_real_log_lines() {
    let app = spawn_app().await;
    let response = app.get("/health").await;
    let (trace_id, _) = ids(&response);
    access_line(&app, &trace_id).await;

    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/observability/grafana/provisioning/datasources/loki.yml"
    );
    let config: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let pattern = config["datasources"][0]["jsonData"]["derivedFields"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "trace_id")
        .and_then(|f| f["matcherRegex"].as_str())
        .expect("a trace_id derived field");
    let regex = regex::Regex::new(pattern).unwrap();

    let mut matched = 0;
    for raw in app.logs.raw_lines() {
        let line: Value = serde_json::from_str(&raw).unwrap();
        let found = regex.captures(&raw).map(|c| c[1].to_owned());
        assert_eq!(found.as_deref(), line["trace_id"].as_str(), "{raw}");
        matched += usize::from(found.is_some());
    }
    assert!(matched > 0);
    let access = access_line(&app, &trace_id).await;
    let raw = serde_json::to_string(&access).unwrap();
    assert_eq!(&regex.captures(&raw).unwrap()[1], trace_id);
}
