//! Audio that cannot inflate (CONTRACT.md §1 "Limits", §6): a duration bound checked in the
//! probe stage, output bounded and stripped of the upload's tags, a per-user quota and limit of
//! unfinished jobs, and claims that are fair between users. Real ffmpeg, real Postgres.

use std::process::Command;
use std::time::Duration;

use diesel::{Connection, PgConnection};
use reqwest::StatusCode;
use sidechain::audio::jobs;
use uuid::Uuid;

use crate::audio::{chunked_put, count, files_in, files_when, silence_wav, sine_wav};
use crate::helpers::{STATUS_ERROR, TestApp, TestUser, assert_error, poll_within, spawn_app_with};

/// `seconds` of silence (1 s looped), 8 kHz mono, as FLAC: a few KB per hour, so an upload
/// far smaller than it is long.
fn silent_flac(seconds: u32, extra: &[&str]) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("sidechain-limits-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = dir.join("in.wav");
    let target = dir.join("out.flac");
    std::fs::write(&source, silence_wav(1.0, 8_000, 1)).unwrap();
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y", "-stream_loop"])
        .arg((seconds - 1).to_string())
        .arg("-i")
        .arg(&source)
        .args(extra)
        .arg(&target)
        .status()
        .expect("ffmpeg runs");
    assert!(status.success());
    let bytes = std::fs::read(&target).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    bytes
}

