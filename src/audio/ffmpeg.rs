//! `ffprobe` and `ffmpeg` as child processes, each bounded by `AUDIO_STAGE_TIMEOUT_S`.
//!
//! ```text
//!  probe      ffprobe -print_format json ─▶ duration, sample rate, channels, format
//!  transcode  ffmpeg ─▶ libmp3lame 128 kb/s, no metadata, at most AUDIO_MAX_DURATION_S ─▶ <upload>.<n>.part
//!  waveform   ffmpeg ─▶ mono f32le PCM at 8 kHz on stdout ─▶ PeakAccumulator (streamed) ─▶ 200 peaks
//! ```
//!
//! **What ffmpeg is allowed to read.** ffmpeg guesses a file's format from its bytes, and some
//! formats name other files: an HLS playlist uploaded as `audio/wav` would be read as HLS and
//! its segments fetched. So every run is told the demuxer of the declared type (`-f`, from
//! [`Demuxer::for_type`]), may open local files only (`-protocol_whitelist file`), and is given
//! paths with the `file:` prefix (a path is never taken for a URL). The output carries none of
//! the upload's metadata tags (`-map_metadata -1`): a FLAC's title would otherwise become the
//! public MP3's `TIT2`. Every run reads at most `AUDIO_MAX_DURATION_S` of audio (`-t`), so a
//! file whose header lies about its length still cannot inflate.
//!
//! Every child is spawned with `kill_on_drop`, and every run is a future under
//! `tokio::time::timeout`: past the bound the future is dropped, which kills the child. A worker
//! whose job is abandoned (lease lost, shutdown) drops its future the same way, so no ffmpeg
//! outlives the job it ran for.
//!
//! Error reasons are meant for the uploader: short, without server paths, and with ffmpeg's own
//! last word when it has one ("Invalid data found when processing input").

use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// Number of peaks in a waveform (CONTRACT.md §2).
pub const WAVEFORM_PEAKS: usize = 200;

/// Bit rate of the processed MP3 (CONTRACT.md §6).
pub const MP3_BIT_RATE: i64 = 128_000;

/// Samples folded into one stored maximum while the PCM streams in; the 200 peaks are folded
/// from these at the end, when the real length is known. 64 keeps an hour of 48 kHz audio at
/// about 11 MB and gives exact peaks down to 0.3 s of audio.
const PEAK_CHUNK: usize = 64;

/// Keep at most this much of a child's stderr (its last line is the reason given).
const STDERR_KEEP: usize = 4096;

/// The demuxer ffmpeg must use for an upload: the one of its declared `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demuxer(&'static str);

impl Demuxer {
    /// The demuxer of one of [`super::ACCEPTED_TYPES`]; `None` for any other type.
    pub fn for_type(content_type: &str) -> Option<Self> {
        let name = match content_type {
            "audio/wav" | "audio/x-wav" => "wav",
            "audio/mpeg" => "mp3",
            "audio/flac" => "flac",
            "audio/ogg" => "ogg",
            "audio/aiff" => "aiff",
            _ => return None,
        };
        Some(Self(name))
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }
}

/// What bounds every run on an upload.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// The child is killed past this (`AUDIO_STAGE_TIMEOUT_S`).
    pub timeout: Duration,
    /// Audio read at most (`AUDIO_MAX_DURATION_S`).
    pub max_duration: Duration,
}

/// Arguments that restrict what ffmpeg/ffprobe read: local files only, in the declared format.
fn input_args(demuxer: Demuxer, input: &Path) -> Vec<OsString> {
    vec![
        "-protocol_whitelist".into(),
        "file".into(),
        "-f".into(),
        demuxer.as_str().into(),
        "-i".into(),
        file_url(input),
    ]
}

/// `file:<path>`: ffmpeg never takes it for another protocol, whatever the path holds.
fn file_url(path: &Path) -> OsString {
    let mut url = OsString::from("file:");
    url.push(path.as_os_str());
    url
}

