//! Authentication as extractors, so a handler's signature says what it requires:
//!
//! - [`ApiToken`]: `Authorization: Bearer <API_TOKEN>` for the batch and reading APIs.
//! - [`VerifiedWebhook`]: a webhook body that passed `WEBHOOK_SECRET`, either as an
//!   ElevenLabs HMAC signature or (transcription webhook only) as a bearer token, because an
//!   ElevenLabs webhook tool can only attach a static header.
//!
//! Checks that need only headers run before any body byte is read, so unauthenticated
//! clients cannot make the server buffer bodies. Comparisons are constant time.

use actix_web::HttpRequest;
use actix_web::http::StatusCode;
use actix_web::http::header;
use calls_elevenlabs::signature::SignatureError;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::errors::{ApiError, ErrorKind};

mod api_token;
mod webhook;

pub use api_token::ApiToken;
pub use webhook::{PostCallHook, TranscriptionHook, VerifiedWebhook, WebhookAuth, WebhookEndpoint};

/// Why a request was refused with 401; the text is the envelope's `details`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("Missing Authorization: Bearer <API_TOKEN> header")]
    MissingApiToken,
    #[error("Invalid API token")]
    InvalidApiToken,
    #[error("Missing ElevenLabs-Signature header or Authorization: Bearer <WEBHOOK_SECRET>")]
    MissingWebhookCredentials,
    #[error("Missing ElevenLabs-Signature header")]
    MissingSignature,
    #[error("Invalid webhook secret")]
    InvalidWebhookSecret,
    #[error("Malformed ElevenLabs-Signature header")]
    MalformedSignature,
    #[error("Signature timestamp outside the 30-minute tolerance")]
    StaleSignature,
    #[error("Signature does not match the body")]
    SignatureMismatch,
}

impl From<SignatureError> for AuthError {
    fn from(e: SignatureError) -> Self {
        match e {
            SignatureError::Stale | SignatureError::FutureSkewed => Self::StaleSignature,
            SignatureError::Mismatch => Self::SignatureMismatch,
            SignatureError::Malformed | SignatureError::MissingTimestamp | SignatureError::NoV0 => {
                Self::MalformedSignature
            }
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorKind::Unauthenticated,
            "Unauthorized",
            e.to_string(),
        )
    }
}

/// The token of `Authorization: Bearer <token>`, if that header has that form.
fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Equality in time independent of where the inputs differ: both sides are MACed with a
/// fixed key and compared with `verify_slice`.
pub(crate) fn constant_time_eq(provided: &str, expected: &str) -> bool {
    let mac = |data: &str| {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(b"calls-server token comparison")
            .expect("HMAC takes keys of any length");
        m.update(data.as_bytes());
        m
    };
    let expected_tag = mac(expected).finalize().into_bytes();
    mac(provided).verify_slice(&expected_tag).is_ok()
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
