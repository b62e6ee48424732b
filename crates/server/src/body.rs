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

use actix_web::dev::Payload;
use actix_web::error::PayloadError;
use actix_web::http::StatusCode;
use actix_web::http::header::ContentLength;
use actix_web::{FromRequest, HttpMessage, HttpRequest, mime, web};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use crate::errors::{ApiError, ErrorKind};
use crate::limits::{BodyPermit, Limits};
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

/// A request body read into memory, with its bytes held against the instance's body budget
/// until it is dropped.
pub struct ReadBody {
    pub bytes: web::Bytes,
    _permit: BodyPermit,
}

/// Reads the raw body (webhook signatures cover the exact bytes), passing each piece to
/// `on_chunk` as it arrives (the streaming HMAC). More than `limit` bytes is refused with
/// 413 — before reading anything when `Content-Length` says so — a body that takes longer
/// than `timeout` with 408, and one for which the instance's body budget has no room
/// (after a short wait) with 503: what clients make the server buffer is bounded by the
/// budget, not by the number of connections (docs/operations.md, "Limits").
pub async fn read_body(
    req: &HttpRequest,
    mut payload: Payload,
    limit: usize,
    timeout: Duration,
    mut on_chunk: impl FnMut(&[u8]),
) -> Result<ReadBody, ApiError> {
    let declared = req.get_header::<ContentLength>().map(|ContentLength(n)| n);
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge { limit }.into());
    }
    let limits = req
        .app_data::<web::Data<Limits>>()
        .cloned()
        .ok_or_else(|| ApiError::internal(&std::io::Error::other("limits not registered")))?;
    let read = async {
        // A declared length is reserved at once, so a request that cannot fit waits or is
        // refused before its bytes arrive.
        let mut permit = match declared {
            Some(n) if n > 0 => limits.reserve_body(n).await?,
            _ => BodyPermit::default(),
        };
        let mut buf = web::BytesMut::with_capacity(declared.unwrap_or(0));
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(BodyError::Read)?;
            let len = buf.len() + chunk.len();
            if len > limit {
                return Err(BodyError::TooLarge { limit }.into());
            }
            if len > permit.bytes() {
                permit.merge(limits.reserve_body(len - permit.bytes()).await?);
            }
            on_chunk(&chunk);
            buf.extend_from_slice(&chunk);
        }
        Ok::<_, ApiError>(ReadBody {
            bytes: buf.freeze(),
            _permit: permit,
        })
    };
    match tokio::time::timeout(timeout, read).await {
        Err(_elapsed) => Err(BodyError::TooSlow { timeout }.into()),
        Ok(result) => result,
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
            let body = read_body(
                &req,
                payload,
                limit,
                state.settings.body_read_timeout,
                |_| {},
            )
            .await?;
            Ok(Self(parse_json(&body.bytes)?))
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
