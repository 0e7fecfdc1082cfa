//! `OTEL_*` settings (CONTRACT.md §1, "Telemetry environment").
//!
//! Names and defaults follow the OpenTelemetry SDK environment specification, plus the seed
//! document's `OTEL_ENABLED`, `OTEL_ENVIRONMENT` and `OTEL_TRACE_SAMPLER_RATE`. Signal-specific
//! variants (`OTEL_EXPORTER_OTLP_TRACES_*`) win over the generic ones, as the spec says.

use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use url::Url;

use crate::config::env::{ConfigError, Env};

/// Request compression of export requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    None,
}

/// How spans are produced, sampled, batched and shipped.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    /// `OTEL_ENABLED`: `false` creates no spans and starts no exporter.
    pub enabled: bool,
    /// `OTEL_SERVICE_NAME`.
    pub service_name: String,
    /// `OTEL_ENVIRONMENT` → `deployment.environment.name`.
    pub environment: String,
    /// Whether `OTEL_ENVIRONMENT` was set (else `OTEL_RESOURCE_ATTRIBUTES` may name it).
    pub environment_set: bool,
    /// The full traces URL, resolved from `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or the base
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`.
    pub traces_endpoint: Url,
    /// `OTEL_EXPORTER_OTLP_HEADERS`: values are credentials, never logged.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `OTEL_EXPORTER_OTLP_COMPRESSION`.
    pub compression: Compression,
    /// `OTEL_EXPORTER_OTLP_TIMEOUT`: bound on one export request.
    pub export_timeout: Duration,
    /// `OTEL_TRACE_SAMPLER_RATE`: ratio for new root traces.
    pub sampler_rate: f64,
    /// `OTEL_BSP_MAX_QUEUE_SIZE`: finished spans the exporter may hold.
    pub max_queue_size: usize,
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`.
    pub max_export_batch_size: usize,
    /// `OTEL_BSP_SCHEDULE_DELAY`.
    pub schedule_delay: Duration,
    /// `OTEL_BSP_EXPORT_TIMEOUT`: bound on the final flush at shutdown, and on the retries of
    /// one batch.
    pub export_deadline: Duration,
    /// `OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT`.
    pub attribute_count_limit: usize,
    /// `OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`: 4096 characters by default (the specification's
    /// default is unlimited, which a public service cannot afford: `telemetry::limits`).
    pub attribute_value_length_limit: Option<usize>,
    /// `OTEL_RESOURCE_ATTRIBUTES`, decoded.
    pub resource_attributes: Vec<(String, String)>,
    /// `OTEL_TAIL_SAMPLING` and its `_RATIO`, `_LATENCY_MS`, `_MAX_WAIT_MS`: keep whole traces
    /// by outcome (errors, slow roots, a share of the rest). Off by default.
    pub tail_sampling: Option<TailPolicy>,
    /// `OTEL_LOGS_EXPORTER=otlp`: log records also go over OTLP/HTTP (CONTRACT.md §4). `None`
    /// (`none`, the default): stdout only.
    pub logs: Option<LogsExport>,
}

/// When tail sampling keeps a trace (`OTEL_TAIL_SAMPLING_*`); `export::tail` decides by it.
#[derive(Debug, Clone, Copy)]
pub struct TailPolicy {
    /// Share of the other traces kept, by trace id (as `TraceIdRatioBased` decides).
    pub ratio: f64,
    /// A root at least this long keeps its trace.
    pub latency: Duration,
    /// How long spans wait for their root, and how long a failure is remembered for it.
    pub max_wait: Duration,
}

/// Where and how log records are exported when `OTEL_LOGS_EXPORTER=otlp`.
#[derive(Debug, Clone)]
pub struct LogsExport {
    /// `OTEL_EXPORTER_OTLP_LOGS_ENDPOINT` as is, or `<OTEL_EXPORTER_OTLP_ENDPOINT>/v1/logs`.
    pub endpoint: Url,
    /// `OTEL_BLRP_MAX_QUEUE_SIZE`: records the exporter holds; beyond it new ones are dropped
    /// and counted.
    pub max_queue_size: usize,
    /// `OTEL_BLRP_MAX_EXPORT_BATCH_SIZE`: records per export request.
    pub max_export_batch_size: usize,
}