/// Sample rate of the waveform's decode: the peaks of 200 buckets need no more, and decoding
/// an hour at 8 kHz costs a fraction of decoding it at 48 kHz.
const WAVEFORM_RATE: &str = "8000";

/// Why a stage failed.
#[derive(Debug, Clone)]
pub struct StageError {
    /// Short, readable, no internals: it is shown to the uploader.
    pub reason: String,
    /// The child's exit code, when it ran and exited.
    pub exit_code: Option<i32>,
    /// Whether trying again could succeed (an I/O fault of the server, not the input).
    pub transient: bool,
}

impl StageError {
    /// A fault of the input: another attempt would fail the same way.
    pub fn input(reason: impl Into<String>, exit_code: Option<i32>) -> Self {
        Self {
            reason: reason.into(),
            exit_code,
            transient: false,
        }
    }

    /// A fault of the server (disk, process table): worth another attempt.
    pub fn server(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            exit_code: None,
            transient: true,
        }
    }
}

/// Whether ffmpeg and ffprobe can be run here; checked once at start-up.
#[derive(Debug, Clone)]
pub struct Toolchain {
    missing: Option<&'static str>,
}

/// What a job fails with when the tools are missing.
pub const MISSING_REASON: &str =
    "audio processing is unavailable: ffmpeg is not installed on the server";

impl Toolchain {
    /// Runs `ffmpeg -version` and `ffprobe -version`.
    pub async fn detect() -> Self {
        for program in ["ffmpeg", "ffprobe"] {
            let ran = Command::new(program)
                .arg("-version")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .status();
            match tokio::time::timeout(Duration::from_secs(10), ran).await {
                Ok(Ok(status)) if status.success() => {}
                _ => {
                    return Self {
                        missing: Some(program),
                    };
                }
            }
        }
        Self { missing: None }
    }

    /// The program that is missing, if any.
    pub fn missing(&self) -> Option<&'static str> {
        self.missing
    }
}

/// What ffprobe says about an upload.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub duration_ms: i64,
    pub sample_rate: i32,
    pub channels: i32,
    /// The container, as ffprobe names it (`wav`, `flac`, `mp3`, `ogg`, `aiff`, …).
    pub format: String,
}

#[derive(Deserialize)]
struct ProbeJson {
    #[serde(default)]
    streams: Vec<ProbeStream>,
    format: Option<ProbeFormat>,
}

#[derive(Deserialize)]
struct ProbeStream {
    sample_rate: Option<String>,
    channels: Option<i32>,
    duration: Option<String>,
}

#[derive(Deserialize)]
struct ProbeFormat {
    format_name: Option<String>,
    duration: Option<String>,
}

/// Reads duration, sample rate, channels and container of `input`, read as `demuxer`.
pub async fn probe(
    input: &Path,
    demuxer: Demuxer,
    timeout: Duration,
) -> Result<(Probe, Option<i32>), StageError> {
    let mut args: Vec<OsString> = [
        "-v",
        "error",
        "-print_format",
        "json",
        "-show_entries",
        "format=format_name,duration:stream=sample_rate,channels,duration",
        "-select_streams",
        "a:0",
    ]
    .map(OsString::from)
    .into();
    args.extend(input_args(demuxer, input));
    let output = run("ffprobe", &args, timeout).await?;
    let code = output.status.code();
    if !output.status.success() {
        return Err(StageError::input(not_audio(&output.stderr, input), code));
    }
    let parsed = parse_probe(&output.stdout).map_err(|reason| StageError::input(reason, code))?;
    Ok((parsed, code))
}

