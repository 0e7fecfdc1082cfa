//! The exporter's faults seen from the service: a dead or hung trace endpoint never slows a
//! request, and shutdown delivers what it can within its bound.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{OtlpReceiver, poll, spawn_app_with};

/// A trace endpoint whose behaviour the test switches: healthy (200 at once) or a blackhole
/// (accepts, reads, never answers).
struct SwitchableEndpoint {
    address: String,
    healthy: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
}

impl SwitchableEndpoint {
    fn start(healthy: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let endpoint = Self {
            address,
            healthy: Arc::new(AtomicBool::new(healthy)),
            answered: Arc::default(),
            connections: Arc::default(),
        };
        let (healthy, answered, connections) = (
            endpoint.healthy.clone(),
            endpoint.answered.clone(),
            endpoint.connections.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                connections.fetch_add(1, Ordering::SeqCst);
                let (healthy, answered) = (healthy.clone(), answered.clone());
                std::thread::spawn(move || serve(stream, &healthy, &answered));
            }
        });
        endpoint
    }
}

/// Reads HTTP/1.1 requests off a connection; answers each with 200 while healthy, else holds
/// the connection open without a word.
fn serve(stream: TcpStream, healthy: &AtomicBool, answered: &AtomicUsize) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if !healthy.load(Ordering::SeqCst) {
            // Never answer; keep the socket until the client gives up.
            let _ = reader.read_to_end(&mut Vec::new());
            return;
        }
        if writer
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
        answered.fetch_add(1, Ordering::SeqCst);
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn latencies(app: &crate::helpers::TestApp, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let response = app.get("/api/v1/feed/unified?type=global").await;
        assert_eq!(response.status(), StatusCode::OK);
        out.push(started.elapsed());
    }
    out
}

#[tokio::test]
async fn a_hung_endpoint_does_not_slow_requests() {
    let endpoint = SwitchableEndpoint::start(true);
    let address = endpoint.address.clone();
    let app = spawn_app_with(|c| {
        c.set("OTEL_EXPORTER_OTLP_ENDPOINT", address)
            .set("OTEL_EXPORTER_OTLP_TIMEOUT", "300")
            .set("OTEL_BSP_MAX_QUEUE_SIZE", "64")
            .set("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "16");
    })
    .await;
    let alice = app.register("alice").await;
    app.post_titled(&alice, "p").await;

    latencies(&app, 20).await; // warm-up
    let healthy = median(latencies(&app, 60).await);
    poll("healthy exports", || async {
        (endpoint.answered.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;

    endpoint.healthy.store(false, Ordering::SeqCst);
    let hung = latencies(&app, 60).await;
    let hung_median = median(hung.clone());
    let worst = hung.iter().max().unwrap();
    assert!(
        hung_median < healthy * 5 + Duration::from_millis(5),
        "median {hung_median:?} with a hung endpoint vs {healthy:?} healthy"
    );
    assert!(
        *worst < Duration::from_millis(300),
        "no request waited on an export ({worst:?})"
    );

    // The exporter gave up attempts (timeouts) and dropped what the queue could not hold.
    let metrics = app.get("/metrics").await.text().await.unwrap();
    let dropped = metrics
        .lines()
        .find_map(|l| l.strip_prefix("otel_exporter_spans_total{outcome=\"dropped_queue_full\"} "))
        .map(|v| v.parse::<f64>().unwrap())
        .unwrap_or(0.0);
    assert!(dropped > 0.0, "{metrics}");
    let queued = metrics
        .lines()
        .find_map(|l| l.strip_prefix("otel_exporter_queue_spans "))
        .map(|v| v.parse::<f64>().unwrap())
        .unwrap();
    assert!(queued <= 64.0);
    // Each attempt times out and gives its connection up; the retry opens a new one.
    let before = endpoint.connections.load(Ordering::SeqCst);
    poll("a retry after a timed-out attempt", || async {
        (endpoint.connections.load(Ordering::SeqCst) > before).then_some(())
    })
    .await;
}

#[tokio::test]
async fn with_the_endpoint_down_the_app_serves_and_spans_arrive_when_it_appears() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = port.local_addr().unwrap();
    drop(port);
    let app = spawn_app_with(|c| {
        c.set("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{address}"));
    })
    .await;
    let mut traces = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let response = app.get("/health").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(started.elapsed() < Duration::from_millis(500));
        let header = response.headers()["traceresponse"]
            .to_str()
            .unwrap()
            .to_owned();
        traces.push(header.split('-').nth(1).unwrap().to_owned());
    }
    // Tempo comes back on its address.
    let listener = TcpListener::bind(address).unwrap();
    let server = wiremock::MockServer::builder()
        .listener(listener)
        .start()
        .await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let receiver = OtlpReceiver { server };
    for trace in &traces {
        receiver.trace(trace).await;
    }
    let spans = receiver.spans().await;
    for trace in &traces {
        assert_eq!(
            spans.iter().filter(|s| &s.trace_id == trace).count(),
            1,
            "each span once"
        );
    }
}

fn binary(endpoint: &str, db: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidechain"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:5432/{db}"),
        )
        .env("REDIS_URL", "redis://127.0.0.1:6379")
        .env("REDIS_KEY_PREFIX", format!("test:{db}:"))
        .env("BIND_ADDR", "127.0.0.1:0")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    cmd
}