impl TelemetrySettings {
    pub fn from_source(env: &Env<'_>) -> Result<Self, ConfigError> {
        let sampler_rate = env.ratio("OTEL_TRACE_SAMPLER_RATE", 1.0)?;

        let max_queue_size = env.bounded("OTEL_BSP_MAX_QUEUE_SIZE", 8192usize, 1, 10_000_000)?;
        let max_export_batch_size =
            env.bounded("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512usize, 1, 1_000_000)?;
        if max_export_batch_size > max_queue_size {
            return Err(ConfigError::new(
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
                format!(
                    "{max_export_batch_size} is larger than OTEL_BSP_MAX_QUEUE_SIZE ({max_queue_size})"
                ),
            ));
        }

        let signal =
            |generic: &'static str, traces: &'static str| -> (&'static str, Option<String>) {
                match env.get(traces) {
                    Some(v) => (traces, Some(v)),
                    None => (generic, env.get(generic)),
                }
            };

        let compression = match signal(
            "OTEL_EXPORTER_OTLP_COMPRESSION",
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        ) {
            (_, None) => Compression::Gzip,
            (name, Some(raw)) => match raw.trim().to_ascii_lowercase().as_str() {
                "gzip" => Compression::Gzip,
                "none" => Compression::None,
                _ => {
                    return Err(ConfigError::new(
                        name,
                        format!("{raw:?} is not supported (gzip or none)"),
                    ));
                }
            },
        };

        let export_timeout = match signal(
            "OTEL_EXPORTER_OTLP_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        ) {
            (_, None) => Duration::from_millis(10_000),
            (name, Some(raw)) => Duration::from_millis(parse_millis(name, &raw)?),
        };

        let headers = match signal(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ) {
            (_, None) => Vec::new(),
            (name, Some(raw)) => parse_headers(name, &raw)?,
        };

        let traces_endpoint = resolve_traces_endpoint(
            env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").as_deref(),
            env.get("OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
        )?;

        let resource_attributes = match env.get("OTEL_RESOURCE_ATTRIBUTES") {
            None => Vec::new(),
            Some(raw) => parse_key_values("OTEL_RESOURCE_ATTRIBUTES", &raw)?,
        };

        let attribute_value_length_limit = Some(env.bounded(
            "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
            super::limits::DEFAULT_VALUE_LENGTH,
            1,
            usize::MAX,
        )?);

        let tail_sampling = if env.bool("OTEL_TAIL_SAMPLING", false)? {
            Some(TailPolicy {
                ratio: env.ratio("OTEL_TAIL_SAMPLING_RATIO", 0.1)?,
                latency: env.millis("OTEL_TAIL_SAMPLING_LATENCY_MS", 500, 0, 3_600_000)?,
                max_wait: env.millis("OTEL_TAIL_SAMPLING_MAX_WAIT_MS", 30_000, 1, 3_600_000)?,
            })
        } else {
            None
        };

        Ok(Self {
            enabled: env.bool("OTEL_ENABLED", true)?,
            service_name: env.string("OTEL_SERVICE_NAME", "sidechain-backend"),
            environment: env.string("OTEL_ENVIRONMENT", "development"),
            environment_set: env.get("OTEL_ENVIRONMENT").is_some(),
            traces_endpoint,
            headers,
            compression,
            export_timeout,
            sampler_rate,
            max_queue_size,
            max_export_batch_size,
            schedule_delay: env.millis("OTEL_BSP_SCHEDULE_DELAY", 1000, 1, 3_600_000)?,
            export_deadline: env.millis("OTEL_BSP_EXPORT_TIMEOUT", 30_000, 1, 3_600_000)?,
            attribute_count_limit: env.bounded(
                "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
                128usize,
                1,
                100_000,
            )?,
            attribute_value_length_limit,
            resource_attributes,
            tail_sampling,
            logs: logs_export(env)?,
        })
    }
}

/// `OTEL_LOGS_EXPORTER` and what goes with it.
fn logs_export(env: &Env<'_>) -> Result<Option<LogsExport>, ConfigError> {
    let exporter = env.string("OTEL_LOGS_EXPORTER", "none");
    match exporter.trim().to_ascii_lowercase().as_str() {
        "none" | "" => Ok(None),
        "otlp" => {
            let max_queue_size =
                env.bounded("OTEL_BLRP_MAX_QUEUE_SIZE", 2048usize, 1, 10_000_000)?;
            let max_export_batch_size =
                env.bounded("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", 512usize, 1, 1_000_000)?;
            Ok(Some(LogsExport {
                endpoint: resolve_signal_endpoint(
                    ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "v1/logs"),
                    env.get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT").as_deref(),
                    env.get("OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
                )?,
                max_queue_size,
                max_export_batch_size: max_export_batch_size.min(max_queue_size),
            }))
        }
        _ => Err(ConfigError::new(
            "OTEL_LOGS_EXPORTER",
            format!("{exporter:?} is not supported (otlp or none)"),
        )),
    }
}

fn parse_millis(name: &'static str, raw: &str) -> Result<u64, ConfigError> {
    raw.trim()
        .parse::<u64>()
        .ok()
        .filter(|ms| *ms > 0)
        .ok_or_else(|| {
            ConfigError::new(
                name,
                format!("{raw:?} is not a positive number of milliseconds"),
            )
        })
}

/// Resolves the traces URL by the OTLP exporter rules: the signal endpoint is used as is; the
/// base endpoint gets `v1/traces` appended to its path (keeping any base path). A value without
/// a scheme (`tempo:4318`) means plain HTTP.
pub fn resolve_traces_endpoint(
    traces: Option<&str>,
    base: Option<&str>,
) -> Result<Url, ConfigError> {
    resolve_signal_endpoint(
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "v1/traces"),
        traces,
        base,
    )
}

/// The rule of [`resolve_traces_endpoint`] for any signal: `(variable, path)` names the
/// signal's own variable and the path appended to the base.
fn resolve_signal_endpoint(
    (variable, signal_path): (&'static str, &str),
    signal: Option<&str>,
    base: Option<&str>,
) -> Result<Url, ConfigError> {
    if let Some(raw) = signal {
        return parse_endpoint(variable, raw);
    }
    let raw = base.unwrap_or("http://localhost:4318");
    let mut url = parse_endpoint("OTEL_EXPORTER_OTLP_ENDPOINT", raw)?;
    let path = url.path().trim_end_matches('/').to_owned();
    url.set_path(&format!("{path}/{signal_path}"));
    Ok(url)
}

fn parse_endpoint(name: &'static str, raw: &str) -> Result<Url, ConfigError> {
    let raw = raw.trim();
    let with_scheme = if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("http://{raw}")
    };
    let url = Url::parse(&with_scheme)
        .map_err(|e| ConfigError::new(name, format!("not a valid URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::new(
            name,
            format!("unsupported scheme {:?} (http or https)", url.scheme()),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::new(name, "the URL has no host"));
    }
    Ok(url)
}

/// Parses the spec's `key1=value1,key2=value2` list with percent-encoded values. Errors never
/// echo values: for headers they are credentials.
fn parse_key_values(name: &'static str, raw: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut pairs = Vec::new();
    for (index, item) in raw.split(',').enumerate() {
        if item.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = item.split_once('=') else {
            return Err(ConfigError::new(
                name,
                format!("entry {} has no '=' (expected key=value,...)", index + 1),
            ));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(ConfigError::new(
                name,
                format!("entry {} has an empty key", index + 1),
            ));
        }
        let value = percent_decode(value.trim()).ok_or_else(|| {
            ConfigError::new(
                name,
                format!("the value of {key:?} is not valid percent-encoded UTF-8"),
            )
        })?;
        pairs.push((key.to_owned(), value));
    }
    Ok(pairs)
}

fn parse_headers(
    name: &'static str,
    raw: &str,
) -> Result<Vec<(HeaderName, HeaderValue)>, ConfigError> {
    parse_key_values(name, raw)?
        .into_iter()
        .map(|(key, value)| {
            let header = HeaderName::from_bytes(key.as_bytes()).map_err(|_| {
                ConfigError::new(name, format!("{key:?} is not a valid header name"))
            })?;
            let mut value = HeaderValue::from_str(&value).map_err(|_| {
                ConfigError::new(
                    name,
                    format!("the value of {key:?} is not a valid header value"),
                )
            })?;
            value.set_sensitive(true);
            Ok((header, value))
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn telemetry(vars: &[(&str, &str)]) -> Result<TelemetrySettings, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TelemetrySettings::from_source(&Env::new(move |k| map.get(k).cloned()))
    }

    fn endpoint(traces: Option<&str>, base: Option<&str>) -> String {
        resolve_traces_endpoint(traces, base).unwrap().to_string()
    }

    #[test]
    fn endpoint_rules() {
        assert_eq!(endpoint(None, None), "http://localhost:4318/v1/traces");
        assert_eq!(
            endpoint(None, Some("tempo:4318")),
            "http://tempo:4318/v1/traces"
        );
        assert_eq!(
            endpoint(None, Some("http://h:4318/prefix/")),
            "http://h:4318/prefix/v1/traces"
        );
        assert_eq!(
            endpoint(None, Some("https://h/prefix")),
            "https://h/prefix/v1/traces"
        );
        assert_eq!(
            endpoint(Some("http://c:9999/custom/path"), Some("tempo:4318")),
            "http://c:9999/custom/path"
        );
        assert!(resolve_traces_endpoint(None, Some("ftp://x")).is_err());
    }

    #[test]
    fn defaults() {
        let t = telemetry(&[]).unwrap();
        assert!(t.enabled);
        assert_eq!(t.service_name, "sidechain-backend");
        assert_eq!(t.environment, "development");
        assert_eq!(t.compression, Compression::Gzip);
        assert_eq!(t.export_timeout, Duration::from_millis(10_000));
        assert_eq!(t.sampler_rate, 1.0);
        assert_eq!(t.max_queue_size, 8192);
        assert_eq!(t.max_export_batch_size, 512);
        assert_eq!(t.schedule_delay, Duration::from_millis(1000));
    }

    #[test]
    fn headers_are_decoded_and_errors_hide_values() {
        let t = telemetry(&[(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "X-Scope-OrgID=tenant%201, authorization=Basic%20c2VjcmV0",
        )])
        .unwrap();
        assert_eq!(t.headers.len(), 2);
        assert_eq!(t.headers[0].0.as_str(), "x-scope-orgid");
        assert_eq!(t.headers[0].1.to_str().unwrap(), "tenant 1");
        assert!(t.headers[1].1.is_sensitive());

        let err =
            telemetry(&[("OTEL_EXPORTER_OTLP_HEADERS", "authorization=s3cr%ZZ")]).unwrap_err();
        assert_eq!(err.variable, "OTEL_EXPORTER_OTLP_HEADERS");
        assert!(!err.to_string().contains("s3cr"), "{err}");
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (name, value) in [
            ("OTEL_TRACE_SAMPLER_RATE", "lots"),
            ("OTEL_TRACE_SAMPLER_RATE", "1.5"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "-1"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
            ("OTEL_ENABLED", "maybe"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"),
            ("OTEL_RESOURCE_ATTRIBUTES", "novalue"),
        ] {
            let err = telemetry(&[(name, value)]).unwrap_err();
            assert_eq!(err.variable, name, "{value}");
        }
    }

    #[test]
    fn signal_specific_variables_win() {
        let t = telemetry(&[
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "none"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "5000"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "250"),
        ])
        .unwrap();
        assert_eq!(t.compression, Compression::None);
        assert_eq!(t.export_timeout, Duration::from_millis(250));
    }

    #[test]
    fn resource_attributes_are_parsed() {
        let t = telemetry(&[("OTEL_RESOURCE_ATTRIBUTES", "team=audio,region=eu%2Dwest")]).unwrap();
        assert_eq!(
            t.resource_attributes,
            vec![
                ("team".to_string(), "audio".to_string()),
                ("region".to_string(), "eu-west".to_string())
            ]
        );
    }
}
