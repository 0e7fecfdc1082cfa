//! The load driver of `scripts/bench/mixed.sh`: many users reading and writing at once.
//!
//! ```text
//! MIXED_BASE=http://127.0.0.1:19201 MIXED_POSTS=posts.txt cargo run --release --example mixed_load
//! ```
//!
//! `CONNS` tasks each send one request after another until `DURATION_S` seconds have passed or
//! `MAX_REQUESTS` were sent, after `WARMUP_S` seconds of the same load that are not measured.
//! Each request is from one of the seeded users (`producer_{i}`, token `bench-token-{i}`, see
//! scripts/bench/seed.sql), chosen so that a fifth of them send four fifths of the requests (the
//! active users of a social app), and is one of (weights in percent):
//!
//! | route | % | | route | % |
//! | --- | --- | --- | --- | --- |
//! | timeline (own) | 30 | | post page | 7.5 |
//! | global, first page | 14 | | its comments | 7.5 |
//! | global, second page | 3 | | profile | 6 |
//! | trending | 13 | | profile's posts | 6 |
//! | search | 8 | | writes | 5 |
//!
//! Writes: like 1.5, unlike 1 (of a like this driver made), comment 1, new post 0.75, follow
//! 0.5, unfollow 0.25. Posts looked at or liked are recent ones half of the time (the first 500
//! lines of `MIXED_POSTS`, newest first), any seeded post otherwise. Feeds are read with the
//! user's token, as a logged-in app does.
//!
//! Before and after the measured window it reads `/metrics` (and, given `SERVER_PID`, the
//! server's CPU time), and prints one Markdown report: throughput, p50/p99 per route, page hit
//! rate per feed kind, Postgres queries per request, server CPU per request.
//! Loopback only: it refuses any other host unless `MIXED_ALLOWED_HOSTS` (comma-separated)
//! names it.
//!
//! The same driver is the dev stack's traffic (`make dev-load`, profile `load` of
//! deploy/docker-compose.dev.yml), with these beyond the benchmark's settings:
//! - `MIXED_RATE`: requests per second, all connections together (default 0: as fast as the
//!   server answers, the benchmark's way);
//! - `MIXED_POSTS` unset: the post ids are read from the global feed instead of a file;
//! - `MIXED_WEIGHTS=route=weight,…`: changes the mix, in hundredths of a percent; the routes
//!   `recommended` (the feed that asks the recommender) and `upload` (a new post and its audio,
//!   a one-second WAV, through the audio pipeline) weigh 0 unless given here;
//! - SIGTERM or SIGINT ends the run early: no new request starts, the report is printed and
//!   the exit status is 0.

use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const USERS: u64 = 1000;
const ACTIVE: u64 = 200;

/// (route name, weight in hundredths of a percent).
const MIX: &[(&str, u32)] = &[
    ("timeline", 3000),
    ("global", 1400),
    ("global_page2", 300),
    ("trending", 1300),
    ("search", 800),
    ("post", 750),
    ("comments", 750),
    ("profile", 600),
    ("profile_posts", 600),
    ("like", 150),
    ("unlike", 100),
    ("comment", 100),
    ("new_post", 75),
    ("follow", 50),
    ("unfollow", 25),
    // Not in the benchmark's mix (weight 0) unless MIXED_WEIGHTS gives them one.
    ("recommended", 0),
    ("upload", 0),
];

const SEARCHES: &[&str] = &[
    "loop",
    "keys",
    "808",
    "house",
    "ambient",
    "tape",
    "granular",
    "swing",
    "soul",
    "producer_4",
];

/// xorshift64*: enough randomness for a load mix, and no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A user number 1..=1000: 80 % of draws from the 200 active ones.
    fn user(&mut self) -> u64 {
        if self.below(10) < 8 {
            1 + self.below(ACTIVE)
        } else {
            1 + self.below(USERS)
        }
    }
}

