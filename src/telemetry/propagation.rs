//! W3C Trace Context in and out, and spans that follow work across threads.
//!
//! - Incoming: [`extract_parent`] reads `traceparent`/`tracestate` from a request; an invalid
//!   `traceparent` yields an empty context, so the request starts a new trace.
//! - Outgoing: [`inject`] writes the headers of a span into a `reqwest` request.
//! - Back to the caller: [`traceresponse`] formats the W3C `traceresponse` header.
//!
//! Work that continues a trace elsewhere (another thread, a stored job) is in `handoff`.
//!
//! The SDK's `TraceContextPropagator` builds and writes the span contexts, but it is laxer and
//! older than the W3C rules in a few places, so the rules it misses are applied around it (the
//! official W3C test suite checks every one of them; see README.md):
//!
//! ```text
//!  traceparent ─▶ valid_traceparent: exact field lengths (the SDK reads "0", "000", a
//!                 15-digit parent id or a 1-digit flags field as numbers), `00` exactly 55
//!                 chars, a future version's extra fields after a '-'
//!                 ─▶ SDK: the 55-char prefix
//!  tracestate  ─▶ TraceStateList: all fields joined, OWS and empty members skipped, keys and
//!                 values by the current grammar, at most 32 members, first of duplicate keys
//!                 kept; any invalid member drops the whole list (never the traceparent)
//!                 ─▶ SDK (for the exported span's `trace_state`)
//!                 ─▶ carried in the Context as ReceivedTraceState (for the wire)
//! ```
//!
//! Why the list is carried beside the SDK's `TraceState`: that type validates keys by the 2020
//! grammar (one `@`, at most 13 characters after it) and cannot be built any other way, so
//! `foo@@bar` or `t@vvvvvvvvvvvvvvv`, valid today, would make it drop the whole list. The
//! recording layer keeps the list in the root's record and hands it to every child's
//! (`record`), and [`inject`] sends it while the trace id is unchanged. Nothing in this service adds or edits `tracestate` entries of its own.
//!
//! Level 2's random trace-id flag (`02`) is not propagated: the SDK keeps only the sampled bit,
//! as Level 1 asks of unknown flags.

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;

use crate::telemetry::record::{self, ReceivedTraceState, RecordExt};

/// The one propagator: W3C Trace Context. Stateless, so a static serves every request without
/// going through the global registry's lock.
static PROPAGATOR: std::sync::LazyLock<TraceContextPropagator> =
    std::sync::LazyLock::new(TraceContextPropagator::new);

pub(crate) const TRACEPARENT: &str = "traceparent";
pub(crate) const TRACESTATE: &str = "tracestate";

/// Length of a version-00 `traceparent`, and of the part of a future version we may parse.
const TRACEPARENT_LEN: usize = 55;

/// The most list members a `tracestate` may have (W3C, "list").
const MAX_TRACESTATE_MEMBERS: usize = 32;

/// The longest key and the longest value of a `tracestate` list member.
const MAX_TRACESTATE_KEY: usize = 256;
const MAX_TRACESTATE_VALUE: usize = 256;

/// The OpenTelemetry context of an incoming request's W3C headers; empty when `traceparent` is
/// absent or invalid (its `tracestate` is then ignored too).
pub fn extract_parent(headers: &actix_web::http::header::HeaderMap) -> Context {
    let headers = ActixHeaders::new(headers);
    let cx = PROPAGATOR.extract(&headers);
    let trace_id = cx.span().span_context().trace_id();
    match headers.tracestate {
        Some(list) if cx.span().span_context().is_valid() => cx.with_value(ReceivedTraceState {
            trace_id,
            header: list.header,
        }),
        _ => cx,
    }
}

/// Writes `traceparent` (and `tracestate`, when there is one) naming `span` into outgoing
/// headers.
pub fn inject(span: &tracing::Span, headers: &mut reqwest::header::HeaderMap) {
    if let Some(cx) = span.context() {
        inject_context(&cx, headers);
    }
}

pub(crate) fn inject_context(cx: &Context, headers: &mut reqwest::header::HeaderMap) {
    let span_ref = cx.span();
    let sc = span_ref.span_context();
    if !sc.is_valid() {
        return;
    }
    let mut injector = ReqwestHeaders(headers);
    PROPAGATOR.inject_context(cx, &mut injector);
    // The list as received wins over the SDK's copy, which may have lost members (module doc).
    if let Some(received) = cx.get::<ReceivedTraceState>()
        && received.trace_id == sc.trace_id()
    {
        injector.set(TRACESTATE, received.header.clone());
    }
}