async fn new_post(app: &TestApp, user: &TestUser, title: &str) -> String {
    app.post_titled(user, title).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn an_hour_of_audio_fails_too_long_in_the_probe_stage() {
    let flac = silent_flac(3600, &[]);
    assert!(flac.len() < 2_000_000, "{} bytes", flac.len());
    let app = spawn_app_with(|_| {}).await;
    let user = app.register("producer").await;
    let id = new_post(&app, &user, "an hour of nothing").await;
    let response = app.upload(&user, &id, "audio/flac", flac).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    // The probe alone decides: seconds, not the minutes a transcode of an hour would take.
    let post = poll_within("the job failed", Duration::from_secs(20), || async {
        let post = app.post_json_of(&id).await;
        (post["audio"]["status"] == "failed").then_some(post)
    })
    .await;
    let reason = post["audio"]["error"].as_str().unwrap();
    assert!(reason.starts_with("too_long: "), "{reason}");
    assert!(reason.contains("1800"), "{reason}");
    let spans = app
        .otlp
        .wait_for_spans("the job's spans", |spans| {
            spans
                .iter()
                .any(|s| s.name == "audio.process" && s.str("audio.outcome").is_some())
        })
        .await;
    let probe = spans.iter().find(|s| s.name == "audio.probe").unwrap();
    assert_eq!(probe.status_code, STATUS_ERROR);
    assert!(
        probe.status_message.starts_with("too_long"),
        "{}",
        probe.status_message
    );
    assert!(
        !spans.iter().any(|s| s.name == "audio.transcode"),
        "no transcode ran"
    );
    // Nothing of it is kept.
    let dir = app.post_dir(&id);
    files_when(
        "the source removed",
        &dir,
        Duration::from_secs(5),
        |files| files.is_empty(),
    )
    .await;
}

#[tokio::test]
async fn allowed_audio_is_bounded_and_keeps_none_of_the_uploads_tags() {
    // Ten minutes, within the default 30: processed, at the output's bit rate.
    let flac = silent_flac(
        600,
        &[
            "-metadata",
            "title=Unreleased Secret Title",
            "-metadata",
            "artist=Somebody Private",
        ],
    );
    let app = spawn_app_with(|_| {}).await;
    let user = app.register("producer").await;
    let id = new_post(&app, &user, "ten minutes").await;
    let response = app.upload(&user, &id, "audio/flac", flac).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let post = app.settled(&id).await;
    assert_eq!(post["audio"]["status"], "ready", "{post}");
    let duration_ms = post["audio"]["duration_ms"].as_i64().unwrap();
    assert!((599_000..=601_000).contains(&duration_ms), "{duration_ms}");

    let response = app.get(&format!("/api/v1/posts/{id}/audio")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["x-content-type-options"]
            .to_str()
            .unwrap(),
        "nosniff"
    );
    let mp3 = response.bytes().await.unwrap();
    // At most 128 kb/s × 600 s = 9.6 MB, plus a frame's slack: the length of what was allowed
    // (an 8 kHz source comes out at MPEG-2.5's lower rates, so it may be less).
    assert!(mp3.len() <= 9_700_000, "{} bytes", mp3.len());
    let text = String::from_utf8_lossy(&mp3);
    assert!(
        !text.contains("Unreleased Secret Title"),
        "the title tag came out"
    );
    assert!(
        !text.contains("Somebody Private"),
        "the artist tag came out"
    );
    // And the source is gone once ready: only the MP3 holds the quota.
    let dir = app.post_dir(&id);
    let files = files_when(
        "the source removed",
        &dir,
        Duration::from_secs(5),
        |files| files.len() == 1,
    )
    .await;
    assert!(files[0].ends_with(".mp3"), "{files:?}");
}

#[tokio::test]
async fn the_quota_refuses_an_upload_before_its_body_is_stored() {
    let app = spawn_app_with(|c| {
        c.set("AUDIO_WORKERS", "0")
            .set("AUDIO_QUOTA_BYTES", "100000");
    })
    .await;
    let user = app.register("producer").await;
    let first = new_post(&app, &user, "first").await;
    let second = new_post(&app, &user, "second").await;
    // 1.3 s at 22,050 Hz mono, 16 bits: 57,374 bytes.
    let file = || sine_wav(1.3, 22_050, 1);
    assert!(file().len() > 50_000 && file().len() < 60_000);

    let response = app.upload(&user, &first, "audio/wav", file()).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    // A second file of that size would pass 100,000 bytes: refused by its Content-Length.
    let response = app.upload(&user, &second, "audio/wav", file()).await;
    assert_error(
        response,
        StatusCode::PAYLOAD_TOO_LARGE,
        "audio_quota_exceeded",
    )
    .await;
    assert!(files_in(&app.post_dir(&second)).is_empty());
    // Without a length, it is refused while it streams in, and its partial file removed.
    let path = format!("/api/v1/posts/{second}/audio");
    assert_eq!(
        chunked_put(&app.address, &path, &user.token, &file()).await,
        413
    );
    assert!(files_in(&app.post_dir(&second)).is_empty());
    // Replacing the first upload frees what it held.
    let response = app.upload(&user, &first, "audio/wav", file()).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    // Another user's quota is their own.
    let other = app.register("other").await;
    let theirs = new_post(&app, &other, "theirs").await;
    let response = app.upload(&other, &theirs, "audio/wav", file()).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    app.assert_metrics(&["requests_refused_total{reason=\"audio_quota\"} 2"])
        .await;
}

#[tokio::test]
async fn unfinished_jobs_per_user_are_limited() {
    let app = spawn_app_with(|c| {
        c.set("AUDIO_WORKERS", "0")
            .set("AUDIO_PENDING_PER_USER", "2");
    })
    .await;
    let user = app.register("producer").await;
    let mut posts = Vec::new();
    for title in ["one", "two", "three"] {
        posts.push(new_post(&app, &user, title).await);
    }
    let small = || sine_wav(0.2, 22_050, 1);
    for post in &posts[..2] {
        let response = app.upload(&user, post, "audio/wav", small()).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    let response = app.upload(&user, &posts[2], "audio/wav", small()).await;
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    assert_error(
        response,
        StatusCode::TOO_MANY_REQUESTS,
        "audio_pending_limit",
    )
    .await;
    assert_eq!(app.post_json_of(&posts[2]).await["audio"]["status"], "none");
    // A new upload to a post with an unfinished job replaces it: allowed.
    let response = app.upload(&user, &posts[0], "audio/wav", small()).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let open = count(
        &app.db_url,
        "SELECT count(*) AS n FROM audio_jobs WHERE state IN ('queued', 'running')",
    );
    assert_eq!(open, 2);
}

#[tokio::test]
async fn claims_are_fair_between_users_under_a_backlog() {
    let app = spawn_app_with(|c| {
        c.set("AUDIO_WORKERS", "0");
    })
    .await;
    let heavy = app.register("heavy").await;
    let light = app.register("light").await;
    let mut heavy_posts = Vec::new();
    for title in ["h1", "h2", "h3"] {
        let post = new_post(&app, &heavy, title).await;
        let response = app
            .upload(&heavy, &post, "audio/wav", sine_wav(0.2, 22_050, 1))
            .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        heavy_posts.push(post);
    }
    // Queued last, after the heavy user's whole backlog.
    let light_post = new_post(&app, &light, "l1").await;
    let response = app
        .upload(&light, &light_post, "audio/wav", sine_wav(0.2, 22_050, 1))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    // Workers claim as the service does; none finishes, so the running counts build up.
    let mut conn = PgConnection::establish(&app.db_url).unwrap();
    let mut claimed = Vec::new();
    for _ in 0..4 {
        let job = jobs::claim(&mut conn, Duration::from_secs(60))
            .unwrap()
            .expect("a job to claim");
        claimed.push(job.post_id.to_string());
    }
    // First-in-first-out would give h1, h2, h3, l1: the light user waits for the whole
    // backlog. Fair: the oldest job of whoever runs fewest.
    assert_eq!(
        claimed,
        vec![
            heavy_posts[0].clone(),
            light_post,
            heavy_posts[1].clone(),
            heavy_posts[2].clone()
        ]
    );
    assert!(
        jobs::claim(&mut conn, Duration::from_secs(60))
            .unwrap()
            .is_none()
    );
}
