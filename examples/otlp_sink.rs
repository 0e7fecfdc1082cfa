//! A local OTLP/HTTP trace endpoint for `scripts/bench/overhead.sh`: counts what it receives,
//! decodes nothing, and answers at once, late, or never.
//!
//! ```text
//! cargo run --release --example otlp_sink -- 127.0.0.1:4318 healthy
//! cargo run --release --example otlp_sink -- 127.0.0.1:4318 slow 5000   # 200 after 5 s
//! cargo run --release --example otlp_sink -- 127.0.0.1:4318 silent      # never answers
//! ```
//!
//! Each request received is one line on stdout: the body size in bytes (compressed, as sent).

#[path = "../benches/support/sink.rs"]
mod sink;

use std::io::Write;
use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
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
    eprintln!("otlp_sink: {mode:?} on {addr}");
    let report: sink::Report = Arc::new(|bytes| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{bytes}");
        let _ = out.flush();
    });
    match sink::serve(listener, mode, report) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("otlp_sink: {err}");
            ExitCode::FAILURE
        }
    }
}