/// The span context of the current tracing span, if it is part of a trace.
pub fn current_span_context() -> Option<SpanContext> {
    // Read through the dispatcher's current span id rather than `Span::current()`, whose handle
    // would be cloned and dropped (a reference count up and down in the registry) for every
    // log line.
    tracing::dispatcher::get_default(|dispatch| {
        let current = dispatch.current_span();
        record::span_context_of_id(current.id()?, dispatch)
    })
    .filter(SpanContext::is_valid)
}

/// The span context of `span`, if it is part of a trace.
pub fn span_context_of(span: &tracing::Span) -> Option<SpanContext> {
    if span.is_none() {
        return None;
    }
    span.span_context().filter(SpanContext::is_valid)
}

/// The trace id of the current span as 32 lowercase hex digits, if traced.
pub fn current_trace_id() -> Option<String> {
    current_span_context().map(|sc| sc.trace_id().to_string())
}

/// `00-{trace_id}-{span_id}-{flags}`: the W3C `traceresponse` header value of a span, whose
/// sampled flag says `sampled` (whether the trace is exported: the head decision, or the tail
/// decision when tail sampling is on).
pub fn traceresponse(sc: &SpanContext, sampled: bool) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().with_sampled(sampled).to_u8()
    )
}

/// The first 55 characters of a `traceparent` that passes the W3C rules (leading and trailing
/// OWS removed), or `None` when the header must be ignored and a new trace started.
fn valid_traceparent(value: &str) -> Option<&str> {
    let value = value.trim_matches([' ', '\t']);
    let b = value.as_bytes();
    if b.len() < TRACEPARENT_LEN || !value.is_ascii() {
        return None;
    }
    let lower_hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let not_zero = |s: &[u8]| s.iter().any(|&c| c != b'0');
    let (version, trace_id, parent_id, flags) = (&b[0..2], &b[3..35], &b[36..52], &b[53..55]);
    let well_formed = lower_hex(version)
        && version != b"ff"
        && b[2] == b'-'
        && lower_hex(trace_id)
        && not_zero(trace_id)
        && b[35] == b'-'
        && lower_hex(parent_id)
        && not_zero(parent_id)
        && b[52] == b'-'
        && lower_hex(flags);
    // Version 00 is exactly 55 characters; a higher version may add fields, each after a '-'
    // (W3C "Versioning of traceparent": what follows is not ours to parse).
    let length_ok = if version == b"00" {
        b.len() == TRACEPARENT_LEN
    } else {
        b.len() == TRACEPARENT_LEN || b[TRACEPARENT_LEN] == b'-'
    };
    (well_formed && length_ok).then(|| &value[..TRACEPARENT_LEN])
}

/// A valid, non-empty `tracestate` list (W3C "tracestate Header"), normalised: its header
/// fields joined, optional whitespace and empty members removed, later duplicates of a key
/// dropped.
#[derive(Debug, Clone, PartialEq)]
struct TraceStateList {
    header: String,
}

impl TraceStateList {
    /// The list of all `tracestate` fields of a request, in order; `None` when there is none,
    /// it is empty, or it is invalid (then it is dropped whole: a list we cannot parse is not
    /// one we may pass on in part).
    fn parse<'a>(fields: impl IntoIterator<Item = Option<&'a str>>) -> Option<Self> {
        let mut members: Vec<(&str, &str)> = Vec::new();
        let mut count = 0;
        for field in fields {
            // A field with bytes outside visible ASCII cannot be a valid list.
            for member in field?.split(',') {
                let member = member.trim_matches([' ', '\t']);
                if member.is_empty() {
                    continue;
                }
                let (key, value) = member.split_once('=')?;
                if !valid_key(key) || !valid_value(value) {
                    return None;
                }
                count += 1;
                if count > MAX_TRACESTATE_MEMBERS {
                    return None;
                }
                // Vendors MAY drop duplicate keys they did not generate (W3C "Mutating the
                // tracestate Field"); the first wins.
                if !members.iter().any(|(k, _)| *k == key) {
                    members.push((key, value));
                }
            }
        }
        if members.is_empty() {
            return None;
        }
        let header = members
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        Some(Self { header })
    }
}

