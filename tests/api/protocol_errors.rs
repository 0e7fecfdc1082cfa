//! Requests that do not parse as HTTP are the client's fault: actix-http answers them 400
//! itself, and the line it logs is not at `error` (kept for the service's own faults).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::spawn_app;

#[tokio::test]
async fn malformed_requests_are_400_and_not_logged_as_errors() {
    let app = spawn_app().await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let requests: [&[u8]; 3] = [
        b"GET /health HTTP/1.1\r\nHost: x\r\nthis is no header line\r\n\r\n",
        b"NOT A REQUEST LINE\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHo\x01st: x\r\n\r\n",
    ];
    for raw in requests {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        stream.write_all(raw).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("the server answers and closes")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }

    let reported = |line: &serde_json::Value| {
        line["msg"]
            .as_str()
            .is_some_and(|m| m.contains("request parse error"))
    };
    app.logs
        .wait_for("the three parse errors logged", |_| {
            app.logs.lines().iter().filter(|l| reported(l)).count() >= 3
        })
        .await;
    for line in app.logs.lines().iter().filter(|l| reported(l)) {
        assert_eq!(line["level"], "info", "{line}");
        assert_eq!(line["target"], "actix_http::h1::dispatcher", "{line}");
    }
    let errors: Vec<_> = app
        .logs
        .lines()
        .into_iter()
        .filter(|l| l["level"] == "error")
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
}
