//! A local OTLP/HTTP trace endpoint for `scripts/bench/overhead.sh`: counts what it receives,
//! decodes nothing, and answers at once, late, or never.
//!
//! ```text
//! cargo run --release --example otlp_sink -- 127.0.0.1:4318 healthy
//! cargo run --release --example otlp_sink -- 127.0.0.1:4318 slow 5000   # 200 after 5 s
//! cargo run --release --example otlp_sink -- 127.0.0.1:4318 silent      # never answers
//! cargo run --release --example otlp_sink -- 127.0.0.1:4318 healthy 0 bodies.bin   # keep bodies
//! cargo run --release --example otlp_sink -- count bodies.bin            # spans in them
//! ```
//!
//! Each request received is one line on stdout: the body size in bytes (compressed, as sent).
//! With a fourth argument every body is also appended to that file, undecoded, so that the
//! sink costs no more CPU on the load's core than without it; `count` decodes such a file
//! afterwards (gzip, then the official `opentelemetry-proto` types) and prints
//! `requests <n> spans <n>`, then `root <n> <name>` per root span name: what the bench compares
//! with the requests served, to see whether an exporter dropped spans without saying so.

#[path = "../benches/support/sink.rs"]
mod sink;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("count") {
        return count(&args[1..]);
    }
    let addr = args.first().map_or("127.0.0.1:4318", String::as_str);
    let mode_name = args.get(1).map_or("healthy", String::as_str);
    let delay_ms = match args.get(2).map(|ms| ms.parse::<u64>()) {
        None => 5000,
        Some(Ok(ms)) => ms,
        Some(Err(_)) => {
            eprintln!("otlp_sink: the delay must be a number of milliseconds");
            return ExitCode::from(2);
        }
    };
    let Some(mode) = sink::Mode::parse(mode_name, Duration::from_millis(delay_ms)) else {
        eprintln!("otlp_sink: mode must be healthy, slow or silent, not {mode_name:?}");
        return ExitCode::from(2);
    };
    let listener = match TcpListener::bind(addr) {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("otlp_sink: cannot listen on {addr}: {err}");
            return ExitCode::FAILURE;
        }
    };
    let recording: Option<sink::Recording> = match args.get(3) {
        None => None,
        Some(path) => match std::fs::File::create(path) {
            // Unbuffered: one write per request, so that stopping the sink loses nothing.
            Ok(file) => Some(Arc::new(Mutex::new(file))),
            Err(err) => {
                eprintln!("otlp_sink: cannot create {path}: {err}");
                return ExitCode::FAILURE;
            }
        },
    };
    eprintln!("otlp_sink: {mode:?} on {addr}");
    let report: sink::Report = Arc::new(|bytes| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{bytes}");
        let _ = out.flush();
    });
    match sink::serve(listener, mode, report, recording) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("otlp_sink: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `count FILE…`: the requests and spans in recordings.
fn count(paths: &[String]) -> ExitCode {
    let (mut requests, mut spans) = (0u64, 0u64);
    // Local roots by name: one per request served, when nothing was lost.
    let mut roots = std::collections::BTreeMap::new();
    for path in paths {
        let data = match std::fs::read(path) {
            Ok(data) => data,
            Err(err) => {
                eprintln!("otlp_sink: cannot read {path}: {err}");
                return ExitCode::FAILURE;
            }
        };
        let mut rest = data.as_slice();
        while rest.len() >= 5 {
            let gzip = rest[0] == 1;
            let len = u32::from_le_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            let Some(body) = rest.get(5..5 + len) else {
                eprintln!("otlp_sink: {path}: a record is cut short");
                return ExitCode::FAILURE;
            };
            rest = &rest[5 + len..];
            let mut plain = Vec::new();
            let body = if gzip {
                if let Err(err) = flate2::read::GzDecoder::new(body).read_to_end(&mut plain) {
                    eprintln!("otlp_sink: {path}: a body does not gunzip: {err}");
                    return ExitCode::FAILURE;
                }
                plain.as_slice()
            } else {
                body
            };
            let request = match ExportTraceServiceRequest::decode(body) {
                Ok(request) => request,
                Err(err) => {
                    eprintln!("otlp_sink: {path}: a body does not decode: {err}");
                    return ExitCode::FAILURE;
                }
            };
            requests += 1;
            for span in request
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .flat_map(|s| &s.spans)
            {
                spans += 1;
                if span.parent_span_id.is_empty() {
                    *roots.entry(span.name.clone()).or_insert(0u64) += 1;
                }
            }
        }
    }
    println!("requests {requests} spans {spans}");
    for (name, n) in &roots {
        println!("root {n} {name}");
    }
    ExitCode::SUCCESS
}