fn parse_probe(stdout: &[u8]) -> Result<Probe, String> {
    let json: ProbeJson = serde_json::from_slice(stdout)
        .map_err(|_| "the file could not be read as audio".to_owned())?;
    let stream = json
        .streams
        .into_iter()
        .next()
        .ok_or("the file contains no audio stream")?;
    let format = json.format;
    let seconds = format
        .as_ref()
        .and_then(|f| f.duration.as_deref())
        .or(stream.duration.as_deref())
        .and_then(|d| d.parse::<f64>().ok())
        .filter(|d| d.is_finite() && *d > 0.0)
        .ok_or("the audio has no duration")?;
    let sample_rate = stream
        .sample_rate
        .as_deref()
        .and_then(|r| r.parse::<i32>().ok())
        .filter(|r| *r > 0)
        .ok_or("the audio has no sample rate")?;
    let channels = stream
        .channels
        .filter(|c| *c > 0)
        .ok_or("the audio has no channels")?;
    let format = format
        .and_then(|f| f.format_name)
        .and_then(|n| n.split(',').next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned());
    Ok(Probe {
        duration_ms: (seconds * 1000.0).round() as i64,
        sample_rate,
        channels,
        format,
    })
}

/// Transcodes the first audio stream of `input` to an MP3 at 128 kb/s in `output`: at most
/// `bounds.max_duration` of it, without the input's metadata.
pub async fn transcode(
    input: &Path,
    demuxer: Demuxer,
    output: &Path,
    bounds: Bounds,
) -> Result<Option<i32>, StageError> {
    let mut args: Vec<OsString> = ["-nostdin", "-hide_banner", "-v", "error", "-y"]
        .map(OsString::from)
        .into();
    args.extend(input_args(demuxer, input));
    args.extend(
        [
            "-t",
            &bounds.max_duration.as_secs().to_string(),
            "-map",
            "0:a:0",
            "-map_metadata",
            "-1",
            "-vn",
            "-c:a",
            "libmp3lame",
            "-b:a",
            "128k",
            "-f",
            "mp3",
        ]
        .map(OsString::from),
    );
    args.push(file_url(output));
    let output_run = run("ffmpeg", &args, bounds.timeout).await?;
    let code = output_run.status.code();
    if !output_run.status.success() {
        return Err(StageError::input(
            format!(
                "transcoding failed: {}",
                last_line(&output_run.stderr, input)
            ),
            code,
        ));
    }
    Ok(code)
}

/// The waveform of `input`: [`WAVEFORM_PEAKS`] absolute peaks in 0.0–1.0, from the decoded
/// PCM (mono, 32-bit float, [`WAVEFORM_RATE`]), streamed from ffmpeg's stdout, never held
/// whole; at most `bounds.max_duration` of it.
pub async fn waveform(
    input: &Path,
    demuxer: Demuxer,
    bounds: Bounds,
) -> Result<(Vec<f32>, Option<i32>), StageError> {
    let timeout = bounds.timeout;
    let input = input.to_owned();
    let max_seconds = bounds.max_duration.as_secs().to_string();
    let work = async move {
        let mut child = Command::new("ffmpeg")
            .args(["-nostdin", "-hide_banner", "-v", "error"])
            .args(input_args(demuxer, &input))
            .args([
                "-t",
                &max_seconds,
                "-map",
                "0:a:0",
                "-vn",
                "-ac",
                "1",
                "-ar",
                WAVEFORM_RATE,
                "-c:a",
                "pcm_f32le",
                "-f",
                "f32le",
                "pipe:1",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_error("ffmpeg"))?;
        let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take())
        else {
            return Err(StageError::server("could not read ffmpeg's output"));
        };
        let read_pcm = async {
            let mut peaks = PeakAccumulator::default();
            let mut buf = vec![0u8; 64 * 1024];
            // A sample can straddle two reads: its first bytes wait here.
            let mut carry = Vec::with_capacity(4);
            loop {
                let n = stdout.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                let mut bytes = &buf[..n];
                if !carry.is_empty() {
                    let take = (4 - carry.len()).min(bytes.len());
                    carry.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if carry.len() == 4 {
                        peaks.push(f32::from_le_bytes([carry[0], carry[1], carry[2], carry[3]]));
                        carry.clear();
                    }
                }
                let whole = bytes.len() / 4 * 4;
                for sample in bytes[..whole].chunks_exact(4) {
                    peaks.push(f32::from_le_bytes([
                        sample[0], sample[1], sample[2], sample[3],
                    ]));
                }
                carry.extend_from_slice(&bytes[whole..]);
            }
            Ok::<_, io::Error>(peaks)
        };
        let (peaks, stderr_text) = tokio::join!(read_pcm, read_tail(&mut stderr));
        let status = child
            .wait()
            .await
            .map_err(|_| StageError::server("could not wait for ffmpeg"))?;
        let code = status.code();
        if !status.success() {
            return Err(StageError::input(
                format!("decoding failed: {}", last_line(&stderr_text, &input)),
                code,
            ));
        }
        let peaks = peaks.map_err(|_| StageError::server("could not read the decoded audio"))?;
        let peaks = peaks
            .finish(WAVEFORM_PEAKS)
            .ok_or_else(|| StageError::input("the audio decodes to no samples", code))?;
        Ok((peaks, code))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(timed_out("ffmpeg", timeout)),
    }
}

