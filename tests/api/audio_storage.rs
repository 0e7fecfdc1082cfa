//! Audio in S3-compatible object storage (`AUDIO_STORAGE_URL`), against a real S3 server on
//! loopback: moto's, installed by `scripts/moto.sh install` (which `scripts/install-deps.sh test`
//! runs). Each test starts its own server on a free port and creates its bucket; the app reaches
//! it with the standard `AWS_*` variables, path-style over plain HTTP, as it would MinIO or
//! Ceph. The outage test puts a TCP relay between the two that it can take down and bring back:
//! moto keeps its objects in memory, so stopping moto itself would lose them.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use regex::Regex;
use reqwest::StatusCode;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::audio::{chunked_put, count, ffmpeg_convert, silence_wav, sine_wav};
use crate::helpers::{
    KIND_CLIENT, ReceivedSpan, STATUS_ERROR, TestConfig, poll_within, sidechain_command,
    spawn_app_with, traceresponse, wait_exit,
};
use crate::limits::stalled_request;

const BUCKET: &str = "sidechain-audio";

/// A moto S3 server on a free loopback port, with [`BUCKET`] created; killed on drop.
struct S3Server {
    child: Child,
    port: u16,
    http: reqwest::Client,
}

impl S3Server {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/moto.sh");
        let mut child = Command::new(script)
            .args(["serve", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("scripts/moto.sh runs");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        poll_within("the S3 server", Duration::from_secs(60), || {
            if let Ok(Some(status)) = child.try_wait() {
                let mut why = String::new();
                if let Some(mut stderr) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut stderr, &mut why);
                }
                panic!(
                    "moto's S3 server exited ({status}); is it installed? run \
                     `scripts/moto.sh install`\n{why}"
                );
            }
            let http = http.clone();
            let base = base.clone();
            async move { http.get(&base).send().await.ok().map(drop) }
        })
        .await;
        // moto takes unsigned requests: the test's own look at the bucket needs no credentials.
        let created = http
            .put(format!("{base}/{BUCKET}"))
            .send()
            .await
            .expect("bucket created");
        assert!(created.status().is_success(), "{:?}", created.status());
        Self { child, port, http }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Keys and sizes of the bucket's objects under `prefix`.
    async fn objects(&self, prefix: &str) -> Vec<(String, u64)> {
        let listing = self
            .http
            // Keys here are hex and slashes: nothing to escape.
            .get(format!(
                "{}/{BUCKET}?list-type=2&prefix={prefix}",
                self.endpoint()
            ))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let entry = Regex::new(r"<Key>([^<]*)</Key>.*?<Size>(\d+)</Size>").unwrap();
        entry
            .captures_iter(&listing)
            .map(|c| (c[1].to_owned(), c[2].parse().unwrap()))
            .collect()
    }

