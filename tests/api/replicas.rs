//! Several replicas of the real binary on one Postgres and Redis, behind a real load balancer
//! (Debian's HAProxy, `scripts/install-deps.sh test` installs it) that adds `X-Forwarded-For`
//! and health-checks `/ready` (CONTRACT.md §1 "Deployment").
//!
//! The balancer retries nothing (`retries 0`, no redispatch): most balancers do not retry a
//! request once sent, and HAProxy's default retry of a refused connection would hide exactly
//! what a rolling restart must not do.

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::audio::{count, settled_at, sine_wav};
use crate::helpers::{
    KIND_SERVER, OtlpReceiver, PASSWORD, RunningBinary, drop_database, poll_within, postgres_base,
    traceresponse,
};

/// A free port on loopback, for a replica that must come back on the same one.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// HAProxy in the foreground, killed with the test.
struct Balancer {
    child: Child,
    port: u16,
    /// HAProxy's own statistics page, to see which replicas it has up.
    stats_port: u16,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Balancer {
    /// Round robin over `backends`, each checked on `/ready` every 200 ms (down after one
    /// failure, up after one success).
    fn start(backends: &[u16]) -> Self {
        let port = free_port();
        let stats_port = free_port();
        let dir = std::env::temp_dir().join(format!("sidechain-haproxy-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, p)| format!("    server r{i} 127.0.0.1:{p} check\n"))
            .collect();
        let config = format!(
            "global\n    maxconn 4096\n\
             defaults\n    mode http\n    timeout connect 2s\n    timeout client 30s\n\
             \x20   timeout server 30s\n    timeout check 2s\n    retries 0\n\
             \x20   no option redispatch\n    option forwardfor\n\
             frontend web\n    bind 127.0.0.1:{port}\n    default_backend replicas\n\
             backend replicas\n    balance roundrobin\n    option httpchk GET /ready\n\
             \x20   http-check expect status 200\n\
             \x20   default-server inter 200ms fall 1 rise 1\n{servers}\
             listen stats\n    bind 127.0.0.1:{stats_port}\n    stats enable\n\
             \x20   stats uri /stats\n"
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, &config).unwrap();
        let check = Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&path)
            .output()
            .expect("haproxy installed (scripts/install-deps.sh test)");
        assert!(
            check.status.success(),
            "{config}\n{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy installed (scripts/install-deps.sh test)");
        Self {
            child,
            port,
            stats_port,
            _dir: TempDir(dir),
        }
    }

    /// The replicas HAProxy has up now, by server name (`r0`, `r1`, …).
    async fn up(&self, client: &reqwest::Client) -> Option<HashSet<String>> {
        let csv = client
            .get(format!("http://127.0.0.1:{}/stats;csv", self.stats_port))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        // Columns: pxname, svname, … status is the 18th.
        Some(
            csv.lines()
                .map(|l| l.split(',').collect::<Vec<_>>())
                .filter(|f| f.len() > 17 && f[0] == "replicas" && f[1].starts_with('r'))
                .filter(|f| f[17] == "UP")
                .map(|f| f[1].to_owned())
                .collect(),
        )
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replicas on one database, one Redis prefix and one audio directory, each on a fixed port.
struct Cluster {
    db_name: String,
    db_url: String,
    vars: Vec<(String, String)>,
    ports: Vec<u16>,
    replicas: Vec<Option<RunningBinary>>,
    audio_dir: PathBuf,
}

impl Cluster {
    fn start(n: usize, otlp: &OtlpReceiver, extra: &[(&str, &str)]) -> Self {
        let db_name = format!("sidechain_test_{}", Uuid::new_v4().simple());
        let audio_dir = std::env::temp_dir().join(format!("sidechain-audio-{db_name}"));
        let mut vars: Vec<(String, String)> = [
            ("DATABASE_URL", format!("{}/{db_name}", postgres_base())),
            ("REDIS_KEY_PREFIX", format!("test:{db_name}:")),
            (
                "AUDIO_STORAGE_DIR",
                audio_dir.to_string_lossy().into_owned(),
            ),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.server.uri()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
            ("OTEL_BSP_EXPORT_TIMEOUT", "10000".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        vars.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut cluster = Self {
            db_url: format!("{}/{db_name}", postgres_base()),
            db_name,
            vars,
            ports,
            replicas: Vec::new(),
            audio_dir,
        };
        // One at a time: the first creates and migrates the database.
        for i in 0..n {
            let replica = cluster.launch(i);
            cluster.replicas.push(Some(replica));
        }
        cluster
    }

    fn launch(&self, i: usize) -> RunningBinary {
        let port = self.ports[i];
        RunningBinary::launch(|cmd| {
            for (k, v) in &self.vars {
                cmd.env(k, v);
            }
            cmd.env("BIND_ADDR", format!("127.0.0.1:{port}"));
        })
    }

    fn replica_url(&self, i: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports[i])
    }

    /// SIGTERM, wait for the exit (0), start it again on its port.
    async fn restart(&mut self, i: usize) -> Vec<Value> {
        let replica = self.replicas[i].take().unwrap();
        replica.terminate();
        let (status, logs) = replica.exited(Duration::from_secs(60)).await;
        assert_eq!(status.code(), Some(0), "replica {i} exited");
        self.replicas[i] = Some(self.launch(i));
        logs
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.replicas.clear();
        drop_database(&self.db_name);
        let _ = std::fs::remove_dir_all(&self.audio_dir);
    }
}

async fn wait_ready(client: &reqwest::Client, url: &str) {
    poll_within(&format!("{url} ready"), Duration::from_secs(30), || async {
        let response = client.get(url).send().await.ok()?;
        (response.status() == StatusCode::OK).then_some(())
    })
    .await;
}

/// Waits until the balancer has every replica up (each one's health check passed).
async fn wait_balanced(client: &reqwest::Client, balancer: &Balancer, cluster: &Cluster) {
    let n = cluster.ports.len();
    poll_within(
        "every replica up at the balancer",
        Duration::from_secs(30),
        || async {
            let up = balancer.up(client).await?;
            (up.len() == n).then_some(())
        },
    )
    .await;
}

fn client_from(address: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(address.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn register(client: &reqwest::Client, url: &str, name: &str) -> (String, String) {
    let response = client
        .post(url)
        .json(&json!({"username": name, "email": format!("{name}@example.com"), "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED, "registering {name}");
    let body: Value = response.json().await.unwrap();
    (
        body["user"]["id"].as_str().unwrap().to_owned(),
        body["token"].as_str().unwrap().to_owned(),
    )
}

async fn login(client: &reqwest::Client, url: &str, name: &str, password: &str) -> StatusCode {
    client
        .post(url)
        .json(&json!({"login": name, "password": password}))
        .send()
        .await
        .unwrap()
        .status()
}

/// Behind the balancer every TCP peer is the balancer. With `TRUSTED_PROXIES` naming it, one
/// client's failures lock out that client only, and the root span names the real client.
#[tokio::test]
async fn through_the_balancer_each_client_is_throttled_on_its_own() {
    let otlp = OtlpReceiver::start().await;
    let cluster = Cluster::start(
        2,
        &otlp,
        &[
            ("TRUSTED_PROXIES", "127.0.0.1/32"),
            ("LOGIN_MAX_FAILURES", "3"),
        ],
    );
    let balancer = Balancer::start(&cluster.ports);
    let plain = reqwest::Client::new();
    wait_balanced(&plain, &balancer, &cluster).await;
    let login_url = balancer.url("/api/v1/auth/login");
    let first = client_from("127.0.0.2");
    let second = client_from("127.0.0.3");
    register(&plain, &balancer.url("/api/v1/auth/register"), "alice").await;
    register(&plain, &balancer.url("/api/v1/auth/register"), "bob").await;

    // The first client guesses at alice's account until its address is blocked…
    for _ in 0..3 {
        assert_eq!(
            login(&first, &login_url, "alice", "wrong").await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        login(&first, &login_url, "bob", PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS,
        "the first client's address is blocked, whichever replica answers"
    );
    // …and the second client, through the same balancer, is not.
    let response = second
        .post(&login_url)
        .json(&json!({"login": "bob", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let trace_id = traceresponse(&response).0;
    let spans = otlp.trace(&trace_id).await;
    let root = spans.iter().find(|s| s.kind == KIND_SERVER).unwrap();
    assert_eq!(root.str("client.address").as_deref(), Some("127.0.0.3"));
}

/// Without `TRUSTED_PROXIES`, `X-Forwarded-For` is the client's to write: it changes nothing.
#[tokio::test]
async fn without_trusted_proxies_a_forged_forwarded_for_changes_nothing() {
    let otlp = OtlpReceiver::start().await;
    let cluster = Cluster::start(1, &otlp, &[("LOGIN_MAX_FAILURES", "3")]);
    let client = client_from("127.0.0.2");
    wait_ready(&client, &cluster.replica_url(0, "/ready")).await;
    register(
        &client,
        &cluster.replica_url(0, "/api/v1/auth/register"),
        "alice",
    )
    .await;
    register(
        &client,
        &cluster.replica_url(0, "/api/v1/auth/register"),
        "bob",
    )
    .await;
    let url = cluster.replica_url(0, "/api/v1/auth/login");
    for i in 0..3 {
        let status = client
            .post(&url)
            .header("x-forwarded-for", format!("203.0.113.{i}"))
            .json(&json!({"login": "alice", "password": "wrong"}))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let response = client
        .post(&url)
        .header("x-forwarded-for", "198.51.100.77")
        .json(&json!({"login": "bob", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "still the peer's address, whatever the header says"
    );
    let spans = otlp.trace(&traceresponse(&response).0).await;
    let root = spans.iter().find(|s| s.kind == KIND_SERVER).unwrap();
    assert_eq!(root.str("client.address").as_deref(), Some("127.0.0.2"));
}

/// One worker of the steady load: reads and writes through the balancer until told to stop;
/// returns the trace ids of what succeeded and a description of every failure.
async fn load_worker(
    base: String,
    token: String,
    stop: Arc<AtomicBool>,
) -> (Vec<String>, Vec<String>) {
    let client = reqwest::Client::new();
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    let mut post: Option<String> = None;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let request = match (i % 3, &post) {
            (0, _) | (_, None) => client
                .post(format!("{base}/api/v1/posts"))
                .bearer_auth(&token)
                .json(&json!({"title": format!("take {i}"), "tags": ["load"]})),
            (1, Some(id)) => client.get(format!("{base}/api/v1/posts/{id}")),
            (_, Some(_)) => client
                .get(format!("{base}/api/v1/feed/unified?type=timeline"))
                .bearer_auth(&token),
        };
        match request.send().await {
            Ok(response) if response.status().is_success() => {
                ok.push(traceresponse(&response).0);
                if response.status() == StatusCode::CREATED {
                    let body: Value = response.json().await.unwrap_or_default();
                    post = body["id"].as_str().map(str::to_owned);
                }
            }
            Ok(response) => failed.push(format!(
                "{} {}",
                response.status(),
                response.text().await.unwrap_or_default()
            )),
            Err(err) => failed.push(format!("connection error: {err}")),
        }
    }
    (ok, failed)
}

/// Each replica in turn: SIGTERM, exit, start again, wait until the balancer uses it; under a
/// steady load of reads and writes. Nothing may fail, and every answered request's root span
/// must reach the collector.
#[tokio::test]
async fn a_rolling_restart_under_load_loses_nothing() {
    const REPLICAS: usize = 3;
    const WORKERS: usize = 6;
    let otlp = OtlpReceiver::start().await;
    let mut cluster = Cluster::start(
        REPLICAS,
        &otlp,
        &[
            ("TRUSTED_PROXIES", "127.0.0.1/32"),
            // Well above the balancer's detection (200 ms × fall 1, plus a check's time).
            ("SHUTDOWN_DRAIN_S", "2"),
            ("REGISTER_MAX_PER_HOUR", "1000"),
        ],
    );
    let balancer = Balancer::start(&cluster.ports);
    let client = reqwest::Client::new();
    wait_balanced(&client, &balancer, &cluster).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (_, token) = register(
            &client,
            &balancer.url("/api/v1/auth/register"),
            &format!("loader{w}"),
        )
        .await;
        workers.push(tokio::spawn(load_worker(
            balancer.url(""),
            token,
            stop.clone(),
        )));
    }

    for i in 0..REPLICAS {
        // Some load on the full set first.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let logs = cluster.restart(i).await;
        assert!(
            logs.iter()
                .any(|l| l["msg"] == "shutting down: draining, /ready fails"),
            "replica {i} drained"
        );
        wait_balanced(&client, &balancer, &cluster).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);

    let mut answered = Vec::new();
    let mut failures = Vec::new();
    for worker in workers {
        let (ok, failed) = worker.await.unwrap();
        answered.extend(ok);
        failures.extend(failed);
    }
    println!(
        "rolling restart of {REPLICAS} replicas: {} requests answered, {} failed",
        answered.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    assert!(answered.len() > 100, "only {} requests", answered.len());

    // Every answered request's root span arrived, from whichever replica served it (those
    // restarted flushed theirs on the way out).
    let wanted: HashSet<String> = answered.into_iter().collect();
    let missing = poll_within("every root span", Duration::from_secs(30), || async {
        let roots: HashSet<String> = otlp
            .spans()
            .await
            .into_iter()
            .filter(|s| s.kind == KIND_SERVER)
            .map(|s| s.trace_id)
            .collect();
        let missing = wanted.difference(&roots).count();
        (missing == 0).then_some(missing)
    })
    .await;
    assert_eq!(missing, 0);
}

/// Audio uploaded through one replica is processed once, by some replica, and served by every
/// replica; a write through one replica is read through another at once.
#[tokio::test]
async fn uploads_and_writes_are_shared_by_every_replica() {
    let otlp = OtlpReceiver::start().await;
    let cluster = Cluster::start(2, &otlp, &[("AUDIO_WORKERS", "2")]);
    let client = reqwest::Client::new();
    for i in 0..2 {
        wait_ready(&client, &cluster.replica_url(i, "/ready")).await;
    }
    let (_, token) = register(
        &client,
        &cluster.replica_url(0, "/api/v1/auth/register"),
        "alice",
    )
    .await;
    let created: Value = client
        .post(cluster.replica_url(0, "/api/v1/posts"))
        .bearer_auth(&token)
        .json(&json!({"title": "shared"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    // Read through the other replica at once: by id, and in the author's own timeline.
    let read = client
        .get(cluster.replica_url(1, &format!("/api/v1/posts/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    let timeline: Value = client
        .get(cluster.replica_url(1, "/api/v1/feed/unified?type=timeline"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        timeline["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == id.as_str()),
        "{timeline}"
    );

    let response = client
        .put(cluster.replica_url(0, &format!("/api/v1/posts/{id}/audio")))
        .bearer_auth(&token)
        .header("content-type", "audio/wav")
        .body(sine_wav(0.5, 22_050, 1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let base = format!("http://127.0.0.1:{}", cluster.ports[1]);
    let post = settled_at(&client, &base, &id).await;
    assert_eq!(post["audio"]["status"], "ready", "{post}");
    assert_eq!(
        count(
            &cluster.db_url,
            "SELECT count(*) AS n FROM audio_jobs WHERE state = 'done' AND attempts = 1"
        ),
        1,
        "processed exactly once"
    );
    let mut bodies = Vec::new();
    for i in 0..2 {
        let response = client
            .get(cluster.replica_url(i, &format!("/api/v1/posts/{id}/audio")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "replica {i}");
        bodies.push(response.bytes().await.unwrap());
    }
    assert_eq!(bodies[0], bodies[1]);
    assert!(!bodies[0].is_empty());
}