/// Folds a stream of samples into absolute peaks (see [`PEAK_CHUNK`]).
#[derive(Debug, Default)]
pub struct PeakAccumulator {
    chunks: Vec<f32>,
    current: f32,
    in_current: usize,
}

impl PeakAccumulator {
    pub fn push(&mut self, sample: f32) {
        // NaN compares false and is ignored; decoded floats may overshoot full scale a little.
        let level = sample.abs();
        if level > self.current {
            self.current = level.min(1.0);
        }
        self.in_current += 1;
        if self.in_current == PEAK_CHUNK {
            self.chunks.push(self.current);
            self.current = 0.0;
            self.in_current = 0;
        }
    }

    /// `count` peaks covering the whole stream evenly; `None` when there were no samples.
    pub fn finish(mut self, count: usize) -> Option<Vec<f32>> {
        if self.in_current > 0 {
            self.chunks.push(self.current);
        }
        let n = self.chunks.len();
        if n == 0 {
            return None;
        }
        Some(
            (0..count)
                .map(|i| {
                    // lo < n for every i < count; a bucket takes at least one chunk.
                    let lo = i * n / count;
                    let hi = ((i + 1) * n / count).max(lo + 1);
                    self.chunks[lo..hi].iter().copied().fold(0.0, f32::max)
                })
                .collect(),
        )
    }
}

/// Runs a program to completion under the timeout, stdout and stderr captured.
async fn run(
    program: &'static str,
    args: &[OsString],
    timeout: Duration,
) -> Result<Output, StageError> {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(timeout, child).await {
        Ok(result) => result.map_err(spawn_error(program)),
        Err(_) => Err(timed_out(program, timeout)),
    }
}

fn spawn_error(program: &'static str) -> impl Fn(io::Error) -> StageError {
    move |err| {
        if err.kind() == io::ErrorKind::NotFound {
            StageError::input(MISSING_REASON, None)
        } else {
            StageError::server(format!("could not run {program}"))
        }
    }
}

fn timed_out(program: &str, timeout: Duration) -> StageError {
    StageError::input(
        format!(
            "processing took too long ({program} was stopped after {} s)",
            timeout.as_secs()
        ),
        None,
    )
}

/// Reads a child's stderr to its end, keeping the last [`STDERR_KEEP`] bytes.
async fn read_tail(stderr: &mut tokio::process::ChildStderr) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stderr.read(&mut buf).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > STDERR_KEEP {
            kept.drain(..kept.len() - STDERR_KEEP);
        }
    }
    kept
}

fn not_audio(stderr: &[u8], input: &Path) -> String {
    format!("not a readable audio file: {}", last_line(stderr, input))
}

