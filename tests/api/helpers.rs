//! Test harness: each test gets its own database (created and migrated by the app itself), its
//! own Redis key prefix, the app on a random port, an OTLP receiver standing in for Tempo, and
//! the app's log lines captured.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use diesel::{Connection, PgConnection, RunQueryDsl};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use sidechain::config::{Env, Settings};
use sidechain::startup::Application;
use sidechain::telemetry::{self, LogSink, Telemetry, TelemetryOptions};
use uuid::Uuid;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

pub const PASSWORD: &str = "correct-horse-battery";

/// The Postgres and Redis of this machine; overridable for other set-ups.
pub fn postgres_base() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The telemetry pipeline of this test process (one per process: nextest runs each test in its
/// own).
static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();

/// Log lines written by the app, captured.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// Every complete line so far, as text. A line the drain is still writing (no newline yet)
    /// is left for the next call: the drain thread writes a record in more than one `write`.
    pub fn raw_lines(&self) -> Vec<String> {
        let mut bytes = self.0.lock().unwrap().clone();
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        bytes.truncate(complete);
        let text = String::from_utf8(bytes).expect("log output is UTF-8");
        text.lines().map(str::to_owned).collect()
    }

    /// Every line so far, parsed; panics on a line that is not a JSON object.
    pub fn lines(&self) -> Vec<Value> {
        self.raw_lines()
            .iter()
            .map(|l| {
                let v: Value =
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
                assert!(v.is_object(), "not an object: {l}");
                v
            })
            .collect()
    }

    /// Waits for a line matching `pred`.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        poll(what, || {
            let found = self.lines().into_iter().find(&pred);
            async move { found }
        })
        .await
    }
}

/// Polls `f` every 20 ms until it returns `Some`, for at most 10 s.
pub async fn poll<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll_within(what, Duration::from_secs(10), f).await
}

/// Polls `f` every 20 ms until it returns `Some`, for at most `within`.
pub async fn poll_within<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An OTLP/HTTP receiver standing in for Tempo: decodes what it receives.
pub struct OtlpReceiver {
    pub server: MockServer,
}

/// A span as received, flattened for assertions.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub trace_state: String,
    pub flags: u32,
    pub name: String,
    pub kind: i32,
    pub attributes: HashMap<String, AnyValue>,
    pub status_code: i32,
    pub status_message: String,
    pub events: Vec<(String, HashMap<String, AnyValue>)>,
    pub resource: HashMap<String, AnyValue>,
}

pub const KIND_SERVER: i32 = 2;
pub const KIND_CLIENT: i32 = 3;
pub const STATUS_ERROR: i32 = 2;

fn flatten(attributes: &[KeyValue]) -> HashMap<String, AnyValue> {
    attributes
        .iter()
        .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?.value?)))
        .collect()
}

impl ReceivedSpan {
    pub fn str(&self, key: &str) -> Option<String> {
        match self.attributes.get(key)? {
            AnyValue::StringValue(s) => Some(s.clone()),
            other => panic!("{key} is not a string: {other:?}"),
        }
    }

    pub fn int(&self, key: &str) -> Option<i64> {
        match self.attributes.get(key)? {
            AnyValue::IntValue(i) => Some(*i),
            other => panic!("{key} is not an int: {other:?}"),
        }
    }

    pub fn double(&self, key: &str) -> Option<f64> {
        match self.attributes.get(key)? {
            AnyValue::DoubleValue(d) => Some(*d),
            other => panic!("{key} is not a double: {other:?}"),
        }
    }

    pub fn bool(&self, key: &str) -> Option<bool> {
        match self.attributes.get(key)? {
            AnyValue::BoolValue(b) => Some(*b),
            other => panic!("{key} is not a bool: {other:?}"),
        }
    }

    /// Every string the span carries, for secret scans.
    pub fn all_strings(&self) -> Vec<String> {
        let mut out = vec![self.name.clone(), self.status_message.clone()];
        let mut push = |v: &AnyValue| {
            if let AnyValue::StringValue(s) = v {
                out.push(s.clone());
            }
        };
        self.attributes.values().for_each(&mut push);
        for (_, attrs) in &self.events {
            attrs.values().for_each(&mut push);
        }
        out
    }
}

impl OtlpReceiver {
    pub async fn start() -> Self {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/traces"))
            .respond_with(ResponseTemplate::new(200))
            .mount(&server)
            .await;
        Self { server }
    }