/// Starts the binary; returns it, its base URL and a thread collecting its log lines.
fn launch(
    mut cmd: Command,
) -> (
    std::process::Child,
    String,
    std::thread::JoinHandle<Vec<Value>>,
) {
    let mut child = cmd.spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    let port = loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "ended before listening"
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        lines.push(v.clone());
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
    let collector = std::thread::spawn(move || {
        lines.extend(
            stdout
                .lines()
                .map_while(Result::ok)
                .map(|l| serde_json::from_str(&l).unwrap()),
        );
        lines
    });
    (child, format!("http://127.0.0.1:{port}"), collector)
}

fn drop_database(db: &str) {
    if let Ok(mut conn) = <diesel::PgConnection as diesel::Connection>::establish(
        "postgres://postgres@127.0.0.1:5432/postgres",
    ) {
        let _ = diesel::RunQueryDsl::execute(
            diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)")),
            &mut conn,
        );
    }
}

fn terminate(child: &std::process::Child) {
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
}

#[tokio::test]
async fn sigterm_delivers_every_queued_span() {
    let receiver = OtlpReceiver::start().await;
    let db = format!("sidechain_test_{}", uuid::Uuid::new_v4().simple());
    let mut cmd = binary(&receiver.server.uri(), &db);
    // Nothing leaves before shutdown: a minute-long timer and large batches.
    cmd.env("OTEL_BSP_SCHEDULE_DELAY", "60000")
        .env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4096")
        .env("OTEL_BSP_MAX_QUEUE_SIZE", "8192");
    let (mut child, base, collector) = launch(cmd);
    let client = reqwest::Client::new();
    let mut traces = Vec::new();
    for _ in 0..25 {
        let response = client
            .get(format!("{base}/api/v1/feed/unified"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        traces.push(
            response.headers()["traceresponse"]
                .to_str()
                .unwrap()
                .split('-')
                .nth(1)
                .unwrap()
                .to_owned(),
        );
    }
    assert!(
        receiver
            .server
            .received_requests()
            .await
            .unwrap()
            .is_empty(),
        "nothing exported yet"
    );

    terminate(&child);
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let spans = receiver.spans().await;
    for trace in &traces {
        assert!(
            spans
                .iter()
                .any(|s| &s.trace_id == trace && s.kind == crate::helpers::KIND_SERVER),
            "trace {trace} lost"
        );
    }
    let lines = collector.join().unwrap();
    assert_eq!(lines.last().unwrap()["msg"], "server stopped");
    drop_database(&db);
}

#[tokio::test]
async fn sigterm_with_the_endpoint_down_exits_within_the_bound() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = port.local_addr().unwrap();
    drop(port);
    let db = format!("sidechain_test_{}", uuid::Uuid::new_v4().simple());
    let mut cmd = binary(&format!("http://{address}"), &db);
    cmd.env("OTEL_BSP_EXPORT_TIMEOUT", "2000");
    let (mut child, base, collector) = launch(cmd);
    let client = reqwest::Client::new();
    for _ in 0..10 {
        assert_eq!(
            client
                .get(format!("{base}/health"))
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
    }
    let started = Instant::now();
    terminate(&child);
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(
        took < Duration::from_secs(5),
        "shutdown took {took:?} with a 2 s bound"
    );
    let lines = collector.join().unwrap();
    let lost = lines
        .iter()
        .find(|l| {
            l["msg"]
                .as_str()
                .unwrap_or_default()
                .contains("lost at shutdown")
        })
        .expect("the loss is logged");
    assert!(lost["spans"].as_u64().unwrap() >= 10);
    drop_database(&db);
}
