use std::future::Future;
use std::marker::PhantomData;
use std::ops::Deref;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest};
use calls_elevenlabs::signature::{self, DEFAULT_TOLERANCE_SECS, SIGNATURE_HEADER, SignatureError};
use serde::de::DeserializeOwned;
use time::OffsetDateTime;

use secrecy::ExposeSecret;

use super::{AuthError, bearer, constant_time_eq};
use crate::body::{BodyError, ReadBody, is_json, parse_json, read_body};
use crate::config::BodyLimits;
use crate::errors::ApiError;
use crate::state::app_state;

/// Which credentials a webhook accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookAuth {
    /// The `ElevenLabs-Signature` HMAC or `Authorization: Bearer <WEBHOOK_SECRET>`.
    SignatureOrBearer,
    /// The `ElevenLabs-Signature` HMAC only.
    SignatureOnly,
}

/// A webhook route: its credentials and its body limit.
pub trait WebhookEndpoint: 'static {
    const AUTH: WebhookAuth;
    fn limit(limits: &BodyLimits) -> usize;
}

/// `POST /webhooks/elevenlabs/transcription`, called by the ElevenLabs webhook tool.
pub struct TranscriptionHook;

impl WebhookEndpoint for TranscriptionHook {
    const AUTH: WebhookAuth = WebhookAuth::SignatureOrBearer;
    fn limit(limits: &BodyLimits) -> usize {
        limits.transcription
    }
}

/// `POST /webhooks/elevenlabs/post-call`, ElevenLabs' signed post-call webhook.
pub struct PostCallHook;

impl WebhookEndpoint for PostCallHook {
    const AUTH: WebhookAuth = WebhookAuth::SignatureOnly;
    fn limit(limits: &BodyLimits) -> usize {
        limits.post_call
    }
}

/// The raw body of a webhook request that passed `WEBHOOK_SECRET` (open in development
/// mode, without a secret).
///
/// Order of the checks: a bearer secret is compared before the body is read; a signature
/// header is checked for form and age (30 minutes either way) before the body is read,
/// then the body is read within `E`'s limit and the read timeout, then its HMAC is
/// verified. Without credentials nothing is read. Errors: 401, 413, 408.
pub struct VerifiedWebhook<E> {
    body: ReadBody,
    json: bool,
    endpoint: PhantomData<E>,
}

impl<E> VerifiedWebhook<E> {
    /// The body as `T`: 415 unless the request said JSON, 400 when malformed or of the
    /// wrong shape.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if !self.json {
            return Err(BodyError::NotJson.into());
        }
        Ok(parse_json(&self.body.bytes)?)
    }
}

impl<E> Deref for VerifiedWebhook<E> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.body.bytes
    }
}

fn rejected(e: SignatureError) -> AuthError {
    tracing::warn!(reason = %e, "webhook signature rejected");
    e.into()
}

async fn verify<E: WebhookEndpoint>(
    req: HttpRequest,
    payload: Payload,
) -> Result<VerifiedWebhook<E>, ApiError> {
    let state = app_state(&req)?;
    let settings = &state.settings;
    let limit = E::limit(&settings.body_limits);
    let timeout = settings.body_read_timeout;
    let verified = |body| VerifiedWebhook {
        body,
        json: is_json(&req),
        endpoint: PhantomData,
    };
    let Some(secret) = settings.webhook_secret.as_ref() else {
        return Ok(verified(
            read_body(&req, payload, limit, timeout, |_| {}).await?,
        ));
    };
    if let Some(header) = req.headers().get(SIGNATURE_HEADER) {
        let header = header.to_str().map_err(|_| AuthError::MalformedSignature)?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let mut verifier =
            signature::Verifier::new(secret.expose_secret(), header, now, DEFAULT_TOLERANCE_SECS)
                .map_err(rejected)?;
        let body = read_body(&req, payload, limit, timeout, |chunk| {
            verifier.update(chunk)
        })
        .await?;
        verifier.finish().map_err(rejected)?;
        return Ok(verified(body));
    }
    if E::AUTH == WebhookAuth::SignatureOrBearer {
        if let Some(provided) = bearer(&req) {
            if !constant_time_eq(provided, secret.expose_secret()) {
                return Err(AuthError::InvalidWebhookSecret.into());
            }
            return Ok(verified(
                read_body(&req, payload, limit, timeout, |_| {}).await?,
            ));
        }
    }
    Err(match E::AUTH {
        WebhookAuth::SignatureOrBearer => AuthError::MissingWebhookCredentials,
        WebhookAuth::SignatureOnly => AuthError::MissingSignature,
    }
    .into())
}

impl<E: WebhookEndpoint> FromRequest for VerifiedWebhook<E> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        Box::pin(verify::<E>(req.clone(), payload.take()))
    }
}