    /// Every export request received so far, decoded.
    pub async fn requests(&self) -> Vec<ExportTraceServiceRequest> {
        self.server
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|r| r.url.path() == "/v1/traces")
            .map(|r| decode_export(&r.headers, &r.body))
            .collect()
    }

    /// Every span received so far.
    pub async fn spans(&self) -> Vec<ReceivedSpan> {
        spans_of(&self.requests().await)
    }

    /// Waits until the spans received satisfy `pred`, and returns them.
    pub async fn wait_for_spans(
        &self,
        what: &str,
        pred: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        poll(what, || async {
            let spans = self.spans().await;
            pred(&spans).then_some(spans)
        })
        .await
    }

    /// Waits for the complete trace whose root SERVER span has this trace id: the root has
    /// arrived and, since children end before their parent, so has every child.
    pub async fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.trace_when(trace_id, "its root", |s| s.kind == KIND_SERVER)
            .await
    }

    /// Waits until the trace has a span named `name` (one that may end after the root, as a
    /// background job's does), and returns the trace's spans received by then.
    pub async fn trace_with(&self, trace_id: &str, name: &str) -> Vec<ReceivedSpan> {
        self.trace_when(trace_id, name, |s| s.name == name).await
    }

    async fn trace_when(
        &self,
        trace_id: &str,
        what: &str,
        pred: impl Fn(&ReceivedSpan) -> bool,
    ) -> Vec<ReceivedSpan> {
        let spans = self
            .wait_for_spans(&format!("trace {trace_id} with {what}"), |spans| {
                spans.iter().any(|s| s.trace_id == trace_id && pred(s))
            })
            .await;
        spans
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }
}

pub fn decode_export(headers: &http::HeaderMap, body: &[u8]) -> ExportTraceServiceRequest {
    let gzipped = headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes() == b"gzip");
    let raw = if gzipped {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(body), &mut out)
            .expect("valid gzip");
        out
    } else {
        body.to_vec()
    };
    ExportTraceServiceRequest::decode(raw.as_slice()).expect("a valid OTLP protobuf body")
}

pub fn spans_of(requests: &[ExportTraceServiceRequest]) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for request in requests {
        for rs in &request.resource_spans {
            let resource = rs
                .resource
                .as_ref()
                .map(|r| flatten(&r.attributes))
                .unwrap_or_default();
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    out.push(ReceivedSpan {
                        trace_id: hex::encode(&s.trace_id),
                        span_id: hex::encode(&s.span_id),
                        parent_span_id: hex::encode(&s.parent_span_id),
                        trace_state: s.trace_state.clone(),
                        flags: s.flags,
                        name: s.name.clone(),
                        kind: s.kind,
                        attributes: flatten(&s.attributes),
                        status_code: s.status.as_ref().map(|st| st.code).unwrap_or(0),
                        status_message: s
                            .status
                            .as_ref()
                            .map(|st| st.message.clone())
                            .unwrap_or_default(),
                        events: s
                            .events
                            .iter()
                            .map(|e| (e.name.clone(), flatten(&e.attributes)))
                            .collect(),
                        resource: resource.clone(),
                    });
                }
            }
        }
    }
    out
}

/// A registered user.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: String,
    pub token: String,
}

pub struct TestApp {
    pub address: String,
    pub api: reqwest::Client,
    pub db_name: String,
    pub db_url: String,
    pub redis_prefix: String,
    pub otlp: OtlpReceiver,
    pub logs: LogCapture,
    /// `AUDIO_STORAGE_DIR` of this app, removed with it.
    pub audio_dir: std::path::PathBuf,
}

/// Environment for one test app; tests change entries before spawning.
pub struct TestConfig {
    pub vars: HashMap<String, String>,
}