    /// Multipart uploads started and neither completed nor aborted.
    async fn open_multipart_uploads(&self) -> usize {
        let listing = self
            .http
            .get(format!("{}/{BUCKET}?uploads", self.endpoint()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        listing.matches("<UploadId>").count()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP relay in front of the S3 server: `down` closes its port (connections refused) and
/// cuts the open connections, as a server that stopped; `up` opens the same port again.
struct Relay {
    port: u16,
    up: watch::Sender<bool>,
}

impl Relay {
    async fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (up, mut wanted) = watch::channel(true);
        tokio::spawn(async move {
            let mut listener = Some(listener);
            let mut connections = JoinSet::new();
            loop {
                match &listener {
                    Some(open) => tokio::select! {
                        accepted = open.accept() => {
                            let Ok((mut inbound, _)) = accepted else { continue };
                            connections.spawn(async move {
                                if let Ok(mut outbound) =
                                    TcpStream::connect(("127.0.0.1", target)).await
                                {
                                    let _ = tokio::io::copy_bidirectional(
                                        &mut inbound,
                                        &mut outbound,
                                    )
                                    .await;
                                }
                            });
                        }
                        changed = wanted.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            if !*wanted.borrow() {
                                listener = None;
                                connections.abort_all();
                            }
                        }
                    },
                    None => {
                        if wanted.changed().await.is_err() {
                            return;
                        }
                        if *wanted.borrow() {
                            listener = Some(
                                TcpListener::bind(("127.0.0.1", port))
                                    .await
                                    .expect("the relay's port again"),
                            );
                        }
                    }
                }
            }
        });
        Self { port, up }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn down(&self) {
        self.up.send_replace(false);
    }

    fn restore(&self) {
        self.up.send_replace(true);
    }
}

/// The variables that put the app's audio in `endpoint`'s bucket, under a prefix of its own.
fn object_storage(c: &mut TestConfig, endpoint: &str, prefix: &str) {
    c.set("AUDIO_STORAGE_URL", format!("s3://{BUCKET}/{prefix}"))
        .set("AWS_ENDPOINT_URL", endpoint)
        .set("AWS_ACCESS_KEY_ID", "sidechain-test")
        .set("AWS_SECRET_ACCESS_KEY", "sidechain-test-secret")
        .set("AWS_REGION", "us-east-1");
}

fn post_prefix(prefix: &str, post: &str) -> String {
    format!("{prefix}/{}/", post.replace('-', ""))
}

/// The S3 CLIENT spans of `trace` whose `rpc.method` is `method`.
fn s3_calls<'a>(trace: &'a [ReceivedSpan], method: &str) -> Vec<&'a ReceivedSpan> {
    trace
        .iter()
        .filter(|s| s.str("rpc.method").as_deref() == Some(method))
        .collect()
}

fn assert_s3_span(span: &ReceivedSpan, method: &str, port: u16) {
    assert_eq!(span.name, format!("S3.{method}"));
    assert_eq!(span.kind, KIND_CLIENT, "{span:#?}");
    assert_eq!(span.str("rpc.system").as_deref(), Some("aws-api"));
    assert_eq!(span.str("rpc.service").as_deref(), Some("S3"));
    assert_eq!(span.str("aws.s3.bucket").as_deref(), Some(BUCKET));
    assert_eq!(span.str("server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(span.int("server.port"), Some(i64::from(port)));
    assert_ne!(span.status_code, STATUS_ERROR, "{span:#?}");
}

/// The parent of `span` among `trace`.
fn parent<'a>(span: &ReceivedSpan, trace: &'a [ReceivedSpan]) -> &'a ReceivedSpan {
    trace
        .iter()
        .find(|s| s.span_id == span.parent_span_id)
        .unwrap_or_else(|| panic!("the parent of {} in the trace", span.name))
}

#[tokio::test]
async fn audio_in_object_storage_is_processed_served_with_ranges_and_deleted() {
    let s3 = S3Server::start().await;
    let prefix = format!("run-{}", Uuid::new_v4().simple());
    let app = spawn_app_with(|c| object_storage(c, &s3.endpoint(), &prefix)).await;
    let user = app.register("producer").await;
    let post = app.post_titled(&user, "in the bucket").await;
    let id = post["id"].as_str().unwrap();

    let wav = sine_wav(2.0, 44_100, 2);
    let response = app.upload(&user, id, "audio/wav", wav.clone()).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let (trace_id, server_span_id, _) = traceresponse(&response);
    let post = app.settled(id).await;
    assert_eq!(post["audio"]["status"], "ready", "{post}");
    assert_eq!(post["audio"]["duration_ms"], 2000);
    // Nothing went to the local directory.
    assert!(!app.audio_dir.exists());

    // Only the MP3 is left: the source went once the job was ready.
    let objects = poll_within("the source removed", Duration::from_secs(10), || async {
        let objects = s3.objects(&post_prefix(&prefix, id)).await;
        (objects.len() == 1).then_some(objects)
    })
    .await;
    let (mp3_key, mp3_size) = &objects[0];
    assert!(mp3_key.ends_with(".mp3"), "{objects:?}");

    // One trace: the upload's PutObject under its SERVER span; the job's GetObject of the
    // source, PutObject of the MP3 under audio.store, DeleteObject of the source.
    let trace = app.otlp.trace_with(&trace_id, "audio.process").await;
    let put = s3_calls(&trace, "PutObject");
    assert_eq!(put.len(), 2, "{trace:#?}");
    let upload_put = put
        .iter()
        .find(|s| s.str("aws.s3.key").unwrap().ends_with(".src"))
        .expect("the upload's PutObject");
    assert_s3_span(upload_put, "PutObject", s3.port);
    assert_eq!(upload_put.parent_span_id, server_span_id);
    let source_key = upload_put.str("aws.s3.key").unwrap();
    assert!(
        source_key.starts_with(&post_prefix(&prefix, id)),
        "{source_key}"
    );
    let mp3_put = put
        .iter()
        .find(|s| s.str("aws.s3.key").as_deref() == Some(mp3_key.as_str()))
        .expect("the MP3's PutObject");
    assert_s3_span(mp3_put, "PutObject", s3.port);
    assert_eq!(parent(mp3_put, &trace).name, "audio.store");
    let get = s3_calls(&trace, "GetObject");
    assert_eq!(get.len(), 1, "{trace:#?}");
    assert_s3_span(get[0], "GetObject", s3.port);
    assert_eq!(get[0].str("aws.s3.key"), Some(source_key.clone()));
    assert_eq!(parent(get[0], &trace).name, "audio.process");
    let delete = s3_calls(&trace, "DeleteObject");
    assert_eq!(delete.len(), 1, "{trace:#?}");
    assert_eq!(delete[0].str("aws.s3.key"), Some(source_key));

    // Served from the bucket, with ranges.
    let path = format!("/api/v1/posts/{id}/audio");
    let full = app.get(&path).await;
    assert_eq!(full.status(), StatusCode::OK);
    let (download_trace, _, _) = traceresponse(&full);
    let etag = full.headers()["etag"].to_str().unwrap().to_owned();
    let bytes = full.bytes().await.unwrap();
    let len = bytes.len();
    assert_eq!(len as u64, *mp3_size);
    let download = app.otlp.trace(&download_trace).await;
    let get = s3_calls(&download, "GetObject");
    assert_eq!(get.len(), 1, "one call, no HeadObject: {download:#?}");
    assert_eq!(get[0].str("aws.s3.key").as_deref(), Some(mp3_key.as_str()));

    let range = |r: String| app.api.get(app.url(&path)).header("range", r).send();
    let part = range("bytes=100-1099".into()).await.unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 100-1099/{len}").as_str()
    );
    assert_eq!(part.headers()["etag"], etag.as_str());
    assert_eq!(part.bytes().await.unwrap(), bytes[100..1100]);
    let tail = range("bytes=-10".into()).await.unwrap();
    assert_eq!(tail.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(tail.bytes().await.unwrap(), bytes[len - 10..]);
    let outside = range(format!("bytes={len}-")).await.unwrap();
    assert_eq!(outside.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        outside.headers()["content-range"],
        format!("bytes */{len}").as_str()
    );
    let stale = app
        .api
        .get(app.url(&path))
        .header("range", "bytes=0-9")
        .header("if-range", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::OK);
    assert_eq!(stale.bytes().await.unwrap(), bytes);
    let cached = app
        .api
        .get(app.url(&path))
        .header("if-none-match", etag.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);

    // A second upload supersedes the first: its objects go.
    let response = app
        .upload(&user, id, "audio/wav", silence_wav(0.5, 22_050, 1))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(app.settled(id).await["audio"]["status"], "ready");
    let objects = poll_within(
        "the first upload's MP3 removed",
        Duration::from_secs(10),
        || async {
            let objects = s3.objects(&post_prefix(&prefix, id)).await;
            (objects.len() == 1 && objects[0].0 != *mp3_key).then_some(objects)
        },
    )
    .await;
    assert!(objects[0].0.ends_with(".mp3"), "{objects:?}");

    // Deleting the post removes its objects, in the request's trace.
    let response = app
        .delete(&format!("/api/v1/posts/{id}"), Some(&user.token))
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let (delete_trace, _, _) = traceresponse(&response);
    assert!(s3.objects(&post_prefix(&prefix, id)).await.is_empty());
    let trace = app.otlp.trace(&delete_trace).await;
    assert_eq!(s3_calls(&trace, "ListObjectsV2").len(), 1, "{trace:#?}");
    assert_eq!(s3_calls(&trace, "DeleteObject").len(), 1, "{trace:#?}");
    let response = app.get(&path).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

/// Bodies larger than a part go up as multipart uploads; one cut short by a limit or a stalled
/// client leaves nothing in the bucket, not even parts.
#[tokio::test]
async fn large_uploads_stream_in_parts_and_failed_ones_leave_nothing() {
    let s3 = S3Server::start().await;
    let prefix = format!("run-{}", Uuid::new_v4().simple());
    let app = spawn_app_with(|c| {
        object_storage(c, &s3.endpoint(), &prefix);
        c.set("AUDIO_MAX_BYTES", (20 * 1024 * 1024).to_string())
            .set("REQUEST_BODY_IDLE_TIMEOUT_S", "1")
            .set("AUDIO_WORKERS", "0");
    })
    .await;
    let user = app.register("producer").await;
    let post = app.post_titled(&user, "large").await;
    let id = post["id"].as_str().unwrap();
    let path = format!("/api/v1/posts/{id}/audio");

    // Past the limit once two parts are stored: 413, the multipart upload aborted.
    let too_large = vec![7u8; 21 * 1024 * 1024];
    assert_eq!(
        chunked_put(&app.address, &path, &user.token, &too_large).await,
        413
    );
    // Stalled after a part was stored: 408, aborted too.
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: audio/wav\r\nContent-Length: 15000000\r\n\r\n",
        user.token
    );
    let (answer, _) = stalled_request(&app, &head, &vec![7u8; 9 * 1024 * 1024]).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    poll_within(
        "the aborted uploads gone",
        Duration::from_secs(10),
        || async { (s3.open_multipart_uploads().await == 0).then_some(()) },
    )
    .await;
    assert!(s3.objects(&prefix).await.is_empty());
    assert_eq!(app.post_json_of(id).await["audio"]["status"], "none");

    // Within the limit: stored whole, in parts, in the request's trace.
    let body = sine_wav(100.0, 44_100, 1);
    assert!(body.len() > 8 * 1024 * 1024);
    let response = app.upload(&user, id, "audio/wav", body.clone()).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let (trace_id, _, _) = traceresponse(&response);
    let objects = s3.objects(&post_prefix(&prefix, id)).await;
    assert_eq!(objects.len(), 1, "{objects:?}");
    assert!(objects[0].0.ends_with(".src"));
    assert_eq!(objects[0].1, body.len() as u64);
    assert_eq!(s3.open_multipart_uploads().await, 0);
    let trace = app.otlp.trace(&trace_id).await;
    assert_eq!(s3_calls(&trace, "CreateMultipartUpload").len(), 1);
    assert_eq!(s3_calls(&trace, "CompleteMultipartUpload").len(), 1);
    let parts: Vec<i64> = s3_calls(&trace, "UploadPart")
        .iter()
        .map(|s| s.int("aws.s3.part_number").unwrap())
        .collect();
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert!(parts.contains(&1) && parts.contains(&2), "{parts:?}");
    for span in s3_calls(&trace, "UploadPart") {
        assert_s3_span(span, "UploadPart", s3.port);
    }
}

/// The store goes away while a job runs: the attempt fails as transient, its storage span
/// says why, and once the store is back the next attempt finishes the job. Nothing is lost.
#[tokio::test]
async fn a_storage_outage_mid_job_is_retried_and_loses_nothing() {
    // Five minutes of silence: seconds of ffmpeg work, so the job is still running when the
    // store goes.
    let flac = ffmpeg_convert(
        &silence_wav(1.0, 22_050, 1),
        &["-stream_loop", "299"],
        "flac",
    );
    let s3 = S3Server::start().await;
    let relay = Relay::start(s3.port).await;
    let prefix = format!("run-{}", Uuid::new_v4().simple());
    let app = spawn_app_with(|c| {
        object_storage(c, &relay.endpoint(), &prefix);
        c.set("AUDIO_MAX_ATTEMPTS", "5");
    })
    .await;
    let user = app.register("producer").await;
    let post = app.post_titled(&user, "outage").await;
    let id = post["id"].as_str().unwrap().to_owned();
    let response = app.upload(&user, &id, "audio/flac", flac).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let (trace_id, _, _) = traceresponse(&response);

    poll_within("the job running", Duration::from_secs(30), || async {
        (app.post_json_of(&id).await["audio"]["status"] == "processing").then_some(())
    })
    .await;
    relay.down();
    // The attempt fails and the job waits for its retry.
    poll_within("the attempt failed", Duration::from_secs(60), || {
        let failed = count(
            &app.db_url,
            "SELECT count(*) AS n FROM audio_jobs WHERE state = 'queued' AND attempts = 1 \
             AND last_error IS NOT NULL AND leased_until > now()",
        ) == 1;
        async move { failed.then_some(()) }
    })
    .await;
    assert_eq!(app.post_json_of(&id).await["audio"]["status"], "pending");
    relay.restore();

    let post = app.settled(&id).await;
    assert_eq!(post["audio"]["status"], "ready", "{post}");
    assert_eq!(post["audio"]["duration_ms"], 300_000);
    assert_eq!(
        count(&app.db_url, "SELECT attempts::bigint AS n FROM audio_jobs"),
        2
    );
    let objects = poll_within("the source removed", Duration::from_secs(10), || async {
        let objects = s3.objects(&post_prefix(&prefix, &id)).await;
        (objects.len() == 1).then_some(objects)
    })
    .await;
    assert!(objects[0].0.ends_with(".mp3"), "{objects:?}");
    let served = app.get(&format!("/api/v1/posts/{id}/audio")).await;
    assert_eq!(served.status(), StatusCode::OK);
    assert_eq!(served.bytes().await.unwrap().len() as u64, objects[0].1);

    // The failed call is in the job's trace: an S3 span with status ERROR and error.type,
    // under the attempt that ended `retried`.
    let trace = poll_within("both attempts' spans", Duration::from_secs(10), || async {
        let trace = app.otlp.trace_with(&trace_id, "audio.process").await;
        (trace.iter().filter(|s| s.name == "audio.process").count() == 2).then_some(trace)
    })
    .await;
    let failed: Vec<&ReceivedSpan> = trace
        .iter()
        .filter(|s| s.str("rpc.system").as_deref() == Some("aws-api"))
        .filter(|s| s.status_code == STATUS_ERROR)
        .collect();
    assert!(!failed.is_empty(), "{trace:#?}");
    for span in &failed {
        assert_eq!(span.kind, KIND_CLIENT);
        assert!(span.str("error.type").is_some(), "{span:#?}");
        assert!(!span.status_message.is_empty(), "{span:#?}");
        assert!(
            !span
                .all_strings()
                .iter()
                .any(|s| s.contains("sidechain-test-secret"))
        );
    }
    let retried = trace
        .iter()
        .find(|s| s.name == "audio.process" && s.str("audio.outcome").as_deref() == Some("retried"))
        .expect("the failed attempt");
    assert_eq!(retried.status_code, STATUS_ERROR);
    assert!(
        failed.iter().any(|span| {
            let mut at = *span;
            while let Some(up) = trace.iter().find(|s| s.span_id == at.parent_span_id) {
                if up.span_id == retried.span_id {
                    return true;
                }
                at = up;
            }
            false
        }),
        "the failed call is under the retried attempt: {trace:#?}"
    );
    let ready = trace
        .iter()
        .find(|s| s.name == "audio.process" && s.str("audio.outcome").as_deref() == Some("ready"))
        .expect("the attempt that finished");
    assert_ne!(ready.status_code, STATUS_ERROR);
}

#[test]
fn a_bad_storage_url_stops_start_up_with_one_line_naming_it() {
    for (vars, named) in [
        (
            vec![("AUDIO_STORAGE_URL", "https://bucket/x")],
            "AUDIO_STORAGE_URL",
        ),
        (vec![("AUDIO_STORAGE_URL", "s3://")], "AUDIO_STORAGE_URL"),
        (
            vec![("AUDIO_STORAGE_URL", "s3://key:secret-password@bucket/x")],
            "AUDIO_STORAGE_URL",
        ),
        (
            vec![
                ("AUDIO_STORAGE_URL", "s3://bucket/x"),
                ("AWS_ENDPOINT_URL", "minio:9000"),
            ],
            "AWS_ENDPOINT_URL",
        ),
    ] {
        let mut command = sidechain_command();
        for (name, value) in &vars {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let status = wait_exit(&mut child, Duration::from_secs(10));
        assert_eq!(status.code(), Some(2), "{vars:?}");
        let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(lines[0].contains(named), "{stderr}");
        assert!(!stderr.contains("secret-password"), "{stderr}");
    }
}
