//! Registration, login, and the bearer-token extractor.

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use chrono::Utc;
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::State;
use super::throttle::{Account, Admission};
use super::views::{AccountJson, AuthJson};
use crate::client_address::{ClientAddress, TrustedProxies};
use crate::db::DbError;
use crate::db::models::NewUser;
use crate::db::queries::{tokens, users};
use crate::domain::credentials::{self, token_digest};
use crate::domain::{Email, Password, Username, rules};
use crate::errors::{AppError, ErrorBody};
use crate::telemetry::metrics::{self, Refusal};
use crate::telemetry::root_span;

/// A new account. The document's lengths, patterns and formats come from `domain::rules`
/// (`routes::docs`). Its `Debug` hides the password.
#[derive(Deserialize, ToSchema)]
pub struct RegisterRequest {
    /// 3–30 characters: ASCII letters, digits, `_`, `.` and `-`, starting with a letter or
    /// digit; unique regardless of case.
    pub username: String,
    /// An email address; unique regardless of case.
    pub email: String,
    /// 8–128 characters.
    pub password: String,
}

/// Its `Debug` hides the password.
#[derive(Deserialize, ToSchema)]
pub struct LoginRequest {
    /// Username or email.
    pub login: String,
    pub password: String,
}

/// Stands for a password in `Debug` output.
const REDACTED: &str = "[redacted]";

impl std::fmt::Debug for RegisterRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterRequest")
            .field("username", &self.username)
            .field("email", &self.email)
            .field("password", &REDACTED)
            .finish()
    }
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("login", &self.login)
            .field("password", &REDACTED)
            .finish()
    }
}

/// Creates an account and a first token.
#[utoipa::path(
    post,
    path = "/api/v1/auth/register",
    tag = "auth",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Registered", body = AuthJson),
        (status = 400, description = "Invalid username, email or password", body = ErrorBody),
        (status = 409, description = "Username or email taken", body = ErrorBody),
        (status = 429, description = "Too many registrations from this address within an hour \
            (`REGISTER_MAX_PER_HOUR`); try again after `Retry-After`", body = ErrorBody),
        (status = 503, description = "`busy`: no password-hashing slot freed up within \
            PASSWORD_HASH_WAIT_MS; try again after `Retry-After`", body = ErrorBody),
    )
)]
pub async fn register(
    req: HttpRequest,
    state: State,
    body: web::Json<RegisterRequest>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    let username = Username::parse(&body.username)?;
    let email = Email::parse(&body.email)?;
    let password = Password::parse(&body.password)?;

    let address = client_of(&req);
    if let Admission::Refused { retry_after_s } = state.register_throttle.admit(address).await {
        metrics::request_refused(Refusal::RegisterLimit);
        return Err(AppError::TooManyRequests {
            code: "too_many_registrations",
            message: "too many registrations from this address; try again after Retry-After seconds",
            retry_after_s,
        });
    }
    let hash = state
        .password_hashing
        .run(move || credentials::hash_password(&password))
        .await?
        .map_err(|e| AppError::internal("password hashing", e.to_string()))?;
    let token = credentials::new_token()
        .map_err(|e| AppError::internal("token generation", e.to_string()))?;
    let digest = token_digest(&token);
    let expires_at = Utc::now() + state.token_ttl;
    let keep = state.token_max_per_user;

    let user = state
        .db
        .run(move |conn| {
            conn.build_transaction().run(|conn| {
                let user = users::insert(
                    conn,
                    &NewUser {
                        id: Uuid::new_v4(),
                        username: username.as_str(),
                        email: email.as_str(),
                        password_hash: &hash,
                    },
                )?;
                tokens::insert(conn, &digest, user.id, expires_at, keep)?;
                Ok::<_, DbError>(user)
            })
        })
        .await?;
    Ok(HttpResponse::Created().json(AuthJson {
        user: AccountJson::from(user),
        token,
    }))
}

