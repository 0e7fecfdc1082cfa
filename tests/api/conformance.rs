//! The OpenAPI document against the running service: schemathesis (scripts/schemathesis.sh)
//! fuzzes every operation of `GET /api-docs/openapi.json` with all its checks (server errors,
//! undocumented statuses and headers, response schemas, schema-valid input rejected, invalid
//! input accepted, 405 and `Allow`, auth that is ignored, …) and a token, and any finding
//! fails this test with schemathesis' report.
//!
//! The run takes about three minutes; the virtualenv is made by `scripts/install-deps.sh test`
//! (which `make test` runs), or `scripts/schemathesis.sh install`.

use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, RunningBinary};

#[tokio::test]
async fn schemathesis_finds_nothing() {
    let app = RunningBinary::launch(|_| {});
    let client = reqwest::Client::new();
    let response = client
        .post(app.url("/api/v1/auth/register"))
        .json(&json!({"username": "fuzzer", "email": "fuzzer@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let token = response.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/schemathesis.sh");
    let base = app.base.clone();
    let run = tokio::task::spawn_blocking(move || {
        Command::new(script)
            .args(["run", &base, &token])
            .output()
            .expect("scripts/schemathesis.sh runs")
    });
    let output = tokio::time::timeout(Duration::from_secs(360), run)
        .await
        .expect("schemathesis ends within its time budget")
        .unwrap();
    // The service's own account of its faults goes with the report: a 500 names its cause
    // only in the log.
    app.terminate();
    let (_, logs) = app.exited(Duration::from_secs(30)).await;
    let faults: Vec<String> = logs
        .iter()
        .filter(|l| l["level"] == "error")
        .map(Value::to_string)
        .collect();
    let report = format!(
        "{}\n{}\nerror-level log lines of the service:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        faults.join("\n")
    );
    if output.status.code() == Some(3) {
        panic!("schemathesis is not installed: run `scripts/schemathesis.sh install`\n{report}");
    }
    assert!(
        output.status.success(),
        "schemathesis found problems ({}):\n{report}",
        output.status
    );
    // A run that tested nothing would pass too.
    assert!(report.contains("passed"), "{report}");
    assert!(!report.contains("Errored:"), "{report}");
}
