//! The OpenAPI 3 document of every route, generated from the handlers' annotations and then
//! completed from the definitions the service itself runs on, so that the document states what
//! the service enforces and answers (CONTRACT.md §2) and cannot drift from it:
//!
//! - constraints from `domain::rules` (utoipa's schema attributes take literals only, so they
//!   are written here, from the same constants the parsers check);
//! - the answers every operation of a kind can give: 400/408/413/415 where a body is read
//!   (`JsonConfig` in `startup`), 503 where Postgres or Redis is used (`AppError::Unavailable`),
//!   each with the error schema;
//! - response headers: `traceresponse` on every response, `Retry-After` on 429 and 503.
//!
//! The document is built once and served as bytes.

use std::sync::LazyLock;

use actix_web::HttpResponse;
use serde_json::{Map, Value, json};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::BODY_LIMIT;
use super::{audio, auth, comments, feed, health, posts, search, users, views};
use crate::domain::FeedKind;
use crate::domain::rules::{self, IntRule, TextRule};
use crate::errors::{ErrorBody, ErrorDetail};

#[derive(OpenApi)]
#[openapi(
    info(title = "Sidechain API", description = "A social network for music producers."),
    paths(
        health::health,
        health::ready,
        health::metrics,
        openapi_json,
        auth::register,
        auth::login,
        auth::logout,
        users::profile,
        users::posts_of,
        users::follow,
        users::unfollow,
        posts::create,
        posts::get,
        posts::delete,
        posts::like,
        posts::unlike,
        audio::upload,
        audio::download,
        comments::create,
        comments::list,
        feed::unified,
        search::search,
    ),
    components(schemas(
        ErrorBody,
        ErrorDetail,
        views::AccountJson,
        views::AuthJson,
        views::ProfileJson,
        views::AuthorJson,
        views::PostJson,
        views::CommentJson,
        views::FeedJson,
        views::SearchJson,
        views::AudioJson,
        views::AudioUploadJson,
        crate::audio::AudioStatus,
        audio::AudioFile,
    )),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The complete document, as served.
pub fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    request_constraints(&mut doc);
    parameter_constraints(&mut doc);
    common_responses(&mut doc);
    doc
}

static DOCUMENT: LazyLock<Vec<u8>> =
    LazyLock::new(|| serde_json::to_vec(&document()).unwrap_or_default());

/// This document.
#[utoipa::path(get, path = "/api-docs/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json", body = Object)))]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(actix_web::http::header::ContentType::json())
        .body(DOCUMENT.as_slice())
}

/// `schema` as a JSON object, created if missing.
fn object(value: &mut Value) -> &mut Map<String, Value> {
    if !value.is_object() {
        *value = json!({});
    }
    value
        .as_object_mut()
        .unwrap_or_else(|| unreachable!("just made an object"))
}

fn text(schema: &mut Value, rule: TextRule) {
    let schema = object(schema);
    if rule.min_chars > 0 {
        schema.insert("minLength".into(), json!(rule.min_chars));
    }
    schema.insert("maxLength".into(), json!(rule.max_chars));
    schema.insert("pattern".into(), json!(rule.pattern()));
}

fn integer(schema: &mut Value, rule: IntRule) {
    let schema = object(schema);
    schema.insert("minimum".into(), json!(rule.min));
    schema.insert("maximum".into(), json!(rule.max));
}

fn username(schema: &mut Value) {
    let schema = object(schema);
    schema.insert("minLength".into(), json!(rules::USERNAME_MIN));
    schema.insert("maxLength".into(), json!(rules::USERNAME_MAX));
    schema.insert("pattern".into(), json!(rules::USERNAME_PATTERN));
}