impl TestConfig {
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.vars.insert(key.to_owned(), value.into());
        self
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut TestConfig)) -> TestApp {
    let otlp = OtlpReceiver::start().await;
    let db_name = format!("sidechain_test_{}", Uuid::new_v4().simple());
    let db_url = format!("{}/{db_name}", postgres_base());
    let redis_prefix = format!("test:{}:", Uuid::new_v4().simple());
    let audio_dir = std::env::temp_dir().join(format!("sidechain-audio-{db_name}"));
    let mut config = TestConfig {
        vars: HashMap::new(),
    };
    config
        .set("BIND_ADDR", "127.0.0.1:0")
        .set("DATABASE_URL", db_url.clone())
        .set("DB_POOL_SIZE", "8")
        .set("REDIS_URL", redis_url())
        .set("REDIS_KEY_PREFIX", redis_prefix.clone())
        .set("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.server.uri())
        .set("OTEL_BSP_SCHEDULE_DELAY", "50")
        .set("AUDIO_STORAGE_DIR", audio_dir.to_string_lossy())
        .set("LOG_LEVEL", "info");
    configure(&mut config);
    let vars = config.vars.clone();
    let settings = Settings::from_source(&Env::new(move |k| vars.get(k).cloned()))
        .expect("valid test settings");

    let logs = LogCapture::default();
    if TELEMETRY.get().is_none() {
        let options = TelemetryOptions {
            log_sink: LogSink::Writer(Box::new(logs.clone())),
            ..Default::default()
        };
        let _ = TELEMETRY.set(
            telemetry::init(&settings.telemetry, settings.log_level, options)
                .expect("telemetry starts"),
        );
    }

    let app = Application::build(settings).await.expect("the app starts");
    let port = app.port();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        api: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        db_name,
        db_url,
        redis_prefix,
        otlp,
        logs,
        audio_dir,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn get(&self, path: &str) -> Response {
        self.api
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    /// Asserts that `/metrics` (classic text) has each of `samples` as a line of its own: a
    /// metric, its labels and its value.
    pub async fn assert_metrics(&self, samples: &[&str]) {
        let metrics = self.get("/metrics").await.text().await.unwrap();
        for sample in samples {
            assert!(
                metrics.lines().any(|line| line == *sample),
                "no line {sample:?} in\n{metrics}"
            );
        }
    }

    pub async fn get_auth(&self, path: &str, token: &str) -> Response {
        self.api
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn post_json(&self, path: &str, body: &Value, token: Option<&str>) -> Response {
        let mut request = self.api.post(self.url(path)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request sent")
    }

    pub async fn post(&self, path: &str, token: Option<&str>) -> Response {
        let mut request = self.api.post(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request sent")
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> Response {
        let mut request = self.api.delete(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request sent")
    }

    pub async fn register(&self, username: &str) -> TestUser {
        let response = self
            .post_json(
                "/api/v1/auth/register",
                &json!({"username": username, "email": format!("{username}@example.com"), "password": PASSWORD}),
                None,
            )
            .await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "registering {username}"
        );
        let body: Value = response.json().await.unwrap();
        TestUser {
            id: body["user"]["id"].as_str().unwrap().to_owned(),
            token: body["token"].as_str().unwrap().to_owned(),
        }
    }

    pub async fn create_post(&self, user: &TestUser, body: Value) -> Value {
        let response = self
            .post_json("/api/v1/posts", &body, Some(&user.token))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "creating a post");
        response.json().await.unwrap()
    }

    pub async fn post_titled(&self, user: &TestUser, title: &str) -> Value {
        self.create_post(user, json!({ "title": title })).await
    }

    /// Postgres refuses new connections to the app's database and ends the open ones, so the
    /// app's pool finds its connections broken: real 5xx, until [`TestApp::accept_database`].
    pub fn refuse_database(&self) {
        admin_sql(&format!(
            "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS false",
            self.db_name
        ));
        admin_sql(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
            self.db_name
        ));
    }

    /// Postgres accepts connections to the app's database again.
    pub fn accept_database(&self) {
        admin_sql(&format!(
            "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS true",
            self.db_name
        ));
    }

    /// Runs SQL directly against the app's database (behind the app's back).
    pub fn sql(&self, statement: &str) {
        let mut conn = PgConnection::establish(&self.db_url).expect("test database reachable");
        diesel::sql_query(statement)
            .execute(&mut conn)
            .expect("test SQL runs");
    }

    /// Every item of a paginated listing, page by page; asserts each page's size bound.
    pub async fn collect_pages(&self, path: &str, limit: usize, token: Option<&str>) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        let sep = if path.contains('?') { '&' } else { '?' };
        for _ in 0..1000 {
            let mut url = format!("{path}{sep}limit={limit}");
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let response = match token {
                Some(t) => self.get_auth(&url, t).await,
                None => self.get(&url).await,
            };
            assert_eq!(response.status(), StatusCode::OK, "{url}");
            let page: Value = response.json().await.unwrap();
            let page_items = page["items"].as_array().unwrap().clone();
            assert!(page_items.len() <= limit);
            items.extend(page_items);
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return items,
            }
        }
        panic!("pagination did not end");
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Best effort: a leftover database or key is harmless, only untidy.
        drop_database(&self.db_name);
        drop_redis_keys(&self.redis_prefix);
        let _ = std::fs::remove_dir_all(&self.audio_dir);
    }
}

/// Runs SQL on the server's maintenance database (`ALTER DATABASE`, `pg_terminate_backend`, …).
pub fn admin_sql(sql: &str) {
    let mut conn = PgConnection::establish(&format!("{}/postgres", postgres_base()))
        .expect("Postgres reachable");
    diesel::sql_query(sql)
        .execute(&mut conn)
        .expect("admin SQL runs");
}

pub fn drop_database(name: &str) {
    if let Ok(mut conn) = PgConnection::establish(&format!("{}/postgres", postgres_base())) {
        let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut conn);
    }
}

fn drop_redis_keys(prefix: &str) {
    let Ok(client) = deadpool_redis::redis::Client::open(redis_url()) else {
        return;
    };
    let Ok(mut conn) = client.get_connection() else {
        return;
    };
    let keys: Vec<String> = deadpool_redis::redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(&mut conn)
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = deadpool_redis::redis::cmd("DEL").arg(keys).query(&mut conn);
    }
}

