//! Audio uploads and their background processing (CONTRACT.md §6), with real ffmpeg and
//! Postgres: the audio is generated here (a WAV written by the test, FLAC/MP3 made from it
//! with ffmpeg), uploaded over HTTP, and followed to `ready` or `failed`; the trace is read
//! back from the in-test OTLP receiver.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sidechain::audio::jobs::{self, Written};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use crate::helpers::{
    KIND_SERVER, OtlpReceiver, PASSWORD, ReceivedSpan, RunningBinary, STATUS_ERROR, TestApp,
    TestUser, assert_error, drop_database, poll_within, spawn_app, spawn_app_with, traceresponse,
};

const KIND_CONSUMER: i32 = 5;
const STAGES: [&str; 4] = [
    "audio.probe",
    "audio.transcode",
    "audio.waveform",
    "audio.store",
];

/// How long processing of a short file may take on a busy machine.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// A 16-bit PCM WAV of `seconds`, `rate` Hz, `channels`, each sample from `sample(t)` in -1..1.
pub(crate) fn wav(seconds: f64, rate: u32, channels: u16, sample: impl Fn(f64) -> f64) -> Vec<u8> {
    let frames = (seconds * f64::from(rate)) as u32;
    let data_len = frames * u32::from(channels) * 2;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * u32::from(channels) * 2).to_le_bytes());
    out.extend_from_slice(&(channels * 2).to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for i in 0..frames {
        let v = (sample(f64::from(i) / f64::from(rate)) * 32767.0).round() as i16;
        for _ in 0..channels {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// A full-scale 440 Hz sine.
pub(crate) fn sine_wav(seconds: f64, rate: u32, channels: u16) -> Vec<u8> {
    wav(seconds, rate, channels, |t| {
        (2.0 * std::f64::consts::PI * 440.0 * t).sin()
    })
}

pub(crate) fn silence_wav(seconds: f64, rate: u32, channels: u16) -> Vec<u8> {
    wav(seconds, rate, channels, |_| 0.0)
}

/// Half an hour of silence: small as FLAC, seconds of work to transcode.
fn long_silence_flac() -> Vec<u8> {
    ffmpeg_convert(
        &silence_wav(1.0, 22_050, 1),
        &["-stream_loop", "1799"],
        "flac",
    )
}

/// Converts `input` with ffmpeg (extra `args` before the input, e.g. to loop it) to `ext`.
pub(crate) fn ffmpeg_convert(input: &[u8], pre_input: &[&str], ext: &str) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("sidechain-audio-src-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = dir.join("in.wav");
    let target = dir.join(format!("out.{ext}"));
    std::fs::write(&source, input).unwrap();
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y"])
        .args(pre_input)
        .arg("-i")
        .arg(&source)
        .arg(&target)
        .status()
        .expect("ffmpeg runs");
    assert!(status.success());
    let bytes = std::fs::read(&target).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    bytes
}

pub(crate) async fn put_audio(
    client: &reqwest::Client,
    base: &str,
    post: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut request = client
        .put(format!("{base}/api/v1/posts/{post}/audio"))
        .body(body);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    request.send().await.expect("request sent")
}

impl TestApp {
    pub(crate) async fn upload(
        &self,
        user: &TestUser,
        post: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> reqwest::Response {
        put_audio(
            &self.api,
            &self.address,
            post,
            Some(&user.token),
            Some(content_type),
            body,
        )
        .await
    }

    pub(crate) async fn post_json_of(&self, post: &str) -> Value {
        let response = self.get(&format!("/api/v1/posts/{post}")).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    /// Waits until the post's audio leaves `pending`/`processing`; returns the post.
    pub(crate) async fn settled(&self, post: &str) -> Value {
        settled_at(&self.api, &self.address, post).await
    }

    pub(crate) fn post_dir(&self, post: &str) -> PathBuf {
        self.audio_dir.join(post.replace('-', ""))
    }
}

pub(crate) async fn settled_at(client: &reqwest::Client, base: &str, post: &str) -> Value {
    poll_within(&format!("post {post} processed"), READY_WITHIN, || async {
        let response = client
            .get(format!("{base}/api/v1/posts/{post}"))
            .send()
            .await
            .ok()?;
        let body: Value = response.json().await.ok()?;
        match body["audio"]["status"].as_str()? {
            "ready" | "failed" => Some(body),
            _ => None,
        }
    })
    .await
}

fn peaks(post: &Value) -> Vec<f64> {
    post["audio"]["waveform"]
        .as_array()
        .expect("a waveform")
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

pub(crate) fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Waits, at most `within`, until the files in `dir` satisfy `pred` (files are removed after
/// the database says the job ended); returns them.
pub(crate) async fn files_when(
    what: &str,
    dir: &Path,
    within: Duration,
    pred: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    poll_within(what, within, || {
        let files = files_in(dir);
        let done = pred(&files);
        async move { done.then_some(files) }
    })
    .await
}

/// `span`'s ancestors, nearest first, among `spans`.
fn ancestors<'a>(span: &ReceivedSpan, spans: &'a [ReceivedSpan]) -> Vec<&'a ReceivedSpan> {
    let by_id: HashMap<&str, &ReceivedSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut out = Vec::new();
    let mut parent = span.parent_span_id.as_str();
    while let Some(p) = by_id.get(parent) {
        out.push(*p);
        parent = p.parent_span_id.as_str();
    }
    out
}

#[tokio::test]
async fn a_wav_upload_becomes_ready_in_the_uploads_trace() {
    let app = spawn_app().await;
    let user = app.register("producer").await;
    let post = app.post_titled(&user, "sine").await;
    let id = post["id"].as_str().unwrap();
    assert_eq!(post["audio"]["status"], "none");

    let response = app
        .upload(&user, id, "audio/wav", sine_wav(2.0, 44_100, 2))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let (trace_id, server_span_id, _) = traceresponse(&response);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["post_id"], id);
    assert_eq!(body["audio"]["status"], "pending");
    // Cached now, most likely while the job still runs.
    app.get("/api/v1/feed/unified?type=global").await;

    let post = app.settled(id).await;
    // The finished job makes cached feed pages stale just after it commits (the worker removes
    // the source in between): within moments, not the cache TTL (30 s).
    poll_within(
        "the cached feed to show the audio ready",
        Duration::from_secs(5),
        || async {
            let feed: Value = app
                .get("/api/v1/feed/unified?type=global")
                .await
                .json()
                .await
                .ok()?;
            (feed["items"][0]["audio"]["status"] == "ready").then_some(())
        },
    )
    .await;
    let audio = &post["audio"];
    assert_eq!(audio["status"], "ready", "{post}");
    assert_eq!(audio["duration_ms"], 2000);
    assert_eq!(audio["sample_rate"], 44_100);
    assert_eq!(audio["channels"], 2);
    assert_eq!(audio["source_format"], "wav");
    assert!(audio["error"].is_null());
    let peaks = peaks(&post);
    assert_eq!(peaks.len(), 200);
    assert!(peaks.iter().all(|p| (0.95..=1.0).contains(p)), "{peaks:?}");

    // One trace: the upload's SERVER span is the parent of audio.process, an ancestor of every
    // stage; the job's queries are in it too.
    let trace = app.otlp.trace_with(&trace_id, "audio.process").await;
    let server = trace
        .iter()
        .find(|s| s.span_id == server_span_id)
        .expect("the upload span");
    assert_eq!(server.kind, KIND_SERVER);
    assert_eq!(server.name, "PUT /api/v1/posts/{id}/audio");
    let process: Vec<&ReceivedSpan> = trace.iter().filter(|s| s.name == "audio.process").collect();
    assert_eq!(process.len(), 1);
    let process = process[0];
    assert_eq!(process.kind, KIND_CONSUMER);
    assert_eq!(process.parent_span_id, server_span_id);
    assert_ne!(process.status_code, STATUS_ERROR);
    for stage in STAGES {
        let span = trace
            .iter()
            .find(|s| s.name == stage)
            .unwrap_or_else(|| panic!("{stage} in the trace: {trace:#?}"));
        let chain: Vec<&str> = ancestors(span, &trace)
            .iter()
            .map(|s| s.span_id.as_str())
            .collect();
        assert_eq!(chain.first(), Some(&process.span_id.as_str()), "{stage}");
        assert!(chain.contains(&server_span_id.as_str()), "{stage}");
        assert!(span.int("audio.input.bytes").unwrap() > 0, "{stage}");
        assert!(
            span.attributes.contains_key("audio.stage.duration_ms"),
            "{stage}"
        );
    }
    let transcode = trace.iter().find(|s| s.name == "audio.transcode").unwrap();
    assert_eq!(transcode.int("process.exit.code"), Some(0));
    let (_, event) = transcode
        .events
        .iter()
        .find(|(name, _)| name == "audio.transcoded")
        .expect("the audio.transcoded event");
    assert!(matches!(
        event.get("audio.output.bytes"),
        Some(opentelemetry_proto::tonic::common::v1::any_value::Value::IntValue(n)) if *n > 0
    ));
    assert!(matches!(
        event.get("audio.bit_rate"),
        Some(opentelemetry_proto::tonic::common::v1::any_value::Value::IntValue(128_000))
    ));
    let job_queries: Vec<&ReceivedSpan> = trace
        .iter()
        .filter(|s| {
            s.name == "UPDATE posts"
                && ancestors(s, &trace)
                    .iter()
                    .any(|a| a.span_id == process.span_id)
        })
        .collect();
    assert!(
        job_queries.len() >= 2,
        "processing and ready updates: {trace:#?}"
    );

    // The job's log lines carry its trace.
    let line = app
        .logs
        .wait_for("the job's ready line", |l| l["msg"] == "audio job ready")
        .await;
    assert_eq!(line["trace_id"], trace_id.as_str());
    assert_eq!(line["span_id"], process.span_id.as_str());

    // Metrics.
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("audio_jobs_total{outcome=\"ready\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("audio_stage_duration_seconds_count{stage=\"transcode\",outcome=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("audio_jobs_queued 0"), "{metrics}");
}

#[tokio::test]
async fn flac_and_mp3_uploads_are_processed() {
    let app = spawn_app().await;
    let user = app.register("producer").await;

    let silent = app.post_titled(&user, "silence").await;
    let silent_id = silent["id"].as_str().unwrap();
    let flac = ffmpeg_convert(&silence_wav(1.5, 48_000, 1), &[], "flac");
    let response = app.upload(&user, silent_id, "audio/flac", flac).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    let sine = app.post_titled(&user, "sine mp3").await;
    let sine_id = sine["id"].as_str().unwrap();
    let mp3 = ffmpeg_convert(&sine_wav(1.5, 44_100, 2), &[], "mp3");
    let response = app.upload(&user, sine_id, "audio/mpeg", mp3).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    let post = app.settled(silent_id).await;
    let audio = &post["audio"];
    assert_eq!(audio["status"], "ready", "{post}");
    assert_eq!(audio["source_format"], "flac");
    assert_eq!(audio["sample_rate"], 48_000);
    assert_eq!(audio["channels"], 1);
    assert_eq!(audio["duration_ms"], 1500);
    assert!(peaks(&post).iter().all(|p| *p < 0.01), "{post}");

    let post = app.settled(sine_id).await;
    let audio = &post["audio"];
    assert_eq!(audio["status"], "ready", "{post}");
    assert_eq!(audio["source_format"], "mp3");
    assert_eq!(audio["channels"], 2);
    // MP3 pads the start and end with encoder delay.
    let duration = audio["duration_ms"].as_i64().unwrap();
    assert!((1450..=1600).contains(&duration), "{duration}");
    let peaks = peaks(&post);
    assert!(peaks[5..195].iter().all(|p| *p > 0.8), "{peaks:?}");
}

#[tokio::test]
async fn the_mp3_is_served_with_ranges() {
    let app = spawn_app().await;
    let user = app.register("producer").await;
    let post = app.post_titled(&user, "ranges").await;
    let id = post["id"].as_str().unwrap();
    let path = format!("/api/v1/posts/{id}/audio");
    assert_error(app.get(&path).await, StatusCode::NOT_FOUND, "not_found").await;

    let response = app
        .upload(&user, id, "audio/wav", sine_wav(1.0, 44_100, 1))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(app.settled(id).await["audio"]["status"], "ready");

    let full = app.get(&path).await;
    assert_eq!(full.status(), StatusCode::OK);
    assert_eq!(full.headers()["content-type"], "audio/mpeg");
    assert_eq!(full.headers()["accept-ranges"], "bytes");
    let etag = full.headers()["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    let bytes = full.bytes().await.unwrap();
    let len = bytes.len();
    assert!(len > 10_000, "{len}");
    // An MP3 frame sync (LAME writes no ID3 tag by default... ffmpeg writes ID3v2).
    assert!(bytes.starts_with(b"ID3") || (bytes[0] == 0xff && bytes[1] & 0xe0 == 0xe0));

    let range = |r: &'static str| app.api.get(app.url(&path)).header("range", r).send();
    let part = range("bytes=0-99").await.unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 0-99/{len}").as_str()
    );
    assert_eq!(part.headers()["etag"], etag.as_str());
    assert_eq!(part.bytes().await.unwrap(), bytes[..100]);

    let tail = range("bytes=-10").await.unwrap();
    assert_eq!(tail.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        tail.headers()["content-range"],
        format!("bytes {}-{}/{len}", len - 10, len - 1).as_str()
    );
    assert_eq!(tail.bytes().await.unwrap(), bytes[len - 10..]);

    let from = app
        .api
        .get(app.url(&path))
        .header("range", format!("bytes={}-", len - 5))
        .send()
        .await
        .unwrap();
    assert_eq!(from.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(from.bytes().await.unwrap(), bytes[len - 5..]);

    let outside = app
        .api
        .get(app.url(&path))
        .header("range", format!("bytes={len}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(outside.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        outside.headers()["content-range"],
        format!("bytes */{len}").as_str()
    );
    assert_error(
        outside,
        StatusCode::RANGE_NOT_SATISFIABLE,
        "range_not_satisfiable",
    )
    .await;

    // A stale If-Range gets the whole file; a current If-None-Match gets 304.
    let stale = app
        .api
        .get(app.url(&path))
        .header("range", "bytes=0-9")
        .header("if-range", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::OK);
    assert_eq!(stale.bytes().await.unwrap().len(), len);
    let cached = app
        .api
        .get(app.url(&path))
        .header("if-none-match", etag.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
}

/// An app without workers (so a job stays queued) and a post of one user with its upload
/// queued; returns the app and the post's id.
async fn queued_upload(title: &str) -> (TestApp, String) {
    let app = spawn_app_with(|c| {
        c.set("AUDIO_WORKERS", "0");
    })
    .await;
    let user = app.register("producer").await;
    let post = app.post_titled(&user, title).await;
    let id = post["id"].as_str().unwrap().to_owned();
    let response = app
        .upload(&user, &id, "audio/wav", sine_wav(0.5, 22_050, 1))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    (app, id)
}

#[tokio::test]
async fn audio_not_yet_processed_is_409() {
    let (app, id) = queued_upload("waiting").await;
    assert_eq!(app.post_json_of(&id).await["audio"]["status"], "pending");
    let response = app.get(&format!("/api/v1/posts/{id}/audio")).await;
    assert_error(response, StatusCode::CONFLICT, "audio_not_ready").await;
    assert_error(
        app.get(&format!("/api/v1/posts/{}/audio", Uuid::new_v4()))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn uploads_are_checked_before_they_are_stored() {
    let app = spawn_app_with(|c| {
        c.set("AUDIO_MAX_BYTES", "65536").set("AUDIO_WORKERS", "0");
    })
    .await;
    let author = app.register("author").await;
    let other = app.register("other").await;
    let post = app.post_titled(&author, "checked").await;
    let id = post["id"].as_str().unwrap();
    let small = || sine_wav(0.2, 22_050, 1);
    let base = app.address.as_str();

    let response = put_audio(&app.api, base, id, None, Some("audio/wav"), small()).await;
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let response = app.upload(&other, id, "audio/wav", small()).await;
    assert_error(response, StatusCode::FORBIDDEN, "forbidden").await;
    for missing in [Uuid::new_v4().to_string(), "not-a-uuid".to_owned()] {
        let response = app.upload(&author, &missing, "audio/wav", small()).await;
        assert_error(response, StatusCode::NOT_FOUND, "not_found").await;
    }
    for wrong in ["text/plain", "application/octet-stream", "video/mp4"] {
        let response = app.upload(&author, id, wrong, small()).await;
        assert_error(
            response,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        )
        .await;
    }
    let response = put_audio(&app.api, base, id, Some(&author.token), None, small()).await;
    assert_error(
        response,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;

    // Too large, declared by Content-Length.
    let big = sine_wav(3.0, 22_050, 1);
    assert!(big.len() > 65_536);
    let response = app.upload(&author, id, "audio/wav", big.clone()).await;
    assert_error(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;

    // Too large, found while streaming a chunked body: the partial file is removed.
    let status = chunked_put(
        &app.address,
        &format!("/api/v1/posts/{id}/audio"),
        &author.token,
        &big,
    )
    .await;
    assert_eq!(status, 413);
    assert!(
        files_in(&app.post_dir(id)).is_empty(),
        "{:?}",
        files_in(&app.post_dir(id))
    );

    // Nothing of it reached the post; a chunked body within the limit is taken.
    assert_eq!(app.post_json_of(id).await["audio"]["status"], "none");
    let status = chunked_put(
        &app.address,
        &format!("/api/v1/posts/{id}/audio"),
        &author.token,
        &small(),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(app.post_json_of(id).await["audio"]["status"], "pending");
    assert_eq!(files_in(&app.post_dir(id)).len(), 1);
}

/// A PUT with `Transfer-Encoding: chunked` (no `Content-Length`), written by hand; the status.
pub(crate) async fn chunked_put(base: &str, path: &str, token: &str, body: &[u8]) -> u16 {
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: audio/wav\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(8192) {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
        // The server may answer and stop reading once the limit is passed.
        if stream.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status: {text}"))
}

#[tokio::test]
async fn garbage_with_an_audio_type_ends_failed_with_a_reason() {
    let app = spawn_app().await;
    let user = app.register("producer").await;
    let post = app.post_titled(&user, "garbage").await;
    let id = post["id"].as_str().unwrap();
    let garbage = b"garbage! ".repeat(1000);
    let response = app.upload(&user, id, "audio/wav", garbage).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let (trace_id, _, _) = traceresponse(&response);

    let post = app.settled(id).await;
    let audio = &post["audio"];
    assert_eq!(audio["status"], "failed", "{post}");
    let reason = audio["error"].as_str().unwrap();
    assert!(reason.starts_with("not a readable audio file"), "{reason}");
    assert!(!reason.contains('/'), "no server path: {reason}");
    assert!(audio["waveform"].is_null());
    assert_error(
        app.get(&format!("/api/v1/posts/{id}/audio")).await,
        StatusCode::CONFLICT,
        "audio_not_ready",
    )
    .await;

    let spans = app.otlp.trace_with(&trace_id, "audio.process").await;
    let process = spans.iter().find(|s| s.name == "audio.process").unwrap();
    assert_eq!(process.status_code, STATUS_ERROR);
    assert_eq!(process.status_message, reason);
    let probe = spans.iter().find(|s| s.name == "audio.probe").unwrap();
    assert_eq!(probe.status_code, STATUS_ERROR);
    assert_eq!(probe.parent_span_id, process.span_id);
    assert_eq!(probe.int("process.exit.code"), Some(1));
    assert!(!spans.iter().any(|s| s.name == "audio.transcode"));
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("audio_jobs_total{outcome=\"failed\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_second_upload_supersedes_the_first_and_delete_removes_the_files() {
    let app = spawn_app().await;
    let user = app.register("producer").await;
    let post = app.post_titled(&user, "twice").await;
    let id = post["id"].as_str().unwrap();
    let first = app
        .upload(&user, id, "audio/wav", sine_wav(1.0, 44_100, 2))
        .await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let second = app
        .upload(&user, id, "audio/wav", silence_wav(0.5, 22_050, 1))
        .await;
    assert_eq!(second.status(), StatusCode::ACCEPTED);

    let post = app.settled(id).await;
    assert_eq!(post["audio"]["status"], "ready");
    assert_eq!(post["audio"]["channels"], 1);
    assert_eq!(post["audio"]["sample_rate"], 22_050);
    // Only the second upload's MP3 is left: the first upload's files went when it was
    // superseded, the second's source once it was ready.
    let dir = app.post_dir(id);
    let files = files_when(
        "the first upload's files removed",
        &dir,
        Duration::from_secs(10),
        |files| files.len() == 1,
    )
    .await;
    assert!(files[0].ends_with(".mp3"), "{files:?}");

    let response = app
        .delete(&format!("/api/v1/posts/{id}"), Some(&user.token))
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(!dir.exists());
}

/// A worker ending a job while its author uploads again: both transactions write the post and
/// its jobs, and both must take the post's row first, or each holds the row the other waits
/// for and Postgres ends the deadlock by failing one (schemathesis' stateful phase met it as a
/// 500 on the upload). The two sides are interleaved by hand where the cycle would close: the
/// upload's transaction is `enqueue`'s two steps, written out.
#[tokio::test]
async fn a_job_ending_during_a_new_upload_does_not_deadlock() {
    let (app, id) = queued_upload("raced").await;
    let post_id: Uuid = id.parse().unwrap();

    // The worker's side: the job claimed, as a worker does.
    let mut worker = PgConnection::establish(&app.db_url).unwrap();
    let job = jobs::claim(&mut worker, Duration::from_secs(60))
        .unwrap()
        .expect("the upload's job is queued");
    assert_eq!(job.post_id, post_id);
    let worker_pid = diesel::sql_query("SELECT pg_backend_pid()::bigint AS n")
        .get_result::<Count>(&mut worker)
        .unwrap()
        .n;

    // The new upload's first step: the post's row locked.
    let mut upload = PgConnection::establish(&app.db_url).unwrap();
    diesel::sql_query("BEGIN").execute(&mut upload).unwrap();
    diesel::sql_query("SELECT id FROM posts WHERE id = $1 FOR UPDATE")
        .bind::<diesel::sql_types::Uuid, _>(post_id)
        .execute(&mut upload)
        .unwrap();

    // The job fails meanwhile: it waits for the post.
    let failing = std::thread::spawn(move || {
        jobs::fail(&mut worker, &job, "not a readable audio file", false)
    });
    let waiting = format!(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE pid = {worker_pid} \
         AND wait_event_type = 'Lock'"
    );
    poll_within(
        "the worker waiting for a lock",
        Duration::from_secs(10),
        || {
            let waits = count(&app.db_url, &waiting) == 1;
            async move { waits.then_some(()) }
        },
    )
    .await;

    // The upload's second step: the post's open jobs cancelled. A worker that had taken the
    // job's row before the post's would hold it now, and one side would get "deadlock detected".
    let cancelled = diesel::sql_query(
        "UPDATE audio_jobs SET state = 'cancelled' \
         WHERE post_id = $1 AND state IN ('queued', 'running')",
    )
    .bind::<diesel::sql_types::Uuid, _>(post_id)
    .execute(&mut upload);
    assert_eq!(cancelled.expect("the upload's transaction goes on"), 1);
    diesel::sql_query("COMMIT").execute(&mut upload).unwrap();

    let written = failing
        .join()
        .unwrap()
        .expect("the worker's transaction ends without an error");
    assert_eq!(written, Written::Lost, "the upload cancelled the job");
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

pub(crate) fn count(db_url: &str, sql: &str) -> i64 {
    let mut conn = PgConnection::establish(db_url).unwrap();
    diesel::sql_query(sql)
        .get_result::<Count>(&mut conn)
        .unwrap()
        .n
}

struct Remote {
    client: reqwest::Client,
    base: String,
}

impl Remote {
    fn of(binary: &RunningBinary) -> Self {
        Self {
            // A fresh connection per request: a kept-alive one that the server closes after its
            // idle timeout just as a request goes out on it fails that request.
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
            base: binary.base.clone(),
        }
    }

    async fn register(&self, name: &str) -> TestUser {
        let response = self
            .client
            .post(format!("{}/api/v1/auth/register", self.base))
            .json(&json!({"username": name, "email": format!("{name}@example.com"), "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.unwrap();
        TestUser {
            id: body["user"]["id"].as_str().unwrap().to_owned(),
            token: body["token"].as_str().unwrap().to_owned(),
        }
    }

    async fn post(&self, user: &TestUser, title: &str) -> String {
        let response = self
            .client
            .post(format!("{}/api/v1/posts", self.base))
            .bearer_auth(&user.token)
            .json(&json!({ "title": title }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.unwrap();
        body["id"].as_str().unwrap().to_owned()
    }

    async fn upload(
        &self,
        user: &TestUser,
        post: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> reqwest::Response {
        let response = put_audio(
            &self.client,
            &self.base,
            post,
            Some(&user.token),
            Some(content_type),
            body,
        )
        .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        response
    }

    async fn status(&self, post: &str) -> Option<String> {
        let response = self
            .client
            .get(format!("{}/api/v1/posts/{post}", self.base))
            .send()
            .await
            .ok()?;
        let body: Value = response.json().await.ok()?;
        body["audio"]["status"].as_str().map(str::to_owned)
    }
}

/// A database and storage directory that several processes share; removed at the end.
struct Shared {
    db_name: String,
    db_url: String,
    dir: PathBuf,
}

impl Shared {
    fn new() -> Self {
        let db_name = format!("sidechain_test_{}", Uuid::new_v4().simple());
        let base = std::env::var("TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
        Self {
            db_url: format!("{base}/{db_name}"),
            dir: std::env::temp_dir().join(format!("sidechain-audio-{db_name}")),
            db_name,
        }
    }

    fn launch(&self, extra: &[(&str, &str)]) -> RunningBinary {
        RunningBinary::launch(|cmd| {
            cmd.env("DATABASE_URL", &self.db_url)
                .env("AUDIO_STORAGE_DIR", &self.dir);
            for (k, v) in extra {
                cmd.env(k, v);
            }
        })
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        drop_database(&self.db_name);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn a_job_of_a_killed_process_is_taken_again_and_completes() {
    // Made before any request (see `Remote::of`).
    let flac = long_silence_flac();
    let shared = Shared::new();
    let lease = [("AUDIO_JOB_LEASE_S", "2")];
    let first = shared.launch(&lease);
    let remote = Remote::of(&first);
    let user = remote.register("producer").await;
    let post = remote.post(&user, "long").await;
    remote.upload(&user, &post, "audio/flac", flac).await;
    poll_within("the job running", Duration::from_secs(30), || async {
        (remote.status(&post).await.as_deref() == Some("processing")).then_some(())
    })
    .await;
    // SIGKILL, mid-job: no chance to give the job back.
    drop(first);
    assert_eq!(
        count(
            &shared.db_url,
            "SELECT count(*) AS n FROM audio_jobs WHERE state = 'running'"
        ),
        1
    );

    let second = shared.launch(&lease);
    let remote = Remote::of(&second);
    let post_json = settled_at(&remote.client, &remote.base, &post).await;
    assert_eq!(post_json["audio"]["status"], "ready", "{post_json}");
    assert_eq!(post_json["audio"]["duration_ms"], 1_800_000);
    assert_eq!(
        count(
            &shared.db_url,
            "SELECT attempts::bigint AS n FROM audio_jobs"
        ),
        2,
        "the second process took the job over"
    );
}

#[tokio::test]
async fn a_stopping_process_gives_its_job_back() {
    // Made before any request (see `Remote::of`).
    let flac = long_silence_flac();
    let shared = Shared::new();
    let binary = shared.launch(&[]);
    let remote = Remote::of(&binary);
    let user = remote.register("producer").await;
    let post = remote.post(&user, "long").await;
    remote.upload(&user, &post, "audio/flac", flac).await;
    poll_within("the job running", Duration::from_secs(30), || async {
        (remote.status(&post).await.as_deref() == Some("processing")).then_some(())
    })
    .await;
    binary.terminate();
    let (status, logs) = binary.exited(Duration::from_secs(30)).await;
    assert!(status.success());
    assert!(
        logs.iter()
            .any(|l| l["msg"] == "audio job given back: the process is stopping"),
        "{logs:#?}"
    );
    // Queued again, the interrupted attempt not counted: the next process starts afresh.
    assert_eq!(
        count(
            &shared.db_url,
            "SELECT count(*) AS n FROM audio_jobs WHERE state = 'queued' AND attempts = 0 \
             AND leased_until IS NULL"
        ),
        1
    );
    assert_eq!(
        count(
            &shared.db_url,
            "SELECT count(*) AS n FROM posts WHERE audio_status = 'pending'"
        ),
        1
    );
}

#[tokio::test]
async fn two_processes_on_one_database_process_each_job_exactly_once() {
    let otlp = OtlpReceiver::start().await;
    let shared = Shared::new();
    let endpoint = otlp.server.uri();
    let vars = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("AUDIO_WORKERS", "2"),
        // One user uploads all eight at once.
        ("AUDIO_PENDING_PER_USER", "8"),
    ];
    let a = shared.launch(&vars);
    let b = shared.launch(&vars);
    let (ra, rb) = (Remote::of(&a), Remote::of(&b));
    let user = ra.register("producer").await;

    let mut uploads = Vec::new();
    for i in 0..8 {
        let remote = if i % 2 == 0 { &ra } else { &rb };
        let post = remote.post(&user, &format!("track {i}")).await;
        let response = remote
            .upload(&user, &post, "audio/wav", sine_wav(0.3, 22_050, 1))
            .await;
        let (trace_id, _, _) = traceresponse(&response);
        uploads.push((post, trace_id));
    }
    for (post, _) in &uploads {
        let body = settled_at(&ra.client, &ra.base, post).await;
        assert_eq!(body["audio"]["status"], "ready", "{body}");
    }
    assert_eq!(
        count(
            &shared.db_url,
            "SELECT count(*) AS n FROM audio_jobs WHERE state = 'done' AND attempts = 1"
        ),
        8
    );

    let spans = otlp
        // The job's root ends last (after its stages): once it is there, the job's spans are.
        .wait_for_spans("every job's root span", |spans| {
            uploads.iter().all(|(_, trace)| {
                spans
                    .iter()
                    .any(|s| &s.trace_id == trace && s.name == "audio.process")
            })
        })
        .await;
    for (_, trace) in &uploads {
        assert!(
            spans
                .iter()
                .any(|s| &s.trace_id == trace && s.name == "audio.store"),
            "trace {trace} has its stages"
        );
        let process = spans
            .iter()
            .filter(|s| &s.trace_id == trace && s.name == "audio.process")
            .count();
        assert_eq!(process, 1, "trace {trace}");
    }
    // Both processes worked (the jobs were not all taken by one).
    let instances: std::collections::HashSet<String> = spans
        .iter()
        .filter(|s| s.name == "audio.process")
        .filter_map(|s| match s.resource.get("service.instance.id") {
            Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(v)) => {
                Some(v.clone())
            }
            _ => None,
        })
        .collect();
    assert!(!instances.is_empty());
}

#[tokio::test]
async fn without_ffmpeg_the_service_starts_and_jobs_fail_with_that_reason() {
    let shared = Shared::new();
    let empty = std::env::temp_dir().join(format!("sidechain-no-ffmpeg-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&empty).unwrap();
    let binary = shared.launch(&[("PATH", empty.to_str().unwrap())]);
    let remote = Remote::of(&binary);
    let user = remote.register("producer").await;
    let post = remote.post(&user, "no tools").await;
    remote
        .upload(&user, &post, "audio/wav", sine_wav(0.3, 22_050, 1))
        .await;
    let body = settled_at(&remote.client, &remote.base, &post).await;
    assert_eq!(body["audio"]["status"], "failed");
    assert_eq!(
        body["audio"]["error"],
        "audio processing is unavailable: ffmpeg is not installed on the server"
    );
    binary.terminate();
    let (status, logs) = binary.exited(Duration::from_secs(20)).await;
    assert!(status.success());
    let warnings: Vec<&Value> = logs
        .iter()
        .filter(|l| {
            l["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with("audio processing unavailable"))
        })
        .collect();
    assert_eq!(warnings.len(), 1, "{logs:#?}");
    assert_eq!(warnings[0]["level"], "warn");
    let _ = std::fs::remove_dir_all(&empty);
}

#[tokio::test]
async fn the_openapi_document_describes_the_audio_routes() {
    let app = spawn_app().await;
    let doc: Value = app
        .get("/api-docs/openapi.json")
        .await
        .json()
        .await
        .unwrap();
    let route = &doc["paths"]["/api/v1/posts/{id}/audio"];
    let put = &route["put"];
    for status in ["202", "400", "401", "403", "404", "413", "415"] {
        assert!(put["responses"][status].is_object(), "PUT {status}");
    }
    let types = put["requestBody"]["content"].as_object().unwrap();
    let mut types: Vec<&str> = types.keys().map(String::as_str).collect();
    types.sort_unstable();
    assert_eq!(
        types,
        [
            "audio/aiff",
            "audio/flac",
            "audio/mpeg",
            "audio/ogg",
            "audio/wav",
            "audio/x-wav"
        ]
    );
    let get = &route["get"];
    for status in ["200", "206", "304", "404", "409", "416"] {
        assert!(get["responses"][status].is_object(), "GET {status}");
    }
    assert!(get["responses"]["200"]["content"]["audio/mpeg"].is_object());
    assert!(get["responses"]["206"]["headers"]["Content-Range"].is_object());
    assert!(get["responses"]["416"]["headers"]["Content-Range"].is_object());
    let audio = &doc["components"]["schemas"]["AudioJson"];
    assert!(audio["properties"]["waveform"].is_object(), "{audio}");
    assert!(doc["components"]["schemas"]["PostJson"]["properties"]["audio"].is_object());
}

#[tokio::test]
async fn a_stage_past_its_timeout_is_killed_and_the_job_fails() {
    // Made before any request (see `Remote::of`).
    let flac = long_silence_flac();
    let app = spawn_app_with(|c| {
        c.set("AUDIO_STAGE_TIMEOUT_S", "1");
    })
    .await;
    let user = app.register("producer").await;
    let post = app.post_titled(&user, "too long").await;
    let id = post["id"].as_str().unwrap();
    let response = app.upload(&user, id, "audio/flac", flac).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let post = app.settled(id).await;
    assert_eq!(post["audio"]["status"], "failed", "{post}");
    assert_eq!(
        post["audio"]["error"],
        "processing took too long (ffmpeg was stopped after 1 s)"
    );
    // The child was killed: no ffmpeg still works on this post's files.
    let dir = app.post_dir(id).to_string_lossy().into_owned();
    poll_within("ffmpeg gone", Duration::from_secs(5), || {
        let running = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(Result::ok)
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .any(|cmd| String::from_utf8_lossy(&cmd).contains(&dir));
        async move { (!running).then_some(()) }
    })
    .await;
    // Its partial output is gone, and so is the source: a job failed for good never reads it
    // again, and it would hold the author's quota.
    let dir = app.post_dir(id);
    files_when(
        "the job's files removed",
        &dir,
        Duration::from_secs(5),
        |files| files.is_empty(),
    )
    .await;
}

#[tokio::test]
async fn a_job_interrupted_too_often_ends_failed() {
    let shared = Shared::new();
    // This process only takes uploads.
    let front = shared.launch(&[("AUDIO_WORKERS", "0")]);
    let remote = Remote::of(&front);
    let user = remote.register("producer").await;
    let post = remote.post(&user, "unlucky").await;
    remote
        .upload(&user, &post, "audio/wav", sine_wav(0.3, 22_050, 1))
        .await;
    // As if three workers in a row had died holding it.
    let mut conn = PgConnection::establish(&shared.db_url).unwrap();
    diesel::sql_query(
        "UPDATE audio_jobs SET state = 'running', attempts = 3, \
         leased_until = now() - interval '1 second'",
    )
    .execute(&mut conn)
    .unwrap();

    let _worker = shared.launch(&[("AUDIO_MAX_ATTEMPTS", "3")]);
    let body = settled_at(&remote.client, &remote.base, &post).await;
    assert_eq!(body["audio"]["status"], "failed", "{body}");
    assert_eq!(
        body["audio"]["error"],
        "processing was interrupted 3 times; giving up"
    );
    assert_eq!(
        count(
            &shared.db_url,
            "SELECT count(*) AS n FROM audio_jobs WHERE state = 'failed'"
        ),
        1
    );
}
