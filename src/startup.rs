//! `Application`: the pools, the clients, the HTTP server and the one route table.
//!
//! `build` binds the listener itself, so tests bind port 0 and read the real port back.

use std::net::TcpListener;
use std::time::Duration;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::http::{StatusCode, header};
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, HttpResponse, HttpServer, ResponseError, web};
use tracing_actix_web::TracingLogger;

use crate::audio::ffmpeg::Toolchain;
use crate::audio::jobs::UploadLimits;
use crate::audio::{AudioRunner, AudioService, AudioStorage};
use crate::cache::Cache;
use crate::cache::feed::FeedCache;
use crate::clients::http::TracedClient;
use crate::clients::recommender::RecommenderClient;
use crate::config::Settings;
use crate::db::{Db, DbStartupError};
use crate::errors::AppError;
use crate::maintenance::TokenPurge;
use crate::routes::body_idle::{BodyIdleTimeout, bound_body_idle};
use crate::routes::hashing::PasswordHashing;
use crate::routes::health::Draining;
use crate::routes::throttle::{LoginThrottle, RegisterThrottle};
use crate::routes::{self, AppState, BODY_LIMIT};
use crate::telemetry::logging;
use crate::telemetry::root_span::{SidechainRootSpan, traceresponse_header};
use crate::writes::FeedWrites;

/// Open connections one worker thread accepts before it stops accepting (actix-web's default is
/// 25,000; with one worker per core this bounds sockets and their buffers per process).
pub const MAX_CONNECTIONS_PER_WORKER: usize = 10_000;

/// How long an idle keep-alive connection stays open. Longer than the idle timeout of common
/// load balancers (60 s), so that the balancer, not the backend, closes idle connections and
/// never sends a request on one the backend is closing.
pub const KEEP_ALIVE: Duration = Duration::from_secs(75);