struct Shared {
    base: String,
    /// The mix in force: MIX with MIXED_WEIGHTS applied.
    mix: Vec<(&'static str, u32)>,
    /// Set by SIGTERM/SIGINT: workers start no new request.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    /// Time between two requests of one connection (`MIXED_RATE`), none when unpaced.
    pace: Option<Duration>,
    client: reqwest::Client,
    posts: Vec<String>,
    global_cursor: Mutex<Option<String>>,
    liked: Mutex<Vec<(u64, String)>>,
    measuring: std::sync::atomic::AtomicBool,
    sent: std::sync::atomic::AtomicU64,
    max_requests: u64,
}

#[derive(Default)]
struct Tally {
    latencies: HashMap<&'static str, Vec<u32>>,
    errors: HashMap<&'static str, u64>,
}

fn pick_route(mix: &[(&'static str, u32)], rng: &mut Rng) -> &'static str {
    let total: u32 = mix.iter().map(|(_, w)| w).sum();
    let mut x = rng.below(u64::from(total)) as u32;
    for (name, w) in mix {
        if x < *w {
            return name;
        }
        x -= w;
    }
    mix[0].0
}

/// MIX with the weights of `MIXED_WEIGHTS` (`route=weight,…`, hundredths of a percent).
fn mix_with(overrides: &str) -> Result<Vec<(&'static str, u32)>, String> {
    let mut mix = MIX.to_vec();
    for item in overrides
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
    {
        let (route, weight) = item
            .split_once('=')
            .ok_or_else(|| format!("MIXED_WEIGHTS: {item:?} is not route=weight"))?;
        let weight: u32 = weight
            .trim()
            .parse()
            .map_err(|_| format!("MIXED_WEIGHTS: {item:?}: the weight is not a number"))?;
        let entry = mix
            .iter_mut()
            .find(|(name, _)| *name == route.trim())
            .ok_or_else(|| format!("MIXED_WEIGHTS: no route {route:?} in the mix"))?;
        entry.1 = weight;
    }
    if mix.iter().all(|(_, w)| *w == 0) {
        return Err("MIXED_WEIGHTS: every weight is 0".into());
    }
    Ok(mix)
}

/// A one-second 8 kHz mono 16-bit WAV (a 440 Hz tone): small, and real audio for ffmpeg.
fn tone_wav() -> Vec<u8> {
    const RATE: u32 = 8000;
    let samples: Vec<i16> = (0..RATE)
        .map(|i| {
            let t = f64::from(i) / f64::from(RATE);
            (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
        })
        .collect();
    let data_len = (samples.len() * 2) as u32;
    let mut wav = Vec::with_capacity(44 + data_len as usize);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&RATE.to_le_bytes());
    wav.extend_from_slice(&(RATE * 2).to_le_bytes()); // bytes per second
    wav.extend_from_slice(&2u16.to_le_bytes()); // block align
    wav.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    for sample in samples {
        wav.extend_from_slice(&sample.to_le_bytes());
    }
    wav
}

impl Shared {
    fn post(&self, rng: &mut Rng) -> &str {
        let n = self.posts.len() as u64;
        let i = if rng.below(2) == 0 {
            rng.below(n.min(500))
        } else {
            rng.below(n)
        };
        &self.posts[i as usize]
    }

    /// Sends one request of `route` as `user`; `Ok(false)` for an unexpected status.
    async fn send(&self, rng: &mut Rng, route: &'static str, user: u64) -> reqwest::Result<bool> {
        let token = format!("bench-token-{user}");
        let c = &self.client;
        let b = &self.base;
        let request = match route {
            "timeline" => c.get(format!("{b}/api/v1/feed/unified?type=timeline")),
            "global" => c.get(format!("{b}/api/v1/feed/unified?type=global")),
            "global_page2" => {
                let cursor = self.global_cursor.lock().ok().and_then(|c| c.clone());
                match cursor {
                    Some(cursor) => c.get(format!(
                        "{b}/api/v1/feed/unified?type=global&cursor={cursor}"
                    )),
                    None => c.get(format!("{b}/api/v1/feed/unified?type=global")),
                }
            }
            "trending" => c.get(format!("{b}/api/v1/feed/unified?type=trending")),
            "recommended" => c.get(format!("{b}/api/v1/feed/unified?type=recommended")),
            "upload" => return self.upload(rng, user).await,
            "search" => {
                let q = SEARCHES[rng.below(SEARCHES.len() as u64) as usize];
                c.get(format!("{b}/api/v1/search?q={q}"))
            }
            "post" => c.get(format!("{b}/api/v1/posts/{}", self.post(rng))),
            "comments" => c.get(format!("{b}/api/v1/posts/{}/comments", self.post(rng))),
            "profile" => c.get(format!("{b}/api/v1/users/producer_{}", rng.user())),
            "profile_posts" => c.get(format!("{b}/api/v1/users/producer_{}/posts", rng.user())),
            "like" => {
                let post = self.post(rng).to_owned();
                let r = c.post(format!("{b}/api/v1/posts/{post}/like"));
                if let Ok(mut liked) = self.liked.lock() {
                    liked.push((user, post));
                }
                r
            }
            "unlike" => {
                let mine = self.liked.lock().ok().and_then(|mut l| l.pop());
                match mine {
                    Some((liker, post)) => {
                        return self.unlike(liker, &post).await;
                    }
                    None => c.delete(format!("{b}/api/v1/posts/{}/like", self.post(rng))),
                }
            }
            "comment" => c
                .post(format!("{b}/api/v1/posts/{}/comments", self.post(rng)))
                .json(&json!({"body": "Hard-hitting drums, what compressor is that?"})),
            "new_post" => c.post(format!("{b}/api/v1/posts")).json(&json!({
                "title": format!("Bench loop {}", rng.below(1_000_000)),
                "bpm": 80 + rng.below(80),
                "genre": "lo-fi",
                "tags": ["loop", "bench"],
            })),
            "follow" | "unfollow" => {
                let other = 1 + (user + rng.below(40)) % USERS;
                let other = if other == user {
                    1 + user % USERS
                } else {
                    other
                };
                let url = format!("{b}/api/v1/users/producer_{other}/follow");
                if route == "follow" {
                    c.post(url)
                } else {
                    c.delete(url)
                }
            }
            _ => unreachable!("a route of MIX"),
        };
        let response = request.bearer_auth(token).send().await?;
        let ok = response.status().is_success();
        if route == "global" && ok {
            let page: Value = response.json().await?;
            if let Some(cursor) = page["next_cursor"].as_str()
                && let Ok(mut shared) = self.global_cursor.lock()
            {
                *shared = Some(cursor.to_owned());
            }
        } else {
            response.bytes().await?;
        }
        Ok(ok)
    }

    /// A new post, then its audio: two requests, one `upload` in the report.
    async fn upload(&self, rng: &mut Rng, user: u64) -> reqwest::Result<bool> {
        let token = format!("bench-token-{user}");
        let created = self
            .client
            .post(format!("{}/api/v1/posts", self.base))
            .bearer_auth(&token)
            .json(&json!({
                "title": format!("Dev loop {}", rng.below(1_000_000)),
                "bpm": 90,
                "genre": "lo-fi",
                "tags": ["loop", "dev"],
            }))
            .send()
            .await?;
        if !created.status().is_success() {
            created.bytes().await?;
            return Ok(false);
        }
        let post: Value = created.json().await?;
        let Some(id) = post["id"].as_str() else {
            return Ok(false);
        };
        let response = self
            .client
            .put(format!("{}/api/v1/posts/{id}/audio", self.base))
            .bearer_auth(&token)
            .header("Content-Type", "audio/wav")
            .body(tone_wav())
            .send()
            .await?;
        // 429: this user already has AUDIO_PENDING_PER_USER jobs waiting; the service said so
        // as it should, which is not a failure of the run.
        let ok = response.status().is_success() || response.status().as_u16() == 429;
        response.bytes().await?;
        Ok(ok)
    }

    async fn unlike(&self, user: u64, post: &str) -> reqwest::Result<bool> {
        let response = self
            .client
            .delete(format!("{}/api/v1/posts/{post}/like", self.base))
            .bearer_auth(format!("bench-token-{user}"))
            .send()
            .await?;
        let ok = response.status().is_success();
        response.bytes().await?;
        Ok(ok)
    }
}

async fn worker(shared: Arc<Shared>, seed: u64, until: Instant) -> Tally {
    use std::sync::atomic::Ordering;
    let mut rng = Rng(seed | 1);
    let mut tally = Tally::default();
    let mut pace = shared.pace.map(|every| {
        let mut ticks = tokio::time::interval(every);
        // Behind schedule (a slow answer): carry on at the rate, never in a burst.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks
    });
    while Instant::now() < until && !shared.stopping.load(Ordering::Relaxed) {
        if let Some(ticks) = pace.as_mut() {
            ticks.tick().await;
            if shared.stopping.load(Ordering::Relaxed) || Instant::now() >= until {
                break;
            }
        }
        let measuring = shared.measuring.load(Ordering::Relaxed);
        if measuring && shared.sent.fetch_add(1, Ordering::Relaxed) >= shared.max_requests {
            break;
        }
        let route = pick_route(&shared.mix, &mut rng);
        let user = rng.user();
        let started = Instant::now();
        let ok = matches!(shared.send(&mut rng, route, user).await, Ok(true));
        if measuring {
            let micros = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
            tally.latencies.entry(route).or_default().push(micros);
            if !ok {
                *tally.errors.entry(route).or_default() += 1;
            }
        }
    }
    tally
}

/// `name{labels} value` lines of the Prometheus text format, summed by (name, labels).
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some((series, value)) = line.rsplit_once(' ')
            && let Ok(v) = value.parse::<f64>()
        {
            *out.entry(series.to_owned()).or_insert(0.0) += v;
        }
    }
    out
}

async fn scrape(shared: &Shared) -> Result<BTreeMap<String, f64>, String> {
    let text = shared
        .client
        .get(format!("{}/metrics", shared.base))
        .send()
        .await
        .map_err(|e| format!("GET /metrics: {e}"))?
        .text()
        .await
        .map_err(|e| format!("GET /metrics: {e}"))?;
    Ok(parse_metrics(&text))
}

fn delta(
    after: &BTreeMap<String, f64>,
    before: &BTreeMap<String, f64>,
    pred: impl Fn(&str) -> bool,
) -> f64 {
    after
        .iter()
        .filter(|(k, _)| pred(k))
        .map(|(k, v)| v - before.get(k).copied().unwrap_or(0.0))
        .sum()
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

/// User + system CPU of a process in clock ticks (`/proc/{pid}/stat`), when there is one.
fn cpu_ticks(pid: u64) -> Option<u64> {
    if pid == 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn env_u64(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => v
            .parse()
            .map_err(|_| format!("{name}: {v:?} is not a number")),
    }
}

/// Up to 500 post ids from the first pages of the global feed, newest first (the dev stack,
/// where no file lists them).
async fn posts_from_feed(client: &reqwest::Client, base: &str) -> Result<Vec<String>, String> {
    let mut posts = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..5 {
        let mut url = format!("{base}/api/v1/feed/unified?type=global&limit=100");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page: Value = client
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| format!("GET {url}: {e}"))?
            .json()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        posts.extend(
            page["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|post| post["id"].as_str().map(str::to_owned)),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    Ok(posts)
}

/// Sets `stopping` at the first SIGTERM or SIGINT (`docker stop`, Ctrl-C). Installed first
/// thing, so that a signal during start-up (reading the post ids) also ends the run cleanly.
fn stop_on_signal(stopping: Arc<std::sync::atomic::AtomicBool>) -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT: {e}"))?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("mixed_load: stopping: no new request; the report follows");
        stopping.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    Ok(())
}

async fn run() -> Result<(), String> {
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    stop_on_signal(stopping.clone())?;
    let base = std::env::var("MIXED_BASE").unwrap_or_else(|_| "http://127.0.0.1:19201".into());
    let host = url::Url::parse(&base)
        .map_err(|e| format!("MIXED_BASE: {e}"))?
        .host_str()
        .unwrap_or_default()
        .to_owned();
    let allowed = std::env::var("MIXED_ALLOWED_HOSTS").unwrap_or_default();
    if !matches!(host.as_str(), "127.0.0.1" | "localhost" | "[::1]")
        && !allowed.split(',').any(|h| h.trim() == host)
    {
        return Err(format!(
            "MIXED_BASE: {host} is not loopback (MIXED_ALLOWED_HOSTS names the others allowed)"
        ));
    }
    let mix = mix_with(&std::env::var("MIXED_WEIGHTS").unwrap_or_default())?;
    // 0: unpaced, each connection sends as soon as the last answer came (the benchmark).
    let rate = env_u64("MIXED_RATE", 0)?;
    let duration = Duration::from_secs(env_u64("DURATION_S", 30)?.clamp(1, 86_400));
    let warmup = Duration::from_secs(env_u64("WARMUP_S", 5)?.min(120));
    let conns = env_u64("CONNS", 16)?.clamp(1, 256);
    let max_requests = env_u64("MAX_REQUESTS", 2_000_000)?.max(1);
    let seed = env_u64("SEED", 16)?;
    let label = std::env::var("LABEL").unwrap_or_else(|_| "run".into());
    let server_pid = env_u64("SERVER_PID", 0)?;

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(conns as usize)
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let posts: Vec<String> = match std::env::var("MIXED_POSTS") {
        Ok(posts_file) => std::fs::read_to_string(&posts_file)
            .map_err(|e| format!("{posts_file}: {e}"))?
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect(),
        Err(_) => posts_from_feed(&client, &base).await?,
    };
    if posts.is_empty() {
        return Err("no post ids (MIXED_POSTS, or the global feed when it is unset)".into());
    }
    let shared = Arc::new(Shared {
        base,
        mix,
        stopping,
        pace: (rate > 0).then(|| Duration::from_secs_f64(conns as f64 / rate as f64)),
        client,
        posts,
        global_cursor: Mutex::new(None),
        liked: Mutex::new(Vec::new()),
        measuring: false.into(),
        sent: 0.into(),
        max_requests,
    });

    let until = Instant::now() + warmup + duration;
    let mut tasks = Vec::new();
    for i in 0..conns {
        let seed = seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(i * 7919 + 1);
        tasks.push(tokio::spawn(worker(shared.clone(), seed, until)));
    }
    let warm = Instant::now() + warmup;
    while Instant::now() < warm && !shared.stopping.load(std::sync::atomic::Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100).min(warmup)).await;
    }
    let before = scrape(&shared).await?;
    let cpu_before = cpu_ticks(server_pid);
    shared
        .measuring
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let mut tally = Tally::default();
    for task in tasks {
        let t = task.await.map_err(|e| e.to_string())?;
        for (route, mut l) in t.latencies {
            tally.latencies.entry(route).or_default().append(&mut l);
        }
        for (route, n) in t.errors {
            *tally.errors.entry(route).or_default() += n;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = scrape(&shared).await?;

    let total: usize = tally.latencies.values().map(Vec::len).sum();
    let errors: u64 = tally.errors.values().sum();
    let http = delta(&after, &before, |k| {
        k.starts_with("http_server_request_duration_seconds_count") && !k.contains("/metrics")
    });
    let queries = delta(&after, &before, |k| {
        k.starts_with("db_client_operation_duration_seconds_count")
    });
    println!("### {label}\n");
    println!(
        "{total} requests in {elapsed:.1} s: **{:.0} req/s**, {errors} errors; Postgres queries per request **{:.2}** ({queries:.0} / {http:.0}).\n",
        total as f64 / elapsed,
        queries / http.max(1.0),
    );

    // Page hit rate per feed kind (cache_requests_total{operation="GET",feed_type=…}).
    let cache = |pred: &dyn Fn(&str) -> bool| {
        delta(&after, &before, |k| {
            k.starts_with("cache_requests_total") && pred(k)
        })
    };
    let mut kinds = Vec::new();
    for kind in ["global", "trending", "timeline", "recommended"] {
        let tag = format!("feed_type=\"{kind}\"");
        // `+ 0.0` turns a delta of -0.0 (no sample of that kind) into 0, not "-0".
        let hits = cache(&|k| k.contains(&tag) && k.contains("result=\"hit\"")) + 0.0;
        let misses = cache(&|k| k.contains(&tag) && k.contains("result=\"miss\"")) + 0.0;
        if hits + misses > 0.0 {
            kinds.push(format!(
                "{kind} {:.1} % ({hits:.0}/{:.0})",
                100.0 * hits / (hits + misses),
                hits + misses
            ));
        }
    }
    let hits = cache(&|k| k.contains("result=\"hit\""));
    let misses = cache(&|k| k.contains("result=\"miss\""));
    let feed_requests: usize = ["timeline", "global", "global_page2", "trending"]
        .iter()
        .map(|r| tally.latencies.get(r).map_or(0, Vec::len))
        .sum();
    if hits + misses == 0.0 {
        println!("Page hit rate: no page was asked of Redis (the feed cache is off).");
    } else if kinds.is_empty() {
        // A build whose counter has no feed_type: each feed read was a GET of the version
        // (a hit once any write happened) and a GET of the page; pages hit = hits - reads.
        let page_hits = hits - feed_requests as f64;
        println!(
            "Page hit rate (derived: GET hits minus one version hit per feed read): **{:.1} %** of {feed_requests} feed reads.",
            100.0 * page_hits / (feed_requests as f64).max(1.0)
        );
    } else {
        println!("Page hit rate per feed kind: {}.", kinds.join(", "));
    }
    if hits + misses > 0.0 {
        println!(
            "Dashboard ratio (all cache_requests_total hit / hit+miss): {:.1} %.",
            100.0 * hits / (hits + misses)
        );
    }
    if let (Some(before), Some(after)) = (cpu_before, cpu_ticks(server_pid)) {
        // Clock ticks are 1/100 s on Linux.
        let ms = (after - before) as f64 * 10.0;
        println!(
            "Server CPU (user + system): {:.1} s, **{:.2} ms per request**.",
            ms / 1000.0,
            ms / http.max(1.0)
        );
    }
    println!();
    println!(
        "| route | requests | errors | p50 ms | p99 ms |\n| --- | ---: | ---: | ---: | ---: |"
    );
    for (route, _) in &shared.mix {
        let Some(l) = tally.latencies.get_mut(route) else {
            continue;
        };
        l.sort_unstable();
        println!(
            "| {route} | {} | {} | {:.2} | {:.2} |",
            l.len(),
            tally.errors.get(route).copied().unwrap_or(0),
            percentile(l, 0.50),
            percentile(l, 0.99)
        );
    }
    println!();
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mixed_load: {e}");
            ExitCode::FAILURE
        }
    }
}
