//! Authentication: bearer `API_TOKEN` for the APIs; `WEBHOOK_SECRET` for webhooks, as an
//! ElevenLabs HMAC signature or (transcription webhook only) a bearer token, because an
//! ElevenLabs webhook tool can only attach a static header. Comparisons are constant time.

use actix_web::HttpRequest;
use actix_web::http::header;
use calls_elevenlabs::signature::{self, SignatureError};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Secret;
use crate::errors::ApiError;

/// ElevenLabs rejects signatures older than 30 minutes; we also refuse ones from the future.
pub const SIGNATURE_TOLERANCE_SECS: i64 = 30 * 60;
pub const SIGNATURE_HEADER: &str = "ElevenLabs-Signature";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookAuth {
    /// The signature or the bearer secret.
    SignatureOrBearer,
    SignatureOnly,
}

fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Equality in time independent of where the inputs differ: both sides are MACed with a
/// fixed key and compared with `verify_slice`.
fn constant_time_eq(provided: &str, expected: &str) -> bool {
    let mac = |data: &str| {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(b"calls-server token comparison")
            .expect("HMAC takes keys of any length");
        m.update(data.as_bytes());
        m
    };
    let expected_tag = mac(expected).finalize().into_bytes();
    mac(provided).verify_slice(&expected_tag).is_ok()
}

/// `Authorization: Bearer <API_TOKEN>`. With no token configured (development mode) the
/// API is open.
pub fn require_api_token(req: &HttpRequest, token: Option<&Secret>) -> Result<(), ApiError> {
    let Some(token) = token else { return Ok(()) };
    match bearer(req) {
        Some(provided) if constant_time_eq(provided, token.expose()) => Ok(()),
        Some(_) => Err(ApiError::unauthorized("Invalid API token")),
        None => Err(ApiError::unauthorized(
            "Missing Authorization: Bearer <API_TOKEN> header",
        )),
    }
}

/// Checks a webhook before its body is parsed; `body` must be the raw bytes as received.
pub fn verify_webhook(
    req: &HttpRequest,
    body: &[u8],
    secret: Option<&Secret>,
    mode: WebhookAuth,
    now_unix: i64,
) -> Result<(), ApiError> {
    let Some(secret) = secret else { return Ok(()) };
    if let Some(header_value) = req.headers().get(SIGNATURE_HEADER) {
        let header_value = header_value
            .to_str()
            .map_err(|_| ApiError::unauthorized("Malformed ElevenLabs-Signature header"))?;
        return signature::verify(
            secret.expose(),
            header_value,
            body,
            now_unix,
            SIGNATURE_TOLERANCE_SECS,
        )
        .map_err(|e| {
            tracing::warn!(reason = %e, "webhook signature rejected");
            ApiError::unauthorized(match e {
                SignatureError::Stale | SignatureError::FutureSkewed => {
                    "Signature timestamp outside the 30-minute tolerance"
                }
                SignatureError::Mismatch => "Signature does not match the body",
                _ => "Malformed ElevenLabs-Signature header",
            })
        });
    }
    if mode == WebhookAuth::SignatureOrBearer {
        if let Some(provided) = bearer(req) {
            return if constant_time_eq(provided, secret.expose()) {
                Ok(())
            } else {
                Err(ApiError::unauthorized("Invalid webhook secret"))
            };
        }
    }
    Err(ApiError::unauthorized(match mode {
        WebhookAuth::SignatureOrBearer => {
            "Missing ElevenLabs-Signature header or Authorization: Bearer <WEBHOOK_SECRET>"
        }
        WebhookAuth::SignatureOnly => "Missing ElevenLabs-Signature header",
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_values() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("", "abc"));
        assert!(!constant_time_eq("abcd", "abc"));
    }
}
