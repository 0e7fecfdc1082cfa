//! The OpenAPI 3 document of every route, generated from the handlers' annotations.

use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{audio, auth, comments, feed, health, json, posts, search, users};
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
        json::AccountJson,
        json::AuthJson,
        json::ProfileJson,
        json::AuthorJson,
        json::PostJson,
        json::CommentJson,
        json::FeedJson,
        json::SearchJson,
        json::AudioJson,
        json::AudioUploadJson,
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

/// This document.
#[utoipa::path(get, path = "/api-docs/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json", body = Object)))]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
