//! The route table and helpers shared by handlers.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;

use crate::errors::ApiError;

pub mod batch_calls;
pub mod calls;
pub mod health;
pub mod metrics;
pub mod post_call_webhook;
pub mod transcription_webhook;

/// One route of the service. The router and the OpenAPI test both read [`routes`], so the
/// served routes and the documented ones cannot drift apart.
pub struct RouteSpec {
    pub method: &'static str,
    pub path: &'static str,
    make: fn() -> actix_web::Route,
}

pub fn routes() -> Vec<RouteSpec> {
    vec![
        RouteSpec {
            method: "POST",
            path: "/webhooks/elevenlabs/transcription",
            make: || web::post().to(transcription_webhook::receive),
        },
        RouteSpec {
            method: "POST",
            path: "/webhooks/elevenlabs/post-call",
            make: || web::post().to(post_call_webhook::receive),
        },
        RouteSpec {
            method: "POST",
            path: "/driver_data/call-elevenlabs",
            make: || web::post().to(batch_calls::place),
        },
        RouteSpec {
            method: "GET",
            path: "/calls",
            make: || web::get().to(calls::list_calls),
        },
        RouteSpec {
            method: "GET",
            path: "/calls/{call_sid}",
            make: || web::get().to(calls::get_call),
        },
        RouteSpec {
            method: "GET",
            path: "/calls/{call_sid}/transcriptions",
            make: || web::get().to(calls::get_transcriptions),
        },
        RouteSpec {
            method: "GET",
            path: "/healthz",
            make: || web::get().to(health::healthz),
        },
        RouteSpec {
            method: "GET",
            path: "/readyz",
            make: || web::get().to(health::readyz),
        },
        RouteSpec {
            method: "GET",
            path: "/metrics",
            make: || web::get().to(metrics::metrics),
        },
        RouteSpec {
            method: "GET",
            path: "/openapi.json",
            make: || web::get().to(crate::openapi::openapi_json),
        },
        RouteSpec {
            method: "GET",
            path: "/docs",
            make: || web::get().to(crate::openapi::docs_page),
        },
    ]
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    for route in routes() {
        cfg.service(
            web::resource(route.path)
                .route((route.make)())
                .default_service(web::to(method_not_allowed)),
        );
    }
}

pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found(
        "Not found",
        format!("No route for {} {}", req.method(), req.path()),
    ))
}

async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        actix_web::http::StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed",
        format!("{} is not supported on {}", req.method(), req.path()),
    ))
}

/// Reads the raw body (webhook signatures cover the exact bytes), refusing more than
/// `limit` bytes with 413 before reading them when the length is declared.
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::payload_too_large(limit));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::bad_request("Could not read the request body", e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::payload_too_large(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// JSON bodies only (`application/json`, any parameters such as charset).
pub fn require_json(req: &HttpRequest) -> Result<(), ApiError> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().eq_ignore_ascii_case("application/json"))
        .unwrap_or(false);
    if is_json {
        Ok(())
    } else {
        Err(ApiError::unsupported_media_type())
    }
}

/// Parses a JSON object, with a 400 that says what is wrong with it.
pub fn parse_json_object(
    body: &[u8],
) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request(
            "Invalid request body",
            "The body must be a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request("Malformed JSON", e.to_string())),
    }
}

/// A required, non-empty string field.
pub fn string_field<'a>(
    object: &'a serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<&'a str, ApiError> {
    match object.get(name) {
        None | Some(serde_json::Value::Null) => Err(ApiError::bad_request(
            format!("Invalid request: missing field '{name}'"),
            format!("'{name}' is required"),
        )),
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => Err(ApiError::bad_request(
            format!("Invalid request: field '{name}' must not be empty"),
            format!("'{name}' is empty"),
        )),
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(_) => Err(ApiError::bad_request(
            format!("Invalid request: field '{name}' must be a string"),
            format!("'{name}' has the wrong type"),
        )),
    }
}
