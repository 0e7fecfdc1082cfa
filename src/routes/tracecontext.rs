//! `POST /test`: the endpoint the W3C trace-context test suite drives (only mounted when
//! `TRACECONTEXT_TEST_ENDPOINT=true`). For each `{url, arguments}` of the body it POSTs
//! `arguments` to `url` through the traced HTTP client, so the suite can check the
//! `traceparent`/`tracestate` we propagate.

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
    for case in body.into_inner() {
        let url = url::Url::parse(&case.url)
            .map_err(|_| AppError::bad_request("invalid_url", "url is not a valid URL"))?;
        // The suite only looks at what arrives; a failed call is its finding, not ours.
        let _ = state.http.post_json(url, &case.arguments, None).await;
    }
    Ok(HttpResponse::Ok().finish())
}