/// The time a client has to send a request's head (actix-web's default is 5 s).
pub const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The time a connection has to close after its last response.
pub const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Bound on outgoing calls that set no timeout of their own.
const HTTP_CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Start-up failed.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Database(#[from] DbStartupError),
    #[error("invalid REDIS_URL: {0}")]
    Redis(#[from] deadpool_redis::CreatePoolError),
    #[error("could not build the HTTP client: {0}")]
    HttpClient(#[from] reqwest::Error),
    #[error("could not listen on BIND_ADDR: {0}")]
    Bind(#[from] std::io::Error),
    #[error("could not start the password-hashing threads: {0}")]
    HashingThreads(std::io::Error),
    #[error(transparent)]
    AudioStorage(#[from] crate::audio::storage::OpenError),
}

/// The running service.
pub struct Application {
    port: u16,
    server: Server,
    audio_runner: AudioRunner,
    token_purge: TokenPurge,
    draining: Draining,
    drain: Duration,
}

impl Application {
    /// Connects to Postgres (creating and migrating the database), prepares Redis and the
    /// clients, binds the listener and starts serving.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let db = Db::connect(&settings.database).await?;
        let cache = Cache::new(&settings.redis)?;
        let http = TracedClient::new(HTTP_CLIENT_TIMEOUT)?;
        let recommender = settings
            .recommender
            .as_ref()
            .map(|r| RecommenderClient::new(http.clone(), r.base_url.clone(), r.timeout));
        let storage = AudioStorage::open(&settings.audio)?;
        let limits = UploadLimits {
            quota_bytes: settings.audio.quota_bytes,
            pending_per_user: settings.audio.pending_per_user,
        };
        let audio = AudioService::new(storage, settings.audio.max_bytes, limits);
        let tools = Toolchain::detect().await;
        if let Some(program) = tools.missing() {
            slog::warn!(logging::logger(),
                "audio processing unavailable: ffmpeg/ffprobe not found on PATH; uploads will end failed";
                "program" => program);
        }
        let feeds = FeedCache::new(cache.clone(), settings.feed_cache_ttl);
        let audio_runner = AudioRunner::start(&db, &feeds, &audio, &settings.audio, tools);
        let token_purge = TokenPurge::start(&db, settings.limits.token_purge_interval);
        let draining = Draining::default();
        let state = AppState {
            writes: FeedWrites::new(db.clone(), feeds.clone(), audio.storage.clone()),
            draining: draining.clone(),
            db,
            feeds,
            login_throttle: LoginThrottle::new(cache.clone(), settings.login_max_failures),
            register_throttle: RegisterThrottle::new(
                cache.clone(),
                settings.limits.register_max_per_hour,
            ),
            password_hashing: PasswordHashing::new(
                settings.limits.password_hash_concurrency,
                settings.limits.password_hash_wait,
            )
            .map_err(StartupError::HashingThreads)?,
            token_max_per_user: settings.limits.token_max_per_user,
            cache,
            recommender,
            http,
            token_ttl: settings.token_ttl,
            audio,
        };

        let listener = TcpListener::bind(settings.bind_addr)?;
        let address = listener.local_addr()?;
        let test_endpoint = settings.tracecontext_test_endpoint;
        let body_idle = BodyIdleTimeout(settings.limits.body_idle_timeout);
        let trusted_proxies = settings.trusted_proxies.clone();
        let state = web::Data::new(state);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(json_config())
                .app_data(query_config())
                .app_data(path_config())
                .app_data(web::PayloadConfig::new(BODY_LIMIT))
                .app_data(body_idle)
                .app_data(trusted_proxies.clone())
                // Inner first: `traceresponse` is added inside the root span, to the JSON 405 too.
                .wrap(from_fn(bound_body_idle))
                .wrap(from_fn(close_while_draining))
                .wrap(from_fn(json_method_not_allowed))
                .wrap(from_fn(traceresponse_header))
                .wrap(TracingLogger::<SidechainRootSpan>::new())
                .configure(|cfg| route_table(cfg, test_endpoint))
                .default_service(web::to(not_found))
        })
        .shutdown_timeout(settings.shutdown_timeout.as_secs())
        // Signals are ours (`run_until_stopped`): the drain comes before the listener closes.
        .disable_signals()
        // Bounds on what idle or slow clients hold (README, "Limits"): connections per worker,
        // an idle keep-alive connection, the time to send a request head, and the time to
        // close after the response. A stalled body is bounded by `bound_body_idle`.
        .max_connections(MAX_CONNECTIONS_PER_WORKER)
        .keep_alive(KEEP_ALIVE)
        .client_request_timeout(REQUEST_HEAD_TIMEOUT)
        .client_disconnect_timeout(DISCONNECT_TIMEOUT)
        .listen(listener)?
        .run();
        slog::info!(logging::logger(), "listening"; "address" => %address);
        Ok(Self {
            port: address.port(),
            server,
            audio_runner,
            token_purge,
            draining,
            drain: settings.shutdown_drain,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGTERM/SIGINT or a stop through the server handle; then stops the audio
    /// workers, which give their jobs back to the queue.
    ///
    /// On the first signal, `/ready` answers 503 at once (and responses close their
    /// connections) while everything is still served for `SHUTDOWN_DRAIN_S`, so that a load
    /// balancer notices and moves away before the listener closes; then the server stops
    /// accepting and finishes in-flight requests (at most `SHUTDOWN_TIMEOUT_S`). A second
    /// signal at any point until the process ends skips what is left: it exits at once.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let signals = tokio::spawn(on_signals(
            self.server.handle(),
            self.draining.clone(),
            self.drain,
        ));
        let served = self.server.await;
        self.token_purge.stop();
        self.audio_runner.stop().await;
        // The signal task stays alive until the runtime ends, to answer a second signal during
        // the telemetry flush that follows.
        drop(signals);
        served
    }

    /// A handle to stop the server from elsewhere (tests).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }
}

/// The signals of a stopping process (see [`Application::run_until_stopped`]).
async fn on_signals(server: actix_web::dev::ServerHandle, draining: Draining, drain: Duration) {
    let Ok(mut signals) = Signals::install() else {
        slog::error!(
            logging::logger(),
            "could not listen for SIGTERM/SIGINT; stop the process with SIGKILL"
        );
        return;
    };
    let first = signals.next().await;
    draining.start();
    slog::info!(logging::logger(), "shutting down: draining, /ready fails";
        "signal" => first, "drain_s" => drain.as_secs());
    tokio::select! {
        () = tokio::time::sleep(drain) => {}
        second = signals.next() => exit_now(second),
    }
    slog::info!(
        logging::logger(),
        "shutting down: no longer accepting, finishing in-flight requests"
    );
    // The command is sent now; completion is seen by `run_until_stopped`.
    drop(server.stop(true));
    exit_now(signals.next().await);
}

/// A second signal: whatever is left (requests, the job hand-back, the span flush) is skipped.
fn exit_now(signal: &'static str) -> ! {
    slog::warn!(logging::logger(), "second signal: exiting at once"; "signal" => signal);
    // 128 + the signal's number, as a shell reports a process ended by it.
    std::process::exit(if signal == "SIGINT" { 130 } else { 143 })
}

/// SIGTERM and SIGINT, whichever comes.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// While draining, every response closes its connection: a balancer (or client) then opens a
/// new one for its next request, which goes to a replica that is not stopping, instead of
/// reusing one that the listener's close would cut.
async fn close_while_draining(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, actix_web::Error> {
    let draining = req
        .app_data::<routes::State>()
        .is_some_and(|state| state.draining.is_draining());
    let mut response = next.call(req).await?;
    if draining {
        response
            .response_mut()
            .head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
    }
    Ok(response)
}

/// Every route of CONTRACT.md §2. Each resource answers other methods with a JSON 405 whose
/// `Allow` names the methods its routes serve; paths that match no resource are a JSON 404.
fn route_table(cfg: &mut web::ServiceConfig, tracecontext_test_endpoint: bool) {
    use routes::{audio, auth, comments, docs, feed, health, posts, search, users};

    cfg.service(resource("/health").route(web::get().to(health::health)))
        .service(resource("/ready").route(web::get().to(health::ready)))
        .service(resource("/metrics").route(web::get().to(health::metrics)))
        .service(resource("/api-docs/openapi.json").route(web::get().to(docs::openapi_json)))
        .service(
            web::scope("/api/v1")
                .service(resource("/auth/register").route(web::post().to(auth::register)))
                .service(resource("/auth/login").route(web::post().to(auth::login)))
                .service(resource("/auth/logout").route(web::post().to(auth::logout)))
                .service(resource("/users/{username}").route(web::get().to(users::profile)))
                .service(resource("/users/{username}/posts").route(web::get().to(users::posts_of)))
                .service(
                    resource("/users/{username}/follow")
                        .route(web::post().to(users::follow))
                        .route(web::delete().to(users::unfollow)),
                )
                .service(resource("/posts").route(web::post().to(posts::create)))
                .service(
                    resource("/posts/{id}")
                        .route(web::get().to(posts::get))
                        .route(web::delete().to(posts::delete)),
                )
                .service(
                    resource("/posts/{id}/audio")
                        .route(web::put().to(audio::upload))
                        .route(web::get().to(audio::download)),
                )
                .service(
                    resource("/posts/{id}/like")
                        .route(web::post().to(posts::like))
                        .route(web::delete().to(posts::unlike)),
                )
                .service(
                    resource("/posts/{id}/comments")
                        .route(web::post().to(comments::create))
                        .route(web::get().to(comments::list)),
                )
                .service(resource("/feed/unified").route(web::get().to(feed::unified)))
                .service(resource("/search").route(web::get().to(search::search)))
                .default_service(web::to(not_found)),
        );
    if tracecontext_test_endpoint {
        cfg.service(resource("/test").route(web::post().to(routes::tracecontext::run)));
    }
}

/// A resource whose unserved methods get actix-web's own 405, which carries `Allow` built from
/// the method guards of its routes (so `Allow` cannot disagree with the routes);
/// [`json_method_not_allowed`] gives it the JSON error body.
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path)
}

/// Turns actix-web's empty 405 (see [`resource`]) into the JSON error of every other failure,
/// keeping its `Allow` header.
async fn json_method_not_allowed(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody + 'static>>, actix_web::Error> {
    let response = next.call(req).await?;
    if response.status() != StatusCode::METHOD_NOT_ALLOWED || response.response().error().is_some()
    {
        return Ok(response.map_into_left_body());
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let (req, _) = response.into_parts();
    let mut json = AppError::MethodNotAllowed.error_response();
    if let Some(allow) = allow {
        json.headers_mut().insert(header::ALLOW, allow);
    }
    Ok(ServiceResponse::new(req, json).map_into_right_body())
}

async fn not_found() -> Result<HttpResponse, AppError> {
    Err(AppError::NotFound("route"))
}

fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(BODY_LIMIT)
        // Bodies must say they are JSON (`application/json` or `+json`); others are a 415.
        .error_handler(|err, _req| AppError::from(err).into())
}

/// A path segment that does not decode (bad percent-encoding, not UTF-8) names nothing: 404.
fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|_, _| AppError::NotFound("resource").into())
}

fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, _req| {
        AppError::bad_request(
            "invalid_query_string",
            format!("invalid query string: {err}"),
        )
        .into()
    })
}