/// The request bodies' schemas, from `domain::rules`.
fn request_constraints(doc: &mut Value) {
    let schemas = &mut doc["components"]["schemas"];

    let register = &mut schemas["RegisterRequest"]["properties"];
    username(&mut register["username"]);
    let email = object(&mut register["email"]);
    email.insert("format".into(), json!("email"));
    email.insert("maxLength".into(), json!(rules::EMAIL_MAX));
    let password = object(&mut register["password"]);
    password.insert("minLength".into(), json!(rules::PASSWORD_MIN));
    password.insert("maxLength".into(), json!(rules::PASSWORD_MAX));

    // Anything within these bounds is checked against the accounts (401 when wrong); the
    // bounds are bytes in the service, so a long non-ASCII value is a 401 too.
    let login = &mut schemas["LoginRequest"]["properties"];
    let name = object(&mut login["login"]);
    name.insert("minLength".into(), json!(1));
    name.insert("maxLength".into(), json!(rules::LOGIN_MAX));
    let password = object(&mut login["password"]);
    password.insert("minLength".into(), json!(1));
    password.insert("maxLength".into(), json!(rules::LOGIN_PASSWORD_MAX));

    let post = &mut schemas["CreatePostRequest"]["properties"];
    text(&mut post["title"], rules::TITLE);
    text(&mut post["description"], rules::DESCRIPTION);
    integer(&mut post["bpm"], rules::BPM);
    text(&mut post["musical_key"], rules::MUSICAL_KEY);
    text(&mut post["daw"], rules::DAW);
    text(&mut post["genre"], rules::GENRE);
    let tags = object(&mut post["tags"]);
    tags.insert("maxItems".into(), json!(rules::MAX_TAGS));
    text(tags.entry("items").or_insert_with(|| json!({})), rules::TAG);

    text(
        &mut schemas["CreateCommentRequest"]["properties"]["body"],
        rules::COMMENT_BODY,
    );
}

/// Every operation of the document with its path and method.
fn operations(doc: &mut Value) -> impl Iterator<Item = (String, String, &mut Value)> {
    doc["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|paths| paths.iter_mut())
        .flat_map(|(path, item)| {
            let path = path.clone();
            item.as_object_mut()
                .into_iter()
                .flat_map(|methods| methods.iter_mut())
                .map(move |(method, op)| (path.clone(), method.clone(), op))
        })
}

/// Query and path parameters: they are read as raw strings (so that a bad value gets the
/// service's own 400), which the annotations would otherwise document as any string.
fn parameter_constraints(doc: &mut Value) {
    for (path, _, op) in operations(doc) {
        let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) else {
            continue;
        };
        for param in params {
            let name = param["name"].as_str().unwrap_or_default().to_owned();
            let location = param["in"].as_str().unwrap_or_default().to_owned();
            match (location.as_str(), name.as_str()) {
                ("query", "limit") => {
                    param["schema"] = json!({
                        "type": "integer",
                        "minimum": rules::LIMIT.min,
                        "maximum": rules::LIMIT.max,
                        "default": rules::DEFAULT_LIMIT,
                    });
                }
                ("query", "cursor") => {
                    // One parameter serves the four feeds, whose orderings write different
                    // kinds of cursor; search has its own; the other listings are ordered by
                    // time.
                    let pattern = if path.starts_with("/api/v1/feed/") {
                        rules::CURSOR_ANY_PATTERN
                    } else if path == "/api/v1/search" {
                        rules::CURSOR_SEARCH_PATTERN
                    } else {
                        rules::CURSOR_TIME_PATTERN
                    };
                    param["schema"] = json!({
                        "type": "string",
                        "maxLength": rules::CURSOR_MAX_CHARS,
                        "pattern": pattern,
                    });
                }
                ("query", "q") => {
                    param["required"] = json!(true);
                    param["schema"] = json!({"type": "string"});
                    text(&mut param["schema"], rules::SEARCH_QUERY);
                }
                ("query", "type") => {
                    let kinds: Vec<&str> = FeedKind::ALL.iter().map(|k| k.as_str()).collect();
                    param["schema"] = json!({
                        "type": "string",
                        "enum": kinds,
                        "default": FeedKind::Global.as_str(),
                    });
                }
                ("path", "username") => username(&mut param["schema"]),
                _ => {}
            }
        }
    }
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    })
}

/// The routes that touch neither Postgres nor Redis, so never answer 503 (`/ready` reports an
/// outage in its own shape).
const NO_BACKING_SERVICE: [&str; 4] = ["/health", "/ready", "/metrics", "/api-docs/openapi.json"];