/// `key = ( lcalpha / DIGIT ) 0*255 ( keychar )`, `keychar = lcalpha / DIGIT / "_" / "-" / "*" /
/// "/" / "@"` (the current grammar: `@` anywhere after the first character, any number of times).
fn valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TRACESTATE_KEY
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|&c| {
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || matches!(c, b'_' | b'-' | b'*' | b'/' | b'@')
        })
}

/// `value = 0*255(chr) nblk-chr`: printable ASCII but `,` and `=`, not ending in a space (leading
/// spaces are part of the value and kept).
fn valid_value(value: &str) -> bool {
    let b = value.as_bytes();
    let chr = |c: &u8| matches!(c, 0x20..=0x7e) && *c != b',' && *c != b'=';
    !b.is_empty() && b.len() <= MAX_TRACESTATE_VALUE && b.iter().all(chr) && b[b.len() - 1] != b' '
}

/// Incoming headers as the propagator reads them, with the W3C rules it misses applied: several
/// `traceparent` fields make the parent invalid, so a new trace starts; a malformed one is
/// hidden rather than half-parsed; the `tracestate` fields form one list (RFC 9110 field
/// order), validated.
struct ActixHeaders<'a> {
    headers: &'a actix_web::http::header::HeaderMap,
    traceparent: Option<&'a str>,
    tracestate: Option<TraceStateList>,
}

impl<'a> ActixHeaders<'a> {
    fn new(headers: &'a actix_web::http::header::HeaderMap) -> Self {
        let mut fields = headers.get_all(TRACEPARENT);
        let traceparent = match (fields.next(), fields.next()) {
            (Some(only), None) => only.to_str().ok().and_then(valid_traceparent),
            _ => None,
        };
        // No tracestate without a traceparent (W3C: not even parsed).
        let tracestate = traceparent.and_then(|_| {
            TraceStateList::parse(headers.get_all(TRACESTATE).map(|v| v.to_str().ok()))
        });
        Self {
            headers,
            traceparent,
            tracestate,
        }
    }
}

impl Extractor for ActixHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => self.traceparent,
            TRACESTATE => self.tracestate.as_ref().map(|list| list.header.as_str()),
            _ => self.headers.get(key).and_then(|v| v.to_str().ok()),
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.headers.keys().map(|k| k.as_str()).collect()
    }
}

struct ReqwestHeaders<'a>(&'a mut reqwest::header::HeaderMap);

