//! The shared outgoing HTTP client: one CLIENT span per request, and the W3C headers of that
//! span on the request.
//!
//! A thin wrapper of ours rather than reqwest-middleware + reqwest-tracing: we need the
//! contract's attribute names exactly (`url.full`, `server.address`, …), `url.full` with
//! credentials and signed query values redacted, and propagation through the same W3C
//! propagator as the server side, without a middleware stack and its extra crates on every
//! call.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;
use tracing::field::Empty;
use url::Url;

use crate::telemetry::propagation;

/// Why an outgoing call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("request failed: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("answered {0}")]
    Status(reqwest::StatusCode),
}

/// The application's one `reqwest` client (connection pool shared by all callers).
#[derive(Clone)]
pub struct TracedClient {
    inner: reqwest::Client,
}

impl TracedClient {
    /// `timeout` bounds every call unless the call sets its own.
    pub fn new(timeout: Duration) -> Result<Self, reqwest::Error> {
        Ok(Self {
            inner: reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout)
                .user_agent(concat!("sidechain/", env!("CARGO_PKG_VERSION")))
                .build()?,
        })
    }

    /// A request to build; send it with [`TracedClient::send`].
    pub fn request(&self, method: Method, url: Url) -> RequestBuilder {
        self.inner.request(method, url)
    }

    /// Sends a request inside a CLIENT span named `{METHOD}` or `{METHOD} {service}`.
    /// A status of 400 and above is an error of the span (and of the result).
    pub async fn send(
        &self,
        builder: RequestBuilder,
        service: Option<&'static str>,
    ) -> Result<Response, ClientError> {
        let mut request = builder.build()?;
        let method = request.method().as_str().to_owned();
        let url = request.url();
        let span = tracing::info_span!(
            "http.client",
            otel.name = match service {
                Some(service) => format!("{method} {service}"),
                None => method.clone(),
            },
            otel.kind = "client",
            http.request.method = method.as_str(),
            url.full = redact_url(url).as_str(),
            server.address = url.host_str().unwrap_or_default(),
            server.port = i64::from(url.port_or_known_default().unwrap_or(0)),
            http.response.status_code = Empty,
            otel.status_code = Empty,
            error.type = Empty,
        );
        propagation::inject(&span, request.headers_mut());
        let result = self.inner.execute(request).instrument(span.clone()).await;
        match result {
            Ok(response) => {
                let status = response.status();
                span.record("http.response.status_code", i64::from(status.as_u16()));
                if status.is_client_error() || status.is_server_error() {
                    span.record("otel.status_code", "ERROR");
                    span.record("error.type", status.as_str());
                    return Err(ClientError::Status(status));
                }
                Ok(response)
            }
            Err(err) => {
                span.record("otel.status_code", "ERROR");
                span.record(
                    "error.type",
                    if err.is_timeout() {
                        "timeout"
                    } else if err.is_connect() {
                        "connect"
                    } else {
                        "request"
                    },
                );
                Err(err.into())
            }
        }
    }

    /// `GET` and decode JSON.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        builder: RequestBuilder,
        service: Option<&'static str>,
    ) -> Result<T, ClientError> {
        Ok(self.send(builder, service).await?.json().await?)
    }

    /// `POST` a JSON body.
    pub async fn post_json(
        &self,
        url: Url,
        body: &impl Serialize,
        service: Option<&'static str>,
    ) -> Result<Response, ClientError> {
        self.send(self.request(Method::POST, url).json(body), service)
            .await
    }
}

/// Query parameters whose values are credentials (semantic conventions' list, plus common API
/// key names).
const SENSITIVE_QUERY: [&str; 9] = [
    "awsaccesskeyid",
    "signature",
    "sig",
    "x-goog-signature",
    "token",
    "access_token",
    "api_key",
    "apikey",
    "password",
];

/// `url.full` without credentials: userinfo and sensitive query values become `REDACTED`.
pub fn redact_url(url: &Url) -> String {
    let mut url = url.clone();
    if !url.username().is_empty() {
        let _ = url.set_username("REDACTED");
    }
    if url.password().is_some() {
        let _ = url.set_password(Some("REDACTED"));
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if SENSITIVE_QUERY.contains(&k.to_ascii_lowercase().as_str()) {
                    "REDACTED".to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted() {
        let url =
            Url::parse("https://bob:hunter2@api.example.com/x?n=5&token=abc&Signature=s").unwrap();
        let redacted = redact_url(&url);
        assert_eq!(
            redacted,
            "https://REDACTED:REDACTED@api.example.com/x?n=5&token=REDACTED&Signature=REDACTED"
        );
        let plain = Url::parse("http://rec:8088/api/recommend/u?n=21").unwrap();
        assert_eq!(redact_url(&plain), "http://rec:8088/api/recommend/u?n=21");
    }
}
