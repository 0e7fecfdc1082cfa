//! `POST /test`: the endpoint the W3C trace-context test suite drives (only mounted when
//! `TRACECONTEXT_TEST_ENDPOINT=true`). For each `{url, arguments}` of the body it POSTs
//! `arguments` to `url` through the traced HTTP client, so the suite can check the
//! `traceparent`/`tracestate` we propagate (README.md, "W3C Trace Context conformance").
//!
//! The calls are made one after another, in the body's order, each in its own CLIENT span under
//! the request's span: the suite expects one callback per element, each with its own parent id.

use actix_web::{HttpResponse, web};
use serde::Deserialize;

use super::State;
use crate::errors::AppError;

#[derive(Debug, Deserialize)]
pub struct TestCase {
    pub url: String,
    pub arguments: serde_json::Value,
}

pub async fn run(state: State, body: web::Json<Vec<TestCase>>) -> Result<HttpResponse, AppError> {
    // Every URL is checked before the first call, so a bad body makes no call at all.
    let cases = body
        .into_inner()
        .into_iter()
        .map(|case| match url::Url::parse(&case.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => Ok((url, case.arguments)),
            _ => Err(AppError::bad_request(
                "invalid_url",
                "url is not a valid http(s) URL",
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (url, arguments) in cases {
        // The suite only looks at what arrives; a failed call is its finding, not ours.
        let _ = state.http.post_json(url, &arguments, None).await;
    }
    Ok(HttpResponse::Ok().finish())
}