/// ffmpeg's last line of complaint, without the server's paths (ffmpeg prefixes messages about
/// a file with its name; the output lives beside the input), at most 160 characters.
fn last_line(stderr: &[u8], input: &Path) -> String {
    let mut text = String::from_utf8_lossy(stderr).into_owned();
    if let Some(dir) = input.parent().map(|d| d.to_string_lossy().into_owned())
        && !dir.is_empty()
    {
        text = text
            .replace(&format!("file:{dir}/"), "")
            .replace(&format!("{dir}/"), "");
    }
    let path = input
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let line = text
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("unknown error");
    let line = if path.is_empty() {
        line.to_owned()
    } else {
        line.replace(&format!("{path}: "), "")
            .replace(&path, "the file")
    };
    let mut line: String = line.chars().filter(|c| !c.is_control()).collect();
    if line.chars().count() > 160 {
        line = line.chars().take(157).collect::<String>() + "...";
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_accepted_type_has_its_demuxer_and_reads_local_files_only() {
        for content_type in super::super::ACCEPTED_TYPES {
            let demuxer = Demuxer::for_type(content_type).expect(content_type);
            let args = input_args(demuxer, Path::new("/srv/audio/p/u.src"));
            let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap()).collect();
            assert_eq!(
                args,
                [
                    "-protocol_whitelist",
                    "file",
                    "-f",
                    demuxer.as_str(),
                    "-i",
                    "file:/srv/audio/p/u.src"
                ]
            );
        }
        assert_eq!(
            Demuxer::for_type("audio/wav"),
            Demuxer::for_type("audio/x-wav")
        );
        assert_eq!(Demuxer::for_type("application/vnd.apple.mpegurl"), None);
    }

    #[test]
    fn peaks_cover_the_stream_evenly() {
        let mut acc = PeakAccumulator::default();
        // First half silence, second half full scale.
        for i in 0..64_000 {
            acc.push(if i < 32_000 { 0.0 } else { -1.0 });
        }
        let peaks = acc.finish(WAVEFORM_PEAKS).unwrap();
        assert_eq!(peaks.len(), WAVEFORM_PEAKS);
        assert!(peaks[..99].iter().all(|p| *p == 0.0), "{peaks:?}");
        assert!(peaks[101..].iter().all(|p| *p == 1.0), "{peaks:?}");
    }

    #[test]
    fn short_streams_still_give_every_peak() {
        let mut acc = PeakAccumulator::default();
        for _ in 0..10 {
            acc.push(0.5);
        }
        acc.push(f32::NAN);
        acc.push(3.0);
        let peaks = acc.finish(WAVEFORM_PEAKS).unwrap();
        assert_eq!(peaks.len(), WAVEFORM_PEAKS);
        assert!(peaks.iter().all(|p| *p == 1.0));
        assert!(PeakAccumulator::default().finish(WAVEFORM_PEAKS).is_none());
    }

    #[test]
    fn probe_output_is_read() {
        let json = br#"{"programs":[],"streams":[{"sample_rate":"44100","channels":2}],
            "format":{"format_name":"mov,mp4,m4a","duration":"2.500000"}}"#;
        assert_eq!(
            parse_probe(json).unwrap(),
            Probe {
                duration_ms: 2500,
                sample_rate: 44100,
                channels: 2,
                format: "mov".into()
            }
        );
        assert_eq!(
            parse_probe(br#"{"streams":[],"format":{}}"#).unwrap_err(),
            "the file contains no audio stream"
        );
    }

    #[test]
    fn reasons_do_not_name_server_paths() {
        let path = Path::new("/srv/audio/p/u.src");
        let reason = last_line(
            b"[x] junk\n/srv/audio/p/u.src: Invalid data found when processing input\n",
            path,
        );
        assert_eq!(reason, "Invalid data found when processing input");
        let reason = last_line(
            b"Error opening output /srv/audio/p/u.2.part: No space\n",
            path,
        );
        assert_eq!(reason, "Error opening output u.2.part: No space");
        let reason = last_line(b"file:/srv/audio/p/u.src: Invalid data found\n", path);
        assert_eq!(reason, "Invalid data found");
    }
}
