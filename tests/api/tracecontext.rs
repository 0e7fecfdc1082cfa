//! W3C Trace Context conformance through `POST /test`, the endpoint the official test suite
//! drives (`TRACECONTEXT_TEST_ENDPOINT=true`): the essential cases of that suite, so a
//! regression shows without it (CI cannot fetch it; README.md says how to run it by hand).
//!
//! ```text
//!  test ──POST /test + traceparent/tracestate──▶ app ──POST {harness}/{case}, traced──▶ harness
//!   ◀── what the harness received: exactly one traceparent, naming our CLIENT span; tracestate
//! ```
//!
//! The harness is a wiremock server; the app is the one every integration test gets
//! (`helpers::spawn_app_with`), with the test endpoint turned on.

use std::sync::OnceLock;

use regex::Regex;
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{TestApp, spawn_app_with, traceresponse};

const TRACE: &str = "12345678901234567890123456789012";
const PARENT: &str = "1234567890123456";

/// The app with `POST /test` mounted, and the harness its callbacks go to.
struct ConformanceApp {
    app: TestApp,
    harness: MockServer,
}

/// What one callback to the harness carried.
#[derive(Debug)]
struct Outgoing {
    trace_id: String,
    parent_id: String,
    flags: String,
    tracestate: Option<String>,
}

async fn spawn_app() -> ConformanceApp {
    let harness = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!(null)))
        .mount(&harness)
        .await;
    let app = spawn_app_with(|config| {
        config.set("TRACECONTEXT_TEST_ENDPOINT", "true");
    })
    .await;
    ConformanceApp { app, harness }
}

impl ConformanceApp {
    /// Sends `headers` to `POST /test` asking for `count` callbacks, and returns what each
    /// callback carried, in order, with the trace id and root span id that the `traceresponse`
    /// of the `/test` request names.
    async fn call_n(
        &self,
        headers: &[(&str, &str)],
        count: usize,
    ) -> (Vec<Outgoing>, (String, String)) {
        let scope = Uuid::new_v4().simple().to_string();
        let cases: Vec<_> = (0..count)
            .map(|i| json!({"url": format!("{}/{scope}.{i}", self.harness.uri()), "arguments": []}))
            .collect();
        let mut request = self.app.api.post(self.app.url("/test")).json(&cases);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request sent");
        assert_eq!(response.status(), StatusCode::OK, "{headers:?}");
        let (trace_id, root_span_id, _) = traceresponse(&response);

        let received = self.harness.received_requests().await.unwrap();
        let outgoing = (0..count)
            .map(|i| {
                let path = format!("/{scope}.{i}");
                let callback = received
                    .iter()
                    .find(|r| r.url.path() == path)
                    .unwrap_or_else(|| panic!("no callback {path} for {headers:?}"));
                parse_outgoing(&callback.headers, headers)
            })
            .collect();
        (outgoing, (trace_id, root_span_id))
    }

    async fn call(&self, headers: &[(&str, &str)]) -> Outgoing {
        self.call_n(headers, 1).await.0.remove(0)
    }

    /// One call with this `traceparent` and these `tracestate` fields, each its own header.
    async fn call_with_tracestate(&self, traceparent: &str, fields: &[&str]) -> Outgoing {
        let mut headers = vec![("traceparent", traceparent)];
        headers.extend(fields.iter().map(|f| ("tracestate", *f)));
        self.call(&headers).await
    }
}

/// Exactly one `traceparent` of version 00, well formed, with non-zero ids; `tracestate` as one
/// field if present.
fn parse_outgoing(headers: &http::HeaderMap, sent: &[(&str, &str)]) -> Outgoing {
    static FORMAT: OnceLock<Regex> = OnceLock::new();
    let format = FORMAT
        .get_or_init(|| Regex::new("^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$").unwrap());
    let traceparents: Vec<_> = headers.get_all("traceparent").iter().collect();
    assert_eq!(traceparents.len(), 1, "one traceparent for {sent:?}");
    let traceparent = traceparents[0].to_str().unwrap();
    let caps = format
        .captures(traceparent)
        .unwrap_or_else(|| panic!("malformed traceparent {traceparent:?} for {sent:?}"));
    assert_ne!(&caps[1], "0".repeat(32), "{sent:?}");
    assert_ne!(&caps[2], "0".repeat(16), "{sent:?}");
    let tracestates: Vec<_> = headers.get_all("tracestate").iter().collect();
    assert!(tracestates.len() <= 1, "one tracestate field for {sent:?}");
    Outgoing {
        trace_id: caps[1].to_owned(),
        parent_id: caps[2].to_owned(),
        flags: caps[3].to_owned(),
        tracestate: tracestates.first().map(|v| v.to_str().unwrap().to_owned()),
    }
}