/// The `sidechain` binary with a clean environment whose trace endpoint is dead (port 1) and
/// whose final flush is short; stdout and stderr piped.
pub fn sidechain_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidechain"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
        .env("OTEL_BSP_EXPORT_TIMEOUT", "1000")
        // No drain unless a test is about it: SIGTERM stops at once, as the tests expect.
        .env("SHUTDOWN_DRAIN_S", "0")
        // Not ./data/audio in the repository.
        .env(
            "AUDIO_STORAGE_DIR",
            std::env::temp_dir().join("sidechain-test-audio"),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Waits for a process to exit; kills it and fails after `within`.
pub fn wait_exit(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the process did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The real binary, serving on a random port with its own database.
pub struct RunningBinary {
    child: Option<Child>,
    pub base: String,
    db: String,
    logs: Option<std::thread::JoinHandle<Vec<Value>>>,
}

impl RunningBinary {
    /// Starts it (after `configure` adds variables) and waits for its `listening` line.
    pub fn launch(configure: impl FnOnce(&mut Command)) -> Self {
        let db = format!("sidechain_test_{}", Uuid::new_v4().simple());
        let mut cmd = sidechain_command();
        cmd.env("DATABASE_URL", format!("{}/{db}", postgres_base()))
            .env("REDIS_URL", redis_url())
            .env("REDIS_KEY_PREFIX", format!("test:{db}:"))
            .env("BIND_ADDR", "127.0.0.1:0")
            .stderr(Stdio::null());
        configure(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut lines = Vec::new();
        let address = loop {
            let mut line = String::new();
            assert!(
                stdout.read_line(&mut line).unwrap() > 0,
                "the process ended before listening"
            );
            let v: Value = serde_json::from_str(&line).expect("a JSON log line");
            lines.push(v.clone());
            if v["msg"] == "listening" {
                break v["address"].as_str().unwrap().to_owned();
            }
        };
        let port = address.rsplit(':').next().unwrap();
        let logs = std::thread::spawn(move || {
            let raw: Vec<String> = stdout.lines().map_while(Result::ok).collect();
            let last = raw.len().saturating_sub(1);
            for (i, line) in raw.iter().enumerate() {
                match serde_json::from_str(line) {
                    Ok(value) => lines.push(value),
                    // A process told to exit at once (a second signal) may be cut off in the
                    // middle of its last line; any other line must be whole JSON.
                    Err(_) if i == last => {}
                    Err(err) => panic!("not a JSON log line ({err}): {line}"),
                }
            }
            lines
        });
        Self {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            db,
            logs: Some(logs),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Waits for the exit (at most `within`); returns the status and every log line.
    pub async fn exited(mut self, within: Duration) -> (ExitStatus, Vec<Value>) {
        let mut child = self.child.take().unwrap();
        let status = tokio::task::spawn_blocking(move || wait_exit(&mut child, within))
            .await
            .unwrap();
        let logs = self.logs.take().unwrap().join().unwrap();
        (status, logs)
    }
}

impl Drop for RunningBinary {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
        }
        drop_database(&self.db);
    }
}

/// Asserts the JSON error envelope: status, code, and a trace id of 32 hex digits.
/// The (trace id, root span id, flags) of a response's `traceresponse` header.
pub fn traceresponse(response: &Response) -> (String, String, String) {
    let value = response
        .headers()
        .get("traceresponse")
        .expect("a traceresponse header")
        .to_str()
        .unwrap()
        .to_owned();
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1].len(), 32);
    assert_eq!(parts[2].len(), 16);
    (
        parts[1].to_owned(),
        parts[2].to_owned(),
        parts[3].to_owned(),
    )
}

pub async fn assert_error(response: Response, status: StatusCode, code: &str) -> Value {
    let actual = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(actual, status, "body: {text}");
    let body: Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("error body is not JSON: {text}"));
    assert_eq!(body["error"]["code"], code, "body: {text}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{text}"
    );
    body
}
