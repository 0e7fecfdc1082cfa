//! A minimal OTLP/HTTP sink for the benchmarks: it reads each request (HTTP/1.1, keep-alive,
//! `Content-Length` or chunked bodies), counts the body bytes as they came on the wire (still
//! compressed; nothing is decoded) and answers `200` with an empty body — or, to test the
//! exporter's isolation, answers late or never.
//!
//! ```text
//!  exporter ──POST /v1/traces──▶ connection thread ─▶ read head + body ─▶ report(bytes)
//!                                                   └▶ 200 now | 200 after a delay | silence
//! ```
//!
//! Shared by `benches/exporter.rs` (the sink runs in a child process, so that its CPU time is
//! not counted as the exporters') and `examples/otlp_sink.rs` (the sink of
//! `scripts/bench/overhead.sh`). Standard library only.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the sink answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `200` with an empty body, at once.
    Healthy,
    /// `200`, but only after this long.
    Slow(Duration),
    /// Reads the request and never answers; the connection stays open until the client gives
    /// up on it.
    Silent,
}

impl Mode {
    /// `healthy`, `slow` (answering after `delay`) or `silent`.
    pub fn parse(name: &str, delay: Duration) -> Option<Mode> {
        match name {
            "healthy" => Some(Mode::Healthy),
            "slow" => Some(Mode::Slow(delay)),
            "silent" => Some(Mode::Silent),
            _ => None,
        }
    }
}

/// Called once per request read, with the number of body bytes.
pub type Report = Arc<dyn Fn(u64) + Send + Sync>;

/// Where the bodies go when they are kept (see [`serve_recording`]).
pub type Recording = Arc<Mutex<dyn Write + Send>>;

/// Serves until the listener fails; one thread per connection (exporters keep one or two
/// connections alive, so there are few).
///
/// With a `recording`, every body is also appended to it as it came (still compressed), so
/// that its spans can be counted after the run without decoding on the load's core: one record
/// per request, a byte (1: gzip, 0: none), the length (u32, little-endian), the body.
pub fn serve(
    listener: TcpListener,
    mode: Mode,
    report: Report,
    recording: Option<Recording>,
) -> io::Result<()> {
    for stream in listener.incoming() {
        let stream = stream?;
        let report = Arc::clone(&report);
        let recording = recording.clone();
        std::thread::spawn(move || {
            // A connection that breaks mid-request is the client's business, not the sink's.
            let _ = connection(stream, mode, &report, recording.as_ref());
        });
    }
    Ok(())
}

const OK: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";

fn connection(
    stream: TcpStream,
    mode: Mode,
    report: &Report,
    recording: Option<&Recording>,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut line = String::new();
    loop {
        // Request line; end of stream between requests is a normal close.
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line.trim().is_empty() {
            continue;
        }
        let mut content_length: u64 = 0;
        let mut chunked = false;
        let mut close = false;
        let mut gzip = false;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            } else if name.eq_ignore_ascii_case("content-encoding") {
                gzip = value.eq_ignore_ascii_case("gzip");
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
        let mut body = recording.map(|_| Vec::new());
        let bytes = if chunked {
            chunked_body(&mut reader, &mut line, body.as_mut())?
        } else {
            skip(&mut reader, content_length, body.as_mut())?
        };
        if let (Some(recording), Some(body)) = (recording, body) {
            let mut record = Vec::with_capacity(5 + body.len());
            record.push(u8::from(gzip));
            record.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
            record.extend_from_slice(&body);
            // One write per record: records of two connections never interleave.
            recording
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write_all(&record)?;
        }
        report(bytes);
        match mode {
            Mode::Healthy => {}
            Mode::Slow(delay) => std::thread::sleep(delay),
            Mode::Silent => {
                // Hold the connection without a word until the client closes it.
                let mut buf = [0u8; 4096];
                while reader.read(&mut buf)? > 0 {}
                return Ok(());
            }
        }
        writer.write_all(OK)?;
        if close {
            return Ok(());
        }
    }
}

/// Reads exactly `n` bytes, into `keep` if given, else discarding them.
fn skip(reader: &mut impl BufRead, n: u64, keep: Option<&mut Vec<u8>>) -> io::Result<u64> {
    let copied = match keep {
        Some(keep) => io::copy(&mut reader.take(n), keep)?,
        None => io::copy(&mut reader.take(n), &mut io::sink())?,
    };
    if copied < n {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(copied)
}

/// Reads a chunked body (chunk extensions and trailers ignored); returns its payload size.
fn chunked_body(
    reader: &mut impl BufRead,
    line: &mut String,
    mut keep: Option<&mut Vec<u8>>,
) -> io::Result<u64> {
    let mut total = 0;
    loop {
        line.clear();
        if reader.read_line(line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let size = line.trim().split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                line.clear();
                if reader.read_line(line)? == 0 || line.trim().is_empty() {
                    return Ok(total);
                }
            }
        }
        total += skip(reader, size, keep.as_deref_mut())?;
        line.clear();
        reader.read_line(line)?; // the CRLF after the chunk
    }
}
