//! Start-up and shutdown of the real binary, and a database outage.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{
    RunningBinary, assert_error, poll, sidechain_command, spawn_app_with, wait_exit,
};

#[test]
fn a_bad_variable_stops_start_up_with_one_line_naming_it() {
    for (name, value) in [
        ("OTEL_TRACE_SAMPLER_RATE", "often"),
        ("BIND_ADDR", "not an address"),
        ("DATABASE_URL", "mysql://secret-password@db/x"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli"),
    ] {
        let mut child = sidechain_command().env(name, value).spawn().unwrap();
        let status = wait_exit(&mut child, Duration::from_secs(10));
        assert_eq!(status.code(), Some(2), "{name}");
        let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(lines[0].contains(name), "{stderr}");
        assert!(!stderr.contains("secret-password"), "{stderr}");
    }
}

#[test]
fn an_unreachable_postgres_is_retried_then_start_up_fails() {
    let started = Instant::now();
    let mut child = sidechain_command()
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/sidechain")
        .env("DB_CONNECT_TIMEOUT_S", "2")
        .env("BIND_ADDR", "127.0.0.1:0")
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(20));
    assert!(!status.success());
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "it retried for the whole timeout"
    );
    let stdout = std::io::read_to_string(child.stdout.take().unwrap()).unwrap();
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON log line"))
        .collect();
    let retries = lines
        .iter()
        .filter(|l| l["msg"] == "postgres not reachable yet, retrying")
        .count();
    assert!(retries >= 2, "{stdout}");
    let last = lines.last().unwrap();
    assert_eq!(last["level"], "error");
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("could not connect to Postgres"),
        "{stdout}"
    );
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_and_exits_zero() {
    let recommender = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(Vec::<String>::new())
                .set_delay(Duration::from_millis(1500)),
        )
        .mount(&recommender)
        .await;
    let uri = recommender.uri();
    let app = RunningBinary::launch(|cmd| {
        cmd.env("RECOMMENDER_URL", uri)
            .env("RECOMMENDER_TIMEOUT_MS", "5000");
    });
    let client = reqwest::Client::new();
    let registered: Value = client
        .post(app.url("/api/v1/auth/register"))
        .json(&serde_json::json!({"username": "alice", "email": "a@x.io", "password": "password-123"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = registered["token"].as_str().unwrap().to_owned();

    let in_flight = tokio::spawn({
        let client = client.clone();
        let url = app.url("/api/v1/feed/unified?type=recommended");
        async move { client.get(url).bearer_auth(token).send().await }
    });
    // The handler is waiting on the recommender: the request is in flight.
    poll("the recommender call", || async {
        (!recommender.received_requests().await.unwrap().is_empty()).then_some(())
    })
    .await;
    app.terminate();

    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(response.status(), StatusCode::OK);
    let health = app.url("/health");
    let (status, _) = app.exited(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0));
    assert!(
        client.get(health).send().await.is_err(),
        "nothing listens after the stop"
    );
}

#[tokio::test]
async fn a_database_outage_is_503_and_recovers() {
    let app = spawn_app_with(|c| {
        c.set("DB_POOL_TIMEOUT_MS", "300");
    })
    .await;
    let alice = app.register("alice").await;
    let post = app.post_titled(&alice, "p").await;
    let path = format!("/api/v1/posts/{}", post["id"].as_str().unwrap());

    app.refuse_database();
    // Broken pooled connections are found and dropped; each request meanwhile is a 503.
    for _ in 0..4 {
        assert_error(
            app.get(&path).await,
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
        )
        .await;
    }
    let ready = app.get("/ready").await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json::<Value>().await.unwrap()["postgres"], "down");

    app.accept_database();
    poll("recovery", || async {
        (app.get(&path).await.status() == StatusCode::OK).then_some(())
    })
    .await;
}

/// `/ready` as a balancer's health check sees it: its status, or `None` when nothing answers.
async fn ready_status(client: &reqwest::Client, binary: &RunningBinary) -> Option<StatusCode> {
    client
        .get(binary.url("/ready"))
        .send()
        .await
        .ok()
        .map(|r| r.status())
}

#[tokio::test]
async fn sigterm_first_fails_ready_while_requests_are_still_served() {
    let app = RunningBinary::launch(|cmd| {
        cmd.env("SHUTDOWN_DRAIN_S", "3");
    });
    let client = reqwest::Client::new();
    assert_eq!(ready_status(&client, &app).await, Some(StatusCode::OK));
    app.terminate();

    // At once: the balancer's next check fails.
    let ready = poll("/ready failing", || async {
        let response = client.get(app.url("/ready")).send().await.ok()?;
        (response.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(response)
    })
    .await;
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["draining"], true, "{body}");
    assert_eq!(body["postgres"], "ok", "{body}");
    // Meanwhile everything is served: a write and a read, each on a connection it closes.
    let registered = client
        .post(app.url("/api/v1/auth/register"))
        .json(&serde_json::json!({"username": "late", "email": "late@x.io", "password": "password-123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), StatusCode::CREATED);
    assert_eq!(registered.headers()["connection"], "close");
    let health = client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);

    let (status, logs) = app.exited(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0));
    let order: Vec<&str> = logs
        .iter()
        .filter_map(|l| l["msg"].as_str())
        .filter(|m| m.starts_with("shutting down:") || *m == "server stopped")
        .collect();
    assert_eq!(
        order,
        [
            "shutting down: draining, /ready fails",
            "shutting down: no longer accepting, finishing in-flight requests",
            "server stopped"
        ]
    );
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let app = RunningBinary::launch(|cmd| {
        cmd.env("SHUTDOWN_DRAIN_S", "600");
    });
    let client = reqwest::Client::new();
    app.terminate();
    poll("/ready failing", || async {
        (ready_status(&client, &app).await == Some(StatusCode::SERVICE_UNAVAILABLE)).then_some(())
    })
    .await;
    app.terminate();
    // Not the ten minutes of drain that were left.
    // 128 + SIGTERM's 15: the second signal's own exit, not the drain's end.
    let (status, _) = app.exited(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(143));
}
