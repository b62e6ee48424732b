//! The OpenAPI 3 document, generated from the handlers' `#[utoipa::path]` annotations and
//! the wire types themselves (the types that parse a request also document it), served at
//! `/openapi.json`, and an offline docs page at `/docs`.

use actix_web::HttpResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::openapi::ErrorBody;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("Authorization: Bearer <API_TOKEN>"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "webhook_bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("Authorization: Bearer <WEBHOOK_SECRET> (the ElevenLabs webhook tool's static header)"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "elevenlabs_signature",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "ElevenLabs-Signature",
                "t=<unix seconds>,v0=<hex HMAC-SHA256(WEBHOOK_SECRET, \"<t>.<raw body>\")>; rejected when t is more than 30 minutes from now",
            ))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "calls-server",
        description = "AI voice calls to truck drivers about trip violations: place calls through ElevenLabs, store every dialogue turn keyed by our call_sid.",
    ),
    paths(
        super::transcription_webhook::receive,
        super::post_call_webhook::receive,
        super::batch_calls::place,
        super::calls::list_calls,
        super::calls::get_call,
        super::calls::get_transcriptions,
        super::health::healthz,
        super::health::readyz,
        super::metrics::metrics,
        openapi_json,
        docs_page,
    ),
    components(schemas(
        ErrorBody,
        super::transcription_webhook::TranscriptionRequest,
        super::batch_calls::BatchCallRequest,
        super::batch_calls::BatchCallResponse,
        calls_elevenlabs::PostCallEnvelope,
        super::post_call_webhook::Ack,
    )),
    modifiers(&Security),
    tags(
        (name = "webhooks", description = "Called by ElevenLabs"),
        (name = "calls", description = "Placing and reading calls"),
        (name = "operations", description = "Health, readiness, metrics, documentation"),
    )
)]
pub struct ApiDoc;

/// The OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This OpenAPI 3 document", content_type = "application/json")))]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}

const DOCS_HTML: &str = include_str!("docs.html");

/// A human-readable page for the OpenAPI document, self-contained (no CDN), with a form to
/// try every endpoint.
#[utoipa::path(get, path = "/docs", tag = "operations",
    responses((status = 200, description = "HTML documentation page", content_type = "text/html")))]
pub async fn docs_page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(DOCS_HTML)
}

/// Used by tests: `(METHOD, path)` of every documented operation.
pub fn documented_operations() -> Vec<(String, String)> {
    let doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let mut ops = Vec::new();
    if let Some(paths) = doc.get("paths").and_then(|p| p.as_object()) {
        for (path, item) in paths {
            if let Some(item) = item.as_object() {
                for method in item.keys() {
                    ops.push((method.to_uppercase(), path.clone()));
                }
            }
        }
    }
    ops.sort();
    ops
}
