//! Whatever the bytes, the answer is a 4xx with a JSON error code, never a 5xx.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

/// Sends a raw request and checks: not 5xx; a 4xx has the JSON error envelope with a code.
async fn check(
    app: &TestApp,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    content_type: Option<&str>,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = app.api.request(method.parse().unwrap(), app.url(path));
    if let Some(body) = body {
        request = request.body(body);
    }
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(
        !status.is_server_error(),
        "{method} {path} → {status}: {text}"
    );
    let body: Value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::Null)
    };
    if status.is_client_error() {
        assert!(
            body["error"]["code"].is_string(),
            "{method} {path} → {status} without a JSON error: {text}"
        );
    }
    (status, body)
}

#[tokio::test]
async fn malformed_bodies() {
    let app = spawn_app().await;
    let user = app.register("alice").await;
    let post = app.post_titled(&user, "p").await;
    let comments = format!("/api/v1/posts/{}/comments", post["id"].as_str().unwrap());
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"not json".to_vec(),
        b"[]".to_vec(),
        b"null".to_vec(),
        b"\"string\"".to_vec(),
        b"42".to_vec(),
        b"{\"title\": \"x\"".to_vec(),
        b"{\"title\": \"x\", \"title\": 5}".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x7b],
        b"{\"body\": \"\\ud800\"}".to_vec(),
        b"{\"title\": {\"$gt\": \"\"}}".to_vec(),
        br#"{"title": "x", "bpm": 99999999999999999999999}"#.to_vec(),
        br#"{"username": ["a"], "email": null, "password": true}"#.to_vec(),
        br#"{"login": 1, "password": 2}"#.to_vec(),
    ];
    let routes: [(&str, Option<&str>); 4] = [
        ("/api/v1/auth/register", None),
        ("/api/v1/auth/login", None),
        ("/api/v1/posts", Some(user.token.as_str())),
        (comments.as_str(), Some(user.token.as_str())),
    ];
    for (route, token) in routes {
        for body in &bodies {
            let (status, _) = check(
                &app,
                "POST",
                route,
                Some(body.clone()),
                Some("application/json"),
                token,
            )
            .await;
            assert!(
                status.is_client_error(),
                "{route} {:?} → {status}",
                String::from_utf8_lossy(body)
            );
        }
    }
}

#[tokio::test]
async fn oversized_bodies_are_413_and_wrong_content_types_415() {
    let app = spawn_app().await;
    let user = app.register("alice").await;
    let huge = json!({"title": "x", "description": "a".repeat(300 * 1024)})
        .to_string()
        .into_bytes();
    let (status, body) = check(
        &app,
        "POST",
        "/api/v1/posts",
        Some(huge),
        Some("application/json"),
        Some(&user.token),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"]["code"], "payload_too_large");

    let (status, body) = check(
        &app,
        "POST",
        "/api/v1/posts",
        Some(b"title=x".to_vec()),
        Some("application/x-www-form-urlencoded"),
        Some(&user.token),
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(body["error"]["code"], "unsupported_media_type");

    let (status, _) = check(
        &app,
        "POST",
        "/api/v1/posts",
        Some(br#"{"title":"no header"}"#.to_vec()),
        None,
        Some(&user.token),
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, _) = check(
        &app,
        "POST",
        "/api/v1/posts",
        Some(br#"{"title":"vendor type"}"#.to_vec()),
        Some("application/vnd.api+json"),
        Some(&user.token),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn bad_ids_and_query_parameters() {
    let app = spawn_app().await;
    let user = app.register("alice").await;
    let ids = [
        "0",
        "null",
        "-1",
        "%00",
        "%ff%fe",
        "12345678-1234-1234-1234-1234567890123",
        "..%2f..%2fetc%2fpasswd",
        "%27%3B%20DROP%20TABLE%20posts%3B--",
    ];
    for id in ids {
        for (method, suffix) in [
            ("GET", ""),
            ("DELETE", ""),
            ("POST", "/like"),
            ("DELETE", "/like"),
            ("GET", "/comments"),
        ] {
            let (status, _) = check(
                &app,
                method,
                &format!("/api/v1/posts/{id}{suffix}"),
                None,
                None,
                Some(&user.token),
            )
            .await;
            assert!(
                status == StatusCode::NOT_FOUND || status == StatusCode::BAD_REQUEST,
                "{method} {id}{suffix} → {status}"
            );
        }
        let (status, _) = check(
            &app,
            "GET",
            &format!("/api/v1/users/{id}"),
            None,
            None,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{id}");
    }
    let queries = [
        "/api/v1/feed/unified?limit=1e3",
        "/api/v1/feed/unified?limit=99999999999999999999",
        "/api/v1/feed/unified?limit=1&limit=2",
        "/api/v1/feed/unified?type=global&type=trending",
        "/api/v1/feed/unified?cursor=%ff",
        "/api/v1/feed/unified?type=%00",
        "/api/v1/users/alice/posts?limit=%20",
        "/api/v1/users/alice/posts?cursor=AAAA",
        "/api/v1/search?q=%00",
        "/api/v1/search?q=a&limit=x",
        "/api/v1/search?q[]=a",
    ];
    for path in queries {
        let (status, _) = check(&app, "GET", path, None, None, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
    }
}

#[tokio::test]
async fn hostile_text_is_stored_verbatim_or_refused() {
    let app = spawn_app().await;
    let user = app.register("alice").await;
    let texts = [
        "'; DROP TABLE posts; --",
        "Robert'); DELETE FROM users;--",
        "🎵🎹 ñ 中文 العربية",
        "\u{202e}reversed\u{202c}",
        "zero\u{200b}width",
        "a\\b\"c",
        "<script>alert(1)</script>",
        "${jndi:ldap://x}",
        "%s%n%x",
    ];
    for text in texts {
        let (status, body) = check(
            &app,
            "POST",
            "/api/v1/posts",
            Some(
                json!({"title": text, "tags": [text.chars().take(30).collect::<String>()]})
                    .to_string()
                    .into_bytes(),
            ),
            Some("application/json"),
            Some(&user.token),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{text:?}");
        assert_eq!(body["title"], text.trim());
        let id = body["id"].as_str().unwrap();
        let (status, comment) = check(
            &app,
            "POST",
            &format!("/api/v1/posts/{id}/comments"),
            Some(json!({"body": text}).to_string().into_bytes()),
            Some("application/json"),
            Some(&user.token),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(comment["body"], text);
        let (status, _) = check(
            &app,
            "GET",
            &format!("/api/v1/search?q={}", urlencode(text)),
            None,
            None,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{text:?}");
    }
    // NUL and control characters cannot be stored: 400, not a database error.
    for text in ["nul\u{0}byte", "bell\u{7}", "esc\u{1b}[31m"] {
        for (path, body) in [
            ("/api/v1/posts", json!({"title": text})),
            (
                "/api/v1/auth/register",
                json!({"username": "bob", "email": format!("{text}@x.io"), "password": "password-1"}),
            ),
        ] {
            let (status, _) = check(
                &app,
                "POST",
                path,
                Some(body.to_string().into_bytes()),
                Some("application/json"),
                Some(&user.token),
            )
            .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {text:?}");
        }
    }
    // Passwords may hold anything: they are only hashed.
    let (status, _) = check(
        &app,
        "POST",
        "/api/v1/auth/register",
        Some(
            json!({"username": "carol", "email": "c@x.io", "password": "p\u{0}ss'word\u{7}"})
                .to_string()
                .into_bytes(),
        ),
        Some("application/json"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