/// The answers of the error policy and of the framework configuration, on every operation they
/// apply to, and the response headers.
fn common_responses(doc: &mut Value) {
    for (path, _, op) in operations(doc) {
        let reads_json = op.get("requestBody").is_some();
        let responses = object(&mut op["responses"]);
        if reads_json {
            responses
                .entry("400")
                .or_insert_with(|| error_response("Malformed JSON body"));
            responses.entry("413").or_insert_with(|| {
                error_response(&format!("Request body over {} KiB", BODY_LIMIT / 1024))
            });
            responses.entry("415").or_insert_with(|| {
                error_response("Body without a JSON content type (`application/json` or `+json`)")
            });
            responses.entry("408").or_insert_with(|| {
                error_response(
                    "The body sent nothing for REQUEST_BODY_IDLE_TIMEOUT_S; the connection is closed",
                )
            });
        }
        if !NO_BACKING_SERVICE.contains(&path.as_str()) {
            responses.entry("503").or_insert_with(|| {
                error_response("Postgres or Redis, needed for this request, is unavailable")
            });
        }
        for (status, response) in responses.iter_mut() {
            let headers = object(
                object(response)
                    .entry("headers")
                    .or_insert_with(|| json!({})),
            );
            headers.insert(
                "traceresponse".into(),
                json!({
                    "description": "W3C trace context of this request's trace \
                        (`00-<trace id>-<span id>-<flags>`), when it is traced",
                    "schema": {"type": "string", "pattern": "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"},
                }),
            );
            let retry_after = status == "429" || (status == "503" && path != "/ready");
            if retry_after {
                headers.insert(
                    "Retry-After".into(),
                    json!({
                        "description": "Seconds to wait before trying again",
                        "required": true,
                        "schema": {"type": "integer", "minimum": 1},
                    }),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        CommentBody, Cursor, Limit, Password, PostDraft, SearchQuery, SearchStrategy, Tags,
        Username,
    };

    /// A JSON Schema validator of `schema`'s string keywords.
    fn string_validator(schema: &Value) -> impl Fn(&str) -> bool {
        let min = schema["minLength"].as_u64();
        let max = schema["maxLength"].as_u64();
        let pattern = schema["pattern"]
            .as_str()
            .map(|p| regex::Regex::new(p).unwrap_or_else(|e| panic!("{p}: {e}")));
        move |s: &str| {
            let chars = s.chars().count() as u64;
            min.is_none_or(|min| chars >= min)
                && max.is_none_or(|max| chars <= max)
                && pattern.as_ref().is_none_or(|p| p.is_match(s))
        }
    }

    fn schema_accepts(schema: &Value, s: &str) -> bool {
        string_validator(schema)(s)
    }

    /// Every string of up to three characters over an alphabet of the characters the rules
    /// treat differently (letters, every kind of whitespace, controls, what trimming keeps),
    /// and strings at the length bounds of `max`.
    fn samples(max: usize) -> Vec<String> {
        let alphabet = [
            'a', 'Z', '9', '_', '.', '-', '@', 'é', ' ', '\t', '\n', '\r', '\u{0B}', '\u{0C}',
            '\u{85}', '\u{A0}', '\u{2003}', '\u{3000}', '\u{FEFF}', '\0', '\u{01}', '\u{1C}',
            '\u{7F}', '\u{9F}',
        ];
        let mut out = vec![String::new()];
        let mut frontier = vec![String::new()];
        for _ in 0..3 {
            frontier = frontier
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            out.extend(frontier.iter().cloned());
        }
        for n in [max.saturating_sub(1), max, max + 1] {
            let body = "é".repeat(n);
            out.push(body.clone());
            out.push(format!(" {body}"));
            out.push(format!("{body}\n"));
            out.push(format!("a{}", " ".repeat(n.saturating_sub(1))));
        }
        out
    }

    fn assert_same(what: &str, schema: &Value, max: usize, parses: impl Fn(&str) -> bool) {
        assert!(schema.is_object(), "{what}: no schema");
        let accepts = string_validator(schema);
        for s in samples(max) {
            assert_eq!(
                accepts(&s),
                parses(&s),
                "{what}: the document and the validation disagree on {s:?}"
            );
        }
    }

    #[test]
    fn the_documents_text_constraints_are_the_validations() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let post = &schemas["CreatePostRequest"]["properties"];
        let field =
            |title: &str, d: Option<&str>, k: Option<&str>, w: Option<&str>, g: Option<&str>| {
                PostDraft::parse(title, d, None, k, w, g, None).is_ok()
            };
        assert_same("title", &post["title"], 200, |s| {
            field(s, None, None, None, None)
        });
        assert_same("description", &post["description"], 5000, |s| {
            field("x", Some(s), None, None, None)
        });
        assert_same("musical_key", &post["musical_key"], 32, |s| {
            field("x", None, Some(s), None, None)
        });
        assert_same("daw", &post["daw"], 64, |s| {
            field("x", None, None, Some(s), None)
        });
        assert_same("genre", &post["genre"], 64, |s| {
            field("x", None, None, None, Some(s))
        });
        assert_same("a tag", &post["tags"]["items"], 32, |s| {
            Tags::parse(&[s.to_owned()]).is_ok()
        });
        let body = &schemas["CreateCommentRequest"]["properties"]["body"];
        assert_same("comment body", body, 2000, |s| {
            CommentBody::parse(s).is_ok()
        });

        let register = &schemas["RegisterRequest"]["properties"];
        assert_same("username", &register["username"], 30, |s| {
            Username::parse(s).is_ok()
        });
        assert_same("password", &register["password"], 128, |s| {
            Password::parse(s).is_ok()
        });

        let search = &doc["paths"]["/api/v1/search"]["get"]["parameters"];
        let q = search
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "q")
            .unwrap();
        assert_eq!(q["required"], true);
        assert_same("q", &q["schema"], 100, |s| {
            SearchQuery::parse(Some(s)).is_ok()
        });
        let user = &doc["paths"]["/api/v1/users/{username}"]["get"]["parameters"][0];
        assert_same("username in a path", &user["schema"], 30, |s| {
            Username::parse(s).is_ok()
        });
    }

    #[test]
    fn the_documents_numbers_lists_and_enums_are_the_validations() {
        let doc = document();
        let post = &doc["components"]["schemas"]["CreatePostRequest"]["properties"];
        for bpm in -2..=1002 {
            let in_schema = (post["bpm"]["minimum"].as_i64().unwrap()
                ..=post["bpm"]["maximum"].as_i64().unwrap())
                .contains(&bpm);
            let parses = PostDraft::parse("x", None, Some(bpm), None, None, None, None).is_ok();
            assert_eq!(in_schema, parses, "bpm {bpm}");
        }
        let max_tags = post["tags"]["maxItems"].as_u64().unwrap() as usize;
        for n in 0..=max_tags + 2 {
            let tags: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
            assert_eq!(n <= max_tags, Tags::parse(&tags).is_ok(), "{n} tags");
        }

        for (path, op) in [
            ("/api/v1/feed/unified", "get"),
            ("/api/v1/search", "get"),
            ("/api/v1/posts/{id}/comments", "get"),
            ("/api/v1/users/{username}/posts", "get"),
        ] {
            let params = doc["paths"][path][op]["parameters"].as_array().unwrap();
            let limit = &params.iter().find(|p| p["name"] == "limit").unwrap()["schema"];
            assert_eq!(limit["type"], "integer", "{path}");
            assert_eq!(limit["default"], u64::from(Limit::DEFAULT.get()), "{path}");
            for n in -2..=102i64 {
                let in_schema = (limit["minimum"].as_i64().unwrap()
                    ..=limit["maximum"].as_i64().unwrap())
                    .contains(&n);
                assert_eq!(
                    in_schema,
                    Limit::parse(Some(&n.to_string())).is_ok(),
                    "{path} {n}"
                );
            }
            // Not integers, whatever `str::parse` thinks.
            for s in ["", "+5", " 5", "5 ", "1.5", "1e1", "abc"] {
                assert!(Limit::parse(Some(s)).is_err(), "{s:?}");
            }
        }

        let feed = doc["paths"]["/api/v1/feed/unified"]["get"]["parameters"]
            .as_array()
            .unwrap();
        let kinds = &feed.iter().find(|p| p["name"] == "type").unwrap()["schema"]["enum"];
        let kinds: Vec<&str> = kinds
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        for kind in &kinds {
            assert!(kind.parse::<FeedKind>().is_ok(), "{kind}");
        }
        for other in ["", "Global", "home", "timeline "] {
            assert!(!kinds.contains(&other) && other.parse::<FeedKind>().is_err());
        }
    }

    #[test]
    fn the_documents_cursors_are_the_ones_that_decode() {
        let doc = document();
        let cursor_schema = |path: &str| {
            doc["paths"][path]["get"]["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == "cursor")
                .unwrap()["schema"]
                .clone()
        };
        let any = cursor_schema("/api/v1/feed/unified");
        let time = cursor_schema("/api/v1/posts/{id}/comments");
        let search = cursor_schema("/api/v1/search");
        assert_eq!(time, cursor_schema("/api/v1/users/{username}/posts"));

        let at = chrono::DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let early = chrono::DateTime::from_timestamp_micros(-86_400_000_000).unwrap();
        let id = uuid::Uuid::new_v4();
        let real = [
            Cursor::Time { at, id },
            Cursor::Time { at: early, id },
            Cursor::Likes { likes: 0, at, id },
            Cursor::Likes {
                likes: 123_456,
                at: early,
                id,
            },
            Cursor::Offset(0),
            Cursor::Offset(u32::MAX / 10),
            Cursor::Search {
                strategy: SearchStrategy::FullText,
                query: 0,
                score_bits: 0,
                id,
            },
            Cursor::Search {
                strategy: SearchStrategy::Trigram,
                query: u32::MAX,
                score_bits: f64::NAN.to_bits(),
                id,
            },
        ];
        let mut candidates: Vec<String> = real.iter().map(Cursor::encode).collect();
        for c in real.iter().map(Cursor::encode) {
            candidates.push(c.to_uppercase());
            candidates.push(format!("{c}0"));
            candidates.push(format!(" {c}"));
            candidates.push(c.replacen('.', ".+", 1));
            candidates.push(c.replacen('.', ".-", 1));
            candidates.push(c[..c.len() - 1].to_owned());
        }
        candidates.extend(["", "t", "o.", "o.1234567890", "x.1", "t.1.2"].map(String::from));
        for c in &candidates {
            let decoded = Cursor::decode(c);
            assert_eq!(schema_accepts(&any, c), decoded.is_ok(), "{c:?}");
            let is_time = matches!(decoded, Ok(Cursor::Time { .. }));
            assert_eq!(schema_accepts(&time, c), is_time, "{c:?}");
            let is_search = matches!(decoded, Ok(Cursor::Search { .. }));
            assert_eq!(schema_accepts(&search, c), is_search, "{c:?}");
        }
    }

    #[test]
    fn every_operation_documents_its_headers_and_error_answers() {
        let mut doc = document();
        let mut count = 0;
        for (path, method, op) in operations(&mut doc) {
            count += 1;
            let responses = op["responses"].as_object().unwrap();
            for (status, response) in responses {
                assert!(
                    response["headers"]["traceresponse"].is_object(),
                    "{method} {path} {status}"
                );
                if status.starts_with('4') || (status == "503" && path != "/ready") {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
            }
            if op.get("requestBody").is_some() {
                for status in ["400", "408", "413", "415"] {
                    assert!(responses.contains_key(status), "{method} {path} {status}");
                }
            }
            if op
                .get("security")
                .is_some_and(|s| s.to_string().contains("bearer"))
            {
                assert!(responses.contains_key("401"), "{method} {path}");
            }
        }
        assert!(count >= 20, "{count} operations");
        assert!(
            doc["paths"]["/api/v1/auth/login"]["post"]["responses"]["429"]["headers"]
                ["Retry-After"]["required"]
                .as_bool()
                .unwrap()
        );
        // The limits' answers (CONTRACT.md §1 "Limits").
        let answers = |path: &str, method: &str, status: &str| {
            doc["paths"][path][method]["responses"][status]["description"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path} {status}"))
                .to_owned()
        };
        for (path, method) in [
            ("/api/v1/auth/register", "post"),
            ("/api/v1/auth/login", "post"),
        ] {
            assert!(answers(path, method, "503").contains("`busy`"));
            assert!(answers(path, method, "429").contains("Retry-After"));
        }
        let audio = "/api/v1/posts/{id}/audio";
        assert!(answers(audio, "put", "413").contains("audio_quota_exceeded"));
        assert!(answers(audio, "put", "429").contains("audio_pending_limit"));
        assert!(answers(audio, "put", "408").contains("partial upload is removed"));
    }
}
