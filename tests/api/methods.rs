//! 405 with `Allow` (RFC 9110 §15.5.6) for a method a route does not serve; 404 for a route
//! that does not exist; both the JSON error with the request's trace id.

use reqwest::{Method, StatusCode};

use crate::helpers::{assert_error, spawn_app, traceresponse};

#[tokio::test]
async fn an_unserved_method_is_405_naming_the_served_ones() {
    let app = spawn_app().await;
    let cases = [
        (Method::PUT, "/health", "GET"),
        (Method::DELETE, "/api/v1/auth/login", "POST"),
        (Method::GET, "/api/v1/auth/logout", "POST"),
        (Method::PATCH, "/api/v1/posts/not-a-uuid", "GET, DELETE"),
        (
            Method::PUT,
            "/api/v1/posts/00000000-0000-0000-0000-000000000000/like",
            "POST, DELETE",
        ),
        (Method::DELETE, "/api/v1/posts/x/comments", "POST, GET"),
        (Method::OPTIONS, "/api/v1/feed/unified", "GET"),
        (Method::HEAD, "/api/v1/search", "GET"),
    ];
    for (method, path, allow) in cases {
        let response = app
            .api
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.headers().get("allow").map(|v| v.to_str().unwrap()),
            Some(allow),
            "{method} {path}"
        );
        let (trace_id, _, _) = traceresponse(&response);
        if method == Method::HEAD {
            assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
            continue;
        }
        let body = assert_error(
            response,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        )
        .await;
        assert_eq!(
            body["error"]["trace_id"],
            trace_id.as_str(),
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn unknown_routes_are_404_without_allow() {
    let app = spawn_app().await;
    for path in [
        "/nope",
        "/api/v1/nope",
        "/api/v1/posts/x/y/z",
        "/api/v2/posts",
    ] {
        for method in [Method::GET, Method::POST] {
            let response = app
                .api
                .request(method.clone(), app.url(path))
                .send()
                .await
                .unwrap();
            assert!(response.headers().get("allow").is_none(), "{method} {path}");
            let (trace_id, _, _) = traceresponse(&response);
            let body = assert_error(response, StatusCode::NOT_FOUND, "not_found").await;
            assert_eq!(
                body["error"]["trace_id"],
                trace_id.as_str(),
                "{method} {path}"
            );
        }
    }
}