fn traceparent(flags: &str) -> String {
    format!("00-{TRACE}-{PARENT}-{flags}")
}

#[tokio::test]
async fn a_valid_traceparent_is_continued_with_a_new_parent_id() {
    let app = spawn_app().await;
    let tp = traceparent("01");
    let (out, (trace_id, root_span)) = app.call_n(&[("traceparent", &tp)], 3).await;
    // The request's root span continues the caller's trace.
    assert_eq!(trace_id, TRACE);
    let mut parent_ids: Vec<_> = out.iter().map(|o| o.parent_id.as_str()).collect();
    for o in &out {
        assert_eq!(o.trace_id, TRACE);
        assert_eq!(o.flags, "01");
        assert_ne!(o.parent_id, PARENT);
        // Each call names its own CLIENT span, not the request's root span.
        assert_ne!(o.parent_id, root_span);
        assert_eq!(o.tracestate, None, "no tracestate is invented");
    }
    parent_ids.sort_unstable();
    parent_ids.dedup();
    assert_eq!(parent_ids.len(), 3, "{out:?}");
}

#[tokio::test]
async fn without_a_traceparent_a_new_trace_starts() {
    let app = spawn_app().await;
    let (out, _) = app.call_n(&[], 3).await;
    assert!(out.iter().all(|o| o.trace_id == out[0].trace_id));
    assert_ne!(out[0].parent_id, out[1].parent_id);
    // A tracestate without a traceparent is discarded.
    let alone = app.call(&[("tracestate", "foo=1,bar=2")]).await;
    assert_eq!(alone.tracestate, None);
    assert_ne!(alone.trace_id, out[0].trace_id);
}

#[tokio::test]
async fn a_malformed_traceparent_starts_a_new_trace_and_drops_tracestate() {
    let app = spawn_app().await;
    let (t, p) = (TRACE, PARENT);
    for bad in [
        // version
        format!("ff-{t}-{p}-01"),
        format!("0-{t}-{p}-01"),
        format!("000-{t}-{p}-01"),
        format!(".0-{t}-{p}-01"),
        format!("0.-{t}-{p}-01"),
        // version 00 has exactly four fields
        format!("00-{t}-{p}-01."),
        format!("00-{t}-{p}-01-what-the-future-will-be-like"),
        // a future version's extra fields follow a '-'
        format!("cc-{t}-{p}-01.what-the-future-will-be-like"),
        // trace id
        format!("00-00000000000000000000000000000000-{p}-01"),
        format!("00-{}-{p}-01", t.to_uppercase().replace('1', "A")),
        format!("00-.2345678901234567890123456789012-{p}-01"),
        format!("00-1234567890123456789012345678901.-{p}-01"),
        format!("00-{t}3-{p}-01"),
        format!("00-{}-{p}-01", &t[1..]),
        // parent id
        format!("00-{t}-0000000000000000-01"),
        format!("00-{t}-ABCDEF7890123456-01"),
        format!("00-{t}-.234567890123456-01"),
        format!("00-{t}-{p}7-01"),
        format!("00-{t}-{}-01", &p[1..]),
        // flags
        format!("00-{t}-{p}-.0"),
        format!("00-{t}-{p}-0A"),
        format!("00-{t}-{p}-001"),
        format!("00-{t}-{p}-1"),
    ] {
        let out = app
            .call(&[("traceparent", &bad), ("tracestate", "foo=1")])
            .await;
        assert_ne!(out.trace_id, TRACE, "{bad}");
        assert_ne!(out.parent_id, PARENT, "{bad}");
        assert_eq!(out.tracestate, None, "{bad}");
    }
}

#[tokio::test]
async fn a_future_version_is_read_as_version_00() {
    let app = spawn_app().await;
    for future in [
        format!("cc-{TRACE}-{PARENT}-01"),
        format!("cc-{TRACE}-{PARENT}-01-what-the-future-will-be-like"),
    ] {
        let out = app
            .call(&[("traceparent", &future), ("tracestate", "foo=1")])
            .await;
        // parse_outgoing already checked the version is 00.
        assert_eq!(out.trace_id, TRACE, "{future}");
        assert_ne!(out.parent_id, PARENT, "{future}");
        assert_eq!(out.flags, "01", "{future}");
        assert_eq!(out.tracestate.as_deref(), Some("foo=1"), "{future}");
    }
}

#[tokio::test]
async fn a_duplicated_traceparent_restarts_the_trace() {
    let app = spawn_app().await;
    let other = format!("00-{}-{PARENT}-01", "1".repeat(32));
    let out = app
        .call(&[("traceparent", &traceparent("01")), ("traceparent", &other)])
        .await;
    assert_ne!(out.trace_id, TRACE);
    assert_ne!(out.trace_id, "1".repeat(32));
}