/// Exchanges a username (or email) and password for a new token. Failed logins are throttled
/// per account and per client address (`routes::throttle`); a user keeps at most
/// `TOKEN_MAX_PER_USER` live tokens, a new login revoking the oldest beyond it.
#[utoipa::path(
    post,
    path = "/api/v1/auth/login",
    tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = AuthJson),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 401, description = "Wrong credentials", body = ErrorBody),
        (status = 429, description = "Too many failed logins for this account or from this address \
            within 15 minutes (`LOGIN_MAX_FAILURES`); a correct password too is refused until \
            `Retry-After`", body = ErrorBody),
        (status = 503, description = "`busy`: no password-hashing slot freed up within \
            PASSWORD_HASH_WAIT_MS; try again after `Retry-After`", body = ErrorBody),
    )
)]
pub async fn login(
    req: HttpRequest,
    state: State,
    body: web::Json<LoginRequest>,
) -> Result<HttpResponse, AppError> {
    let LoginRequest { login, password } = body.into_inner();
    let invalid = || AppError::Unauthorized {
        code: "invalid_credentials",
        message: "wrong username, email or password",
    };
    // A login with a control character names nobody (and Postgres refuses NUL in text).
    if login.is_empty()
        || login.len() > rules::LOGIN_MAX
        || login.chars().any(char::is_control)
        || password.is_empty()
        || password.len() > rules::LOGIN_PASSWORD_MAX
    {
        return Err(invalid());
    }
    let lookup = login.clone();
    let user = state
        .db
        .run(move |conn| users::find_by_login(conn, &lookup))
        .await?;
    let address = client_of(&req);
    let account = match &user {
        Some(user) => Account::Known(user.id),
        None => Account::Unknown(&login),
    };
    // Counted as a failure before the verification (routes::throttle): a burst of guesses
    // verifies at most LOGIN_MAX_FAILURES of them.
    let admission = state.login_throttle.admit(&account, address).await;
    if let Admission::Refused { retry_after_s } = admission {
        metrics::request_refused(Refusal::LoginLimit);
        return Err(AppError::TooManyRequests {
            code: "too_many_requests",
            message: "too many failed logins; try again after Retry-After seconds",
            retry_after_s,
        });
    }
    // Unknown users cost one verification too, through the same slots: neither the answer's
    // timing nor a 503 tells them apart.
    let verified = state
        .password_hashing
        .run(move || match user {
            Some(user) if credentials::verify_password(&password, &user.password_hash) => Ok(user),
            Some(_) => Err(()),
            None => {
                credentials::verify_against_nothing(&password);
                Err(())
            }
        })
        .await;
    let verified = match verified {
        Ok(verified) => verified,
        Err(err) => {
            // Nothing was verified: the attempt was no failure.
            if admission == Admission::Admitted {
                state.login_throttle.give_back(&account, address).await;
            }
            return Err(err);
        }
    };
    let Ok(user) = verified else {
        return Err(invalid());
    };
    if admission == Admission::Admitted {
        state.login_throttle.give_back(&account, address).await;
    }

    let token = credentials::new_token()
        .map_err(|e| AppError::internal("token generation", e.to_string()))?;
    let digest = token_digest(&token);
    let expires_at = Utc::now() + state.token_ttl;
    let user_id = user.id;
    let keep = state.token_max_per_user;
    state
        .db
        .run(move |conn| {
            conn.build_transaction()
                .run(|conn| tokens::insert(conn, &digest, user_id, expires_at, keep))
        })
        .await?;
    Ok(HttpResponse::Ok().json(AuthJson {
        user: AccountJson::from(user),
        token,
    }))
}

/// Revokes the token of this request; it answers 401 from then on. Other tokens of the user
/// stay valid.
#[utoipa::path(
    post,
    path = "/api/v1/auth/logout",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Logged out: the token is revoked"),
        (status = 401, description = "No valid token", body = ErrorBody),
    )
)]
pub async fn logout(
    req: HttpRequest,
    state: State,
    _me: Authenticated,
) -> Result<HttpResponse, AppError> {
    let token = bearer_token(&req).ok_or_else(AppError::unauthorized)?;
    let digest = token_digest(token);
    state
        .db
        .run(move |conn| tokens::delete(conn, &digest))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The caller, proven by a valid `Authorization: Bearer <token>`; 401 otherwise. Extracting it
/// records `user.id` on the request's span and access line.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub id: Uuid,
    pub username: String,
}

impl Authenticated {
    /// Checks the request's bearer token.
    pub async fn from_http(req: &HttpRequest) -> Result<Self, AppError> {
        let token = bearer_token(req).ok_or_else(AppError::unauthorized)?;
        let state = req
            .app_data::<State>()
            .ok_or_else(|| AppError::internal("auth", "application state missing"))?;
        let digest = token_digest(token);
        let (id, username) = state
            .db
            .run(move |conn| tokens::user_for(conn, &digest))
            .await?
            .ok_or_else(AppError::unauthorized)?;
        root_span::record_user(req, id);
        Ok(Self { id, username })
    }
}

impl FromRequest for Authenticated {
    type Error = AppError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Self, AppError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move { Self::from_http(&req).await })
    }
}

/// The client of a request, `TRUSTED_PROXIES` applied (`client_address`).
fn client_of(req: &HttpRequest) -> Option<ClientAddress> {
    ClientAddress::of(req.head(), req.app_data::<TrustedProxies>())
}

/// The token of an `Authorization: Bearer …` header, if well-formed.
fn bearer_token(req: &HttpRequest) -> Option<&str> {
    let value = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token.len() <= 256)
        .then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_passwords() {
        let register = RegisterRequest {
            username: "alice".into(),
            email: "alice@example.com".into(),
            password: "hunter2-secret".into(),
        };
        let login = LoginRequest {
            login: "alice".into(),
            password: "hunter2-secret".into(),
        };
        for shown in [format!("{register:?}"), format!("{login:?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(
                shown.contains("[redacted]") && shown.contains("alice"),
                "{shown}"
            );
        }
    }
}
