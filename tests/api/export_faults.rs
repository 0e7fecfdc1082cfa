//! The exporter's faults seen from the service: a dead or hung trace endpoint never slows a
//! request, and shutdown delivers what it can within its bound.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::helpers::{KIND_SERVER, OtlpReceiver, RunningBinary, poll, spawn_app_with};

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

#[tokio::test]
async fn sigterm_delivers_every_queued_span() {
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.server.uri();
    // Nothing leaves before shutdown: a minute-long timer and large batches.
    let app = RunningBinary::launch(|cmd| {
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .env("OTEL_BSP_SCHEDULE_DELAY", "60000")
            .env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4096")
            .env("OTEL_BSP_MAX_QUEUE_SIZE", "8192")
            .env("OTEL_BSP_EXPORT_TIMEOUT", "10000");
    });
    let client = reqwest::Client::new();
    let mut traces = Vec::new();
    for _ in 0..25 {
        let response = client
            .get(app.url("/api/v1/feed/unified"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        traces.push(trace_id(&response));
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

    app.terminate();
    let (status, logs) = app.exited(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0));
    let spans = receiver.spans().await;
    for trace in &traces {
        assert!(
            spans
                .iter()
                .any(|s| &s.trace_id == trace && s.kind == KIND_SERVER),
            "trace {trace} lost"
        );
    }
    assert_eq!(logs.last().unwrap()["msg"], "server stopped");
}

#[tokio::test]
async fn sigterm_with_the_endpoint_down_exits_within_the_bound() {
    let app = RunningBinary::launch(|cmd| {
        cmd.env("OTEL_BSP_EXPORT_TIMEOUT", "2000");
    });
    let client = reqwest::Client::new();
    for _ in 0..10 {
        assert_eq!(
            client
                .get(app.url("/health"))
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
    }
    let started = Instant::now();
    app.terminate();
    let (status, logs) = app.exited(Duration::from_secs(20)).await;
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(
        took < Duration::from_secs(5),
        "shutdown took {took:?} with a 2 s bound"
    );
    let lost = logs
        .iter()
        .find(|l| {
            l["msg"]
                .as_str()
                .unwrap_or_default()
                .contains("lost at shutdown")
        })
        .expect("the loss is logged");
    assert!(lost["spans"].as_u64().unwrap() >= 10);
}

fn trace_id(response: &reqwest::Response) -> String {
    response.headers()["traceresponse"]
        .to_str()
        .unwrap()
        .split('-')
        .nth(1)
        .unwrap()
        .to_owned()
}