#[tokio::test]
async fn the_sampled_flag_is_propagated_and_other_flags_cleared() {
    let app = spawn_app().await;
    for (incoming, outgoing) in [("00", "00"), ("01", "01"), ("09", "01"), ("08", "00")] {
        let out = app.call(&[("traceparent", &traceparent(incoming))]).await;
        assert_eq!(out.trace_id, TRACE, "{incoming}");
        assert_eq!(out.flags, outgoing, "{incoming}");
    }
}

#[tokio::test]
async fn tracestate_is_passed_through_and_multiple_fields_combined() {
    let app = spawn_app().await;
    let key = "abcdefghijklmnopqrstuvwxyz0123456789_-*/";
    let value: String = (0x20u8..=0x7e)
        .filter(|c| *c != b',' && *c != b'=')
        .map(char::from)
        .collect();
    let all_chars = format!("{key}={value}");
    let vendor_chars = format!("{key}@a-z0-9_-*/={value}");
    let long_key = format!("{}=1", "z".repeat(256));
    let long_vendor = format!("{}@{}=1", "t".repeat(241), "v".repeat(14));
    let long_list = format!("foo=1,{long_key}");
    let long_vendor_list = format!("foo=1,{long_vendor}");
    let cases: [(&[&str], &str); 14] = [
        (&["foo=1,bar=2"], "foo=1,bar=2"),
        (
            &["foo=1,bar=2", "rojo=1,congo=2", "baz=3"],
            "foo=1,bar=2,rojo=1,congo=2,baz=3",
        ),
        (&["foo=1 \t , \t bar=2, \t baz=3"], "foo=1,bar=2,baz=3"),
        (&["foo=1", ""], "foo=1"),
        (&["", "foo=1"], "foo=1"),
        (&["foo=1,foo=1"], "foo=1"),
        (&["foo=1", "foo=2"], "foo=1"),
        (&["foo@=1,bar=2"], "foo@=1,bar=2"),
        (&["foo@@bar=1,bar=2"], "foo@@bar=1,bar=2"),
        (&["foo@bar@baz=1,bar=2"], "foo@bar@baz=1,bar=2"),
        (&[&all_chars], &all_chars),
        (&[&vendor_chars], &vendor_chars),
        (&["foo=1", &long_key], &long_list),
        (&["foo=1", &long_vendor], &long_vendor_list),
    ];
    let tp = traceparent("00");
    for (fields, expected) in cases {
        let out = app.call_with_tracestate(&tp, fields).await;
        assert_eq!(out.trace_id, TRACE, "{fields:?}");
        assert_eq!(out.tracestate.as_deref(), Some(expected), "{fields:?}");
    }
    // An empty tracestate is accepted, and none is sent on.
    let out = app.call_with_tracestate(&tp, &[""]).await;
    assert_eq!(out.trace_id, TRACE);
    assert_eq!(out.tracestate, None);
}

#[tokio::test]
async fn an_invalid_tracestate_is_dropped_and_the_traceparent_kept() {
    let app = spawn_app().await;
    let long_key = format!("{}=1", "z".repeat(257));
    let long_value = format!("foo={}", "v".repeat(257));
    let tp = traceparent("01");
    for field in [
        "foo =1",
        "FOO=1",
        "foo.bar=1",
        "@foo=1,bar=2",
        "foo=bar=baz",
        "foo=,bar=3",
        "novalue",
        long_key.as_str(),
        long_value.as_str(),
    ] {
        let out = app.call_with_tracestate(&tp, &["ok=1", field]).await;
        assert_eq!(out.trace_id, TRACE, "{field}");
        assert_eq!(out.flags, "01", "{field}");
        assert_eq!(out.tracestate, None, "{field}");
    }
}

#[tokio::test]
async fn tracestate_holds_at_most_32_members() {
    let app = spawn_app().await;
    let fields = |n: usize| -> Vec<String> {
        (1..=n)
            .map(|i| format!("bar{i:02}={i:02}"))
            .collect::<Vec<_>>()
            .chunks(10)
            .map(|chunk| chunk.join(","))
            .collect()
    };
    let tp = traceparent("00");
    let kept = fields(32);
    let kept: Vec<&str> = kept.iter().map(String::as_str).collect();
    let out = app.call_with_tracestate(&tp, &kept).await;
    let list = out.tracestate.expect("32 members are kept");
    assert_eq!(list, kept.join(","));
    assert_eq!(list.split(',').count(), 32);

    let over = fields(33);
    let over: Vec<&str> = over.iter().map(String::as_str).collect();
    let dropped = app.call_with_tracestate(&tp, &over).await;
    assert_eq!(dropped.trace_id, TRACE);
    assert_eq!(dropped.tracestate, None);
}
