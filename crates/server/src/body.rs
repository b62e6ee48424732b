//! Request bodies: read within a size limit and a time limit per endpoint, then parsed by
//! serde into the endpoint's derived wire type.
//!
//! [`JsonBody`] is the extractor for authenticated APIs (put the auth extractor before it:
//! extractors run in argument order and the body is only read once it is polled).
//! Webhooks read their body through [`crate::auth::VerifiedWebhook`], which authenticates
//! first and then uses [`read_body`] and [`parse_json`] from here.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use actix_web::body::{BodyLimitExceeded, BodyStream, to_bytes_limited};
use actix_web::dev::Payload;
use actix_web::error::PayloadError;
use actix_web::http::StatusCode;
use actix_web::http::header::ContentLength;
use actix_web::{FromRequest, HttpMessage, HttpRequest, mime, web};
use serde::de::DeserializeOwned;

use crate::errors::{ApiError, ErrorKind};
use crate::state::app_state;

pub use crate::config::{BodyLimits, DEFAULT_BODY_READ_TIMEOUT};

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("The body must be at most {limit} bytes")]
    TooLarge { limit: usize },
    #[error("The body did not arrive within {} s", .timeout.as_secs_f32())]
    TooSlow { timeout: Duration },
    #[error("{0}")]
    Read(#[source] PayloadError),
    #[error("Send the body as JSON with Content-Type: application/json")]
    NotJson,
    /// Not JSON at all (syntax, end of input).
    #[error("{0}")]
    Malformed(#[source] serde_json::Error),
    /// JSON of the wrong shape; the text names the field (`drivers[0].driverId: …`).
    #[error("{0}")]
    Invalid(String),
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        let (status, message) = match &e {
            BodyError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "Request body too large"),
            BodyError::TooSlow { .. } => (StatusCode::REQUEST_TIMEOUT, "Request timeout"),
            BodyError::Read(_) => (StatusCode::BAD_REQUEST, "Could not read the request body"),
            BodyError::NotJson => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported content type",
            ),
            BodyError::Malformed(_) => (StatusCode::BAD_REQUEST, "Malformed JSON"),
            BodyError::Invalid(_) => (StatusCode::BAD_REQUEST, "Invalid request body"),
        };
        Self::new(status, ErrorKind::Invalid, message, e.to_string())
    }
}

/// `application/json` or any `+json` type, with any parameters (charset).
pub fn is_json(req: &HttpRequest) -> bool {
    matches!(
        req.mime_type(),
        Ok(Some(mime)) if mime.subtype() == mime::JSON || mime.suffix() == Some(mime::JSON)
    )
}

/// JSON bodies only; 415 otherwise.
pub fn require_json(req: &HttpRequest) -> Result<(), ApiError> {
    if is_json(req) {
        Ok(())
    } else {
        Err(BodyError::NotJson.into())
    }
}

/// Reads the raw body (webhook signatures cover the exact bytes). More than `limit` bytes
/// is refused with 413 — before reading anything when `Content-Length` says so — and a body
/// that takes longer than `timeout` with 408.
pub async fn read_body(
    req: &HttpRequest,
    payload: Payload,
    limit: usize,
    timeout: Duration,
) -> Result<web::Bytes, BodyError> {
    if req
        .get_header::<ContentLength>()
        .is_some_and(|ContentLength(n)| n > limit)
    {
        return Err(BodyError::TooLarge { limit });
    }
    let read = to_bytes_limited(BodyStream::new(payload), limit);
    match tokio::time::timeout(timeout, read).await {
        Err(_elapsed) => Err(BodyError::TooSlow { timeout }),
        Ok(Err(BodyLimitExceeded { .. })) => Err(BodyError::TooLarge { limit }),
        Ok(Ok(Err(e))) => Err(BodyError::Read(e)),
        Ok(Ok(Ok(body))) => Ok(body),
    }
}

/// Deserializes a body into its wire type. The body must be a JSON object (serde would
/// also read a struct from an array); a wrong shape names the field that is wrong.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, BodyError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(BodyError::Malformed)?;
    if !value.is_object() {
        return Err(BodyError::Invalid("the body must be a JSON object".into()));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            BodyError::Invalid(inner.to_string())
        } else {
            BodyError::Invalid(format!("{path}: {inner}"))
        }
    })
}

/// A request body type with its endpoint's size limit.
pub trait JsonRequest: DeserializeOwned + 'static {
    fn limit(limits: &BodyLimits) -> usize;
}

/// A JSON body of type `T`: 415 unless JSON, 413 over `T::limit`, 408 when slower than
/// the body read timeout, 400 when malformed or of the wrong shape.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: JsonRequest> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let payload = payload.take();
        Box::pin(async move {
            let state = app_state(&req)?;
            require_json(&req)?;
            let limit = T::limit(&state.settings.body_limits);
            let body = read_body(&req, payload, limit, state.settings.body_read_timeout).await?;
            Ok(Self(parse_json(&body)?))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Outer {
        inner: Vec<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        id: i64,
    }

    #[test]
    fn a_wrong_shape_names_the_field() {
        let err =
            parse_json::<Outer>(br#"{"inner": [{"id": 1}, {"id": "x"}]}"#).expect_err("invalid");
        assert!(matches!(err, BodyError::Invalid(_)));
        assert!(
            err.to_string().starts_with("inner[1].id: invalid type"),
            "{err}"
        );
        let missing = parse_json::<Outer>(b"{}").expect_err("invalid");
        assert!(
            missing.to_string().starts_with("missing field `inner`"),
            "{missing}"
        );
    }

    #[test]
    fn broken_json_and_trailing_garbage_are_malformed() {
        for body in [&b"{\"inner\": ["[..], b"", b"{\"inner\": []} x"] {
            assert!(matches!(
                parse_json::<Outer>(body),
                Err(BodyError::Malformed(_))
            ));
        }
    }
}