impl Injector for ReqwestHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        // The SDK writes an empty `tracestate` when there is none; W3C says not to send one.
        if key == TRACESTATE && value.is_empty() {
            return;
        }
        if let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(key.as_bytes()),
            reqwest::header::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
    // The stored form of a context is `handoff`'s, by this module's rules: tested with them.
    use crate::telemetry::handoff::context_from_w3c;
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn traceparent(flags: &str) -> String {
        format!("00-{TRACE}-{PARENT}-{flags}")
    }

    /// The `tracestate` that would go out for a request with these headers (the received list).
    fn outgoing_tracestate(pairs: &[(&str, &str)]) -> Option<String> {
        let cx = extract_parent(&headers(pairs));
        assert!(cx.span().span_context().is_valid(), "{pairs:?}");
        let mut out = reqwest::header::HeaderMap::new();
        inject_context(&cx, &mut out);
        out.get(TRACESTATE).map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn valid_traceparent_is_continued() {
        let cx = extract_parent(&headers(&[
            ("traceparent", &traceparent("01")),
            ("tracestate", "vendor=a"),
            ("tracestate", "other=b"),
        ]));
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(sc.trace_id().to_string(), TRACE);
        assert_eq!(sc.span_id().to_string(), PARENT);
        assert_eq!(sc.trace_state().header(), "vendor=a,other=b");
        assert_eq!(traceresponse(&sc, true), traceparent("01"));
        // A trace sampled out after the fact says so.
        assert_eq!(traceresponse(&sc, false), traceparent("00"));
    }

    #[test]
    fn stored_context_round_trips() {
        let cx = context_from_w3c(&traceparent("01"), Some("vendor=a,other=b"));
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_sampled());
        assert_eq!(sc.trace_id().to_string(), TRACE);
        assert_eq!(sc.span_id().to_string(), PARENT);
        let mut out = reqwest::header::HeaderMap::new();
        inject_context(&cx, &mut out);
        assert_eq!(out[TRACEPARENT], traceparent("01").as_str());
        assert_eq!(out[TRACESTATE], "vendor=a,other=b");
        assert!(
            !context_from_w3c("garbage", None)
                .span()
                .span_context()
                .is_valid()
        );
    }

    #[test]
    fn repeated_traceparent_is_invalid() {
        let cx = extract_parent(&headers(&[
            ("traceparent", &traceparent("01")),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4737-00f067aa0ba902b8-01",
            ),
        ]));
        assert!(!cx.span().span_context().is_valid());
    }

    #[test]
    fn traceparent_format_rules() {
        let t = TRACE;
        let p = PARENT;
        for good in [
            format!("00-{t}-{p}-01"),
            format!("00-{t}-{p}-00"),
            // Unknown flags are accepted (and zeroed).
            format!("00-{t}-{p}-09"),
            // OWS around the value.
            format!(" \t00-{t}-{p}-01\t "),
            // A future version: same first four fields, more after a '-'.
            format!("cc-{t}-{p}-01"),
            format!("cc-{t}-{p}-01-what-the-future-will-be-like"),
        ] {
            let cx = extract_parent(&headers(&[("traceparent", &good)]));
            let sc = cx.span().span_context().clone();
            assert!(sc.is_valid(), "{good:?}");
            assert_eq!(sc.trace_id().to_string(), t, "{good:?}");
            assert_eq!(sc.span_id().to_string(), p, "{good:?}");
        }
        for bad in [
            "garbage".to_owned(),
            String::new(),
            // version
            format!("ff-{t}-{p}-01"),
            format!("0-{t}-{p}-01"),
            format!("000-{t}-{p}-01"),
            format!("0000-{t}-{p}-01"),
            format!(".0-{t}-{p}-01"),
            format!("0.-{t}-{p}-01"),
            format!("0A-{t}-{p}-01"),
            format!("+0-{t}-{p}-01"),
            // version 00 has exactly four fields
            format!("00-{t}-{p}-01."),
            format!("00-{t}-{p}-01-"),
            format!("00-{t}-{p}-01-what-the-future-will-be-like"),
            format!("cc-{t}-{p}-01.what-the-future-will-be-like"),
            // trace id
            format!("00-00000000000000000000000000000000-{p}-01"),
            format!("00-4BF92F3577B34DA6A3CE929D0E0E4736-{p}-01"),
            format!("00-.bf92f3577b34da6a3ce929d0e0e4736-{p}-01"),
            format!("00-4bf92f3577b34da6a3ce929d0e0e473-{p}-01"),
            format!("00-4bf92f3577b34da6a3ce929d0e0e47361-{p}-01"),
            format!("00-+bf92f3577b34da6a3ce929d0e0e4736-{p}-01"),
            // parent id
            format!("00-{t}-0000000000000000-01"),
            format!("00-{t}-00F067AA0BA902B7-01"),
            format!("00-{t}-.0f067aa0ba902b7-01"),
            format!("00-{t}-00f067aa0ba902b-01"),
            format!("00-{t}-00f067aa0ba902b71-01"),
            // flags
            format!("00-{t}-{p}-1"),
            format!("00-{t}-{p}-001"),
            format!("00-{t}-{p}-.0"),
            format!("00-{t}-{p}-0."),
            format!("00-{t}-{p}-0A"),
            format!("00-{t}-{p}"),
        ] {
            let cx = extract_parent(&headers(&[("traceparent", &bad)]));
            assert!(!cx.span().span_context().is_valid(), "{bad:?}");
        }
    }

    #[test]
    fn sampled_flag_is_read_and_other_flags_are_dropped() {
        for (flags, sampled) in [("00", false), ("01", true), ("02", false), ("ff", true)] {
            let cx = extract_parent(&headers(&[("traceparent", &traceparent(flags))]));
            let sc = cx.span().span_context().clone();
            assert_eq!(sc.is_sampled(), sampled, "{flags}");
            assert_eq!(
                sc.trace_flags(),
                if sampled {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::default()
                },
                "{flags}"
            );
        }
    }

    #[test]
    fn tracestate_without_a_valid_traceparent_is_ignored() {
        for pairs in [
            vec![("tracestate", "foo=1")],
            vec![("traceparent", "00-xyz"), ("tracestate", "foo=1")],
        ] {
            let cx = extract_parent(&headers(&pairs));
            assert!(!cx.span().span_context().is_valid());
            assert!(cx.get::<ReceivedTraceState>().is_none());
        }
    }

    #[test]
    fn tracestate_fields_are_joined_and_normalised() {
        let tp = traceparent("00");
        let tp = tp.as_str();
        for (fields, expected) in [
            (vec!["foo=1,bar=2"], "foo=1,bar=2"),
            (
                vec!["foo=1,bar=2", "rojo=1,congo=2", "baz=3"],
                "foo=1,bar=2,rojo=1,congo=2,baz=3",
            ),
            (vec!["foo=1 \t , \t bar=2, \t baz=3"], "foo=1,bar=2,baz=3"),
            (
                vec!["foo=1\t \t,\t \tbar=2,\t \tbaz=3"],
                "foo=1,bar=2,baz=3",
            ),
            (vec!["\t foo=1 \t"], "foo=1"),
            (vec!["foo=1", ""], "foo=1"),
            (vec!["", "foo=1"], "foo=1"),
            (vec!["foo=1,,, ,bar=2,"], "foo=1,bar=2"),
            // Leading spaces belong to the value.
            (vec!["foo= 1"], "foo= 1"),
            // Duplicate keys: the first is kept.
            (vec!["foo=1,foo=2"], "foo=1"),
            (vec!["foo=1", "foo=2"], "foo=1"),
            // Keys by the current grammar, which the SDK's TraceState rejects.
            (vec!["foo@=1,bar=2"], "foo@=1,bar=2"),
            (vec!["foo@@bar=1,bar=2"], "foo@@bar=1,bar=2"),
            (vec!["foo@bar@baz=1"], "foo@bar@baz=1"),
            (vec!["t@vvvvvvvvvvvvvvv=1"], "t@vvvvvvvvvvvvvvv=1"),
        ] {
            let mut pairs = vec![("traceparent", tp)];
            pairs.extend(fields.iter().map(|f| ("tracestate", *f)));
            assert_eq!(
                outgoing_tracestate(&pairs).as_deref(),
                Some(expected),
                "{fields:?}"
            );
        }
    }

    #[test]
    fn tracestate_keeps_every_allowed_character_and_the_length_limits() {
        let key = "abcdefghijklmnopqrstuvwxyz0123456789_-*/";
        let vendor_key = format!("{key}@a-z0-9_-*/");
        let value: String = (0x20u8..=0x7e)
            .filter(|c| *c != b',' && *c != b'=')
            .map(char::from)
            .collect();
        for k in [key.to_owned(), vendor_key] {
            let member = format!("{k}={value}");
            assert_eq!(
                outgoing_tracestate(&[
                    ("traceparent", &traceparent("00")),
                    ("tracestate", &member)
                ]),
                Some(member)
            );
        }
        let long = format!("{}={}", "k".repeat(256), "v".repeat(256));
        let list = format!("foo=1,{long}");
        assert_eq!(
            outgoing_tracestate(&[("traceparent", &traceparent("00")), ("tracestate", &list)]),
            Some(list.clone())
        );
    }

    #[test]
    fn invalid_tracestate_is_dropped_whole_and_the_traceparent_kept() {
        let long_key = format!("{}=1", "z".repeat(257));
        let long_value = format!("foo={}", "v".repeat(257));
        for field in [
            "foo =1",
            "FOO=1",
            "foo.bar=1",
            "@foo=1,bar=2",
            "foo=bar=baz",
            "foo=,bar=3",
            "foo",
            "=1",
            "foo=caf\u{e9}",
            "foo=a\tb",
            long_key.as_str(),
            long_value.as_str(),
        ] {
            let pairs = [
                ("traceparent", traceparent("01")),
                ("tracestate", "ok=1".to_owned()),
                ("tracestate", field.to_owned()),
            ];
            let mut map = HeaderMap::new();
            for (k, v) in &pairs {
                map.append(
                    HeaderName::from_static(k),
                    HeaderValue::from_bytes(v.as_bytes()).unwrap(),
                );
            }
            let cx = extract_parent(&map);
            let sc = cx.span().span_context().clone();
            assert_eq!(sc.trace_id().to_string(), TRACE, "{field:?}");
            assert_eq!(sc.trace_state().header(), "", "{field:?}");
            let mut out = reqwest::header::HeaderMap::new();
            inject_context(&cx, &mut out);
            assert!(out.get(TRACEPARENT).is_some(), "{field:?}");
            assert!(out.get(TRACESTATE).is_none(), "{field:?}");
        }
    }

    #[test]
    fn tracestate_holds_at_most_32_members() {
        let members = |n: usize| -> Vec<String> {
            (1..=n)
                .map(|i| format!("bar{i:02}={i:02}"))
                .collect::<Vec<_>>()
                .chunks(10)
                .map(|c| c.join(","))
                .collect()
        };
        let tp = traceparent("00");
        let with = |fields: &[String]| {
            let mut pairs = vec![("traceparent", tp.as_str())];
            pairs.extend(fields.iter().map(|f| ("tracestate", f.as_str())));
            outgoing_tracestate(&pairs)
        };
        let kept = with(&members(32)).expect("32 members are kept");
        assert_eq!(kept.split(',').count(), 32);
        assert!(kept.starts_with("bar01=01,") && kept.ends_with(",bar32=32"));
        assert_eq!(with(&members(33)), None);
    }

    #[test]
    fn no_empty_tracestate_is_sent() {
        for fields in [vec![], vec![""], vec![" , "]] {
            let tp = traceparent("01");
            let mut pairs = vec![("traceparent", tp.as_str())];
            pairs.extend(fields.iter().map(|f| ("tracestate", *f)));
            assert_eq!(outgoing_tracestate(&pairs), None, "{fields:?}");
        }
    }

    #[test]
    fn the_received_list_is_not_sent_for_another_trace() {
        let other = SpanContext::new(
            TraceId::from_hex("5bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex(PARENT).unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let cx = extract_parent(&headers(&[
            ("traceparent", &traceparent("01")),
            ("tracestate", "foo@@bar=1"),
        ]))
        .with_remote_span_context(other);
        let mut out = reqwest::header::HeaderMap::new();
        inject_context(&cx, &mut out);
        assert!(out.get(TRACEPARENT).is_some());
        assert!(out.get(TRACESTATE).is_none());
    }

    /// Through the recording layer as in the service: the request span takes the extracted
    /// parent, a child span's headers name the child and carry the received list.
    #[test]
    fn a_child_span_sends_its_own_id_and_the_received_tracestate() {
        #[derive(Debug)]
        struct Discard;
        impl crate::telemetry::record::SpanSink for Discard {
            fn finish(
                &self,
                _: opentelemetry_sdk::trace::SpanData,
                _: Option<crate::telemetry::sampling::TailDecision>,
            ) {
            }
        }
        let layer = crate::telemetry::record::RecordLayer::new(
            crate::telemetry::sampling::Sampling {
                head_ratio: 1.0,
                tail: None,
            },
            std::sync::Arc::new(Discard),
            128,
        );
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            for (flags, state) in [("01", "foo@@bar=1,rojo=2"), ("00", "congo=t61rcWkgMzE")] {
                let root = tracing::info_span!(target: "sidechain", "request");
                root.set_parent(&extract_parent(&headers(&[
                    ("traceparent", &traceparent(flags)),
                    ("tracestate", state),
                ])));
                let child = root.in_scope(|| tracing::info_span!(target: "sidechain", "client"));
                let mut out = reqwest::header::HeaderMap::new();
                inject(&child, &mut out);
                let sent = out.get(TRACEPARENT).unwrap().to_str().unwrap();
                let child_id = span_context_of(&child).unwrap().span_id().to_string();
                assert_eq!(sent, format!("00-{TRACE}-{child_id}-{flags}"));
                assert_ne!(child_id, PARENT);
                assert_eq!(out.get(TRACESTATE).unwrap(), state);
            }
            // No parent: a new trace, and no tracestate at all.
            let root = tracing::info_span!(target: "sidechain", "request");
            let mut out = reqwest::header::HeaderMap::new();
            inject(&root, &mut out);
            let sent = out.get(TRACEPARENT).unwrap().to_str().unwrap();
            assert!(!sent.contains(TRACE), "{sent}");
            assert!(out.get(TRACESTATE).is_none());
        });
    }
}
