//! Start-up and shutdown of the real binary, and a database outage.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{assert_error, poll, spawn_app_with};

fn binary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidechain"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
        .env("OTEL_BSP_EXPORT_TIMEOUT", "1000")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the process did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_bad_variable_stops_start_up_with_one_line_naming_it() {
    for (name, value) in [
        ("OTEL_TRACE_SAMPLER_RATE", "often"),
        ("BIND_ADDR", "not an address"),
        ("DATABASE_URL", "mysql://secret-password@db/x"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli"),
    ] {
        let mut child = binary().env(name, value).spawn().unwrap();
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
    let mut child = binary()
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
    assert!(
        lines
            .iter()
            .filter(|l| l["msg"] == "postgres not reachable yet, retrying")
            .count()
            >= 2,
        "{stdout}"
    );
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
    let db = format!("sidechain_test_{}", uuid::Uuid::new_v4().simple());
    let mut child = binary()
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:5432/{db}"),
        )
        .env("REDIS_URL", "redis://127.0.0.1:6379")
        .env("REDIS_KEY_PREFIX", format!("test:{db}:"))
        .env("BIND_ADDR", "127.0.0.1:0")
        .env("RECOMMENDER_URL", recommender.uri())
        .env("RECOMMENDER_TIMEOUT_MS", "5000")
        .spawn()
        .unwrap();
    // The port is in the "listening" line.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let port = loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the process ended before listening"
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["msg"] == "listening" {
            break v["address"]
                .as_str()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .to_owned();
        }
    };
    std::thread::spawn(move || for _ in stdout.lines() {});
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let registered: Value = client
        .post(format!("{base}/api/v1/auth/register"))
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
        let url = format!("{base}/api/v1/feed/unified?type=recommended");
        async move { client.get(url).bearer_auth(token).send().await }
    });
    // The handler is waiting on the recommender: the request is in flight.
    poll("the recommender call", || async {
        (!recommender.received_requests().await.unwrap().is_empty()).then_some(())
    })
    .await;
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );

    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(response.status(), StatusCode::OK);
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(20)))
            .await
            .unwrap();
    assert_eq!(status.code(), Some(0));
    // New connections are refused after the stop.
    assert!(client.get(format!("{base}/health")).send().await.is_err());

    if let Ok(mut conn) = <diesel::PgConnection as diesel::Connection>::establish(
        "postgres://postgres@127.0.0.1:5432/postgres",
    ) {
        let _ = diesel::RunQueryDsl::execute(
            diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)")),
            &mut conn,
        );
    }
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

    let admin = |sql: String| {
        let mut conn = <diesel::PgConnection as diesel::Connection>::establish(
            "postgres://postgres@127.0.0.1:5432/postgres",
        )
        .unwrap();
        diesel::RunQueryDsl::execute(diesel::sql_query(sql), &mut conn).unwrap();
    };
    admin(format!(
        "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS false",
        app.db_name
    ));
    admin(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
        app.db_name
    ));
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

    admin(format!(
        "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS true",
        app.db_name
    ));
    poll("recovery", || async {
        (app.get(&path).await.status() == StatusCode::OK).then_some(())
    })
    .await;
}
