//! The real telephony adapter: ElevenLabs Conversational AI dialing through its native
//! Twilio integration (`POST /v1/convai/twilio/outbound-call`), and its conversation API
//! (`GET /v1/convai/conversations/{conversation_id}`) for the stale-call repair.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use calls_domain::ConversationId;
use calls_domain::models::mask_phone_numbers;
use calls_domain::ports::{ConversationState, OutboundCall, PlacedCall, Telephony, TelephonyError};
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};

use crate::conversation::parse_conversation;
use crate::wire::{OutboundCallRequest, OutboundCallResponse, error_detail};

/// ElevenLabs' public API (US/global). Residency deployments use other hosts.
pub const DEFAULT_BASE_URL: &str = "https://api.elevenlabs.io";

const OUTBOUND_CALL_PATH: &str = "/v1/convai/twilio/outbound-call";
/// Followed by the conversation_id as one path segment.
const CONVERSATIONS_PATH: &str = "/v1/convai/conversations";

/// Details from the provider end up in a Call's failure reason and in logs; keep them short.
pub(crate) const MAX_DETAIL_CHARS: usize = 300;

/// A slow TCP/TLS handshake is told apart from a slow answer: the former proves the request
/// never reached ElevenLabs (`Unreachable`), the latter may have dialed (`Timeout`).
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct ElevenLabsConfig {
    /// e.g. [`DEFAULT_BASE_URL`]; a trailing `/` is ignored.
    pub base_url: String,
    pub api_key: SecretString,
    pub agent_id: String,
    /// The id ElevenLabs gave the imported Twilio number the agent calls from.
    pub agent_phone_number_id: String,
    /// Whole request (connect, send, answer). Never retried after it expires.
    pub timeout: Duration,
}

/// Why an adapter could not be built. Never contains the API key.
#[derive(Debug, thiserror::Error)]
pub enum ElevenLabsBuildError {
    #[error("ElevenLabs setting `{0}` must not be empty")]
    Missing(&'static str),
    #[error("ElevenLabs base URL is not a valid http(s) URL: {0}")]
    InvalidBaseUrl(String),
    #[error("ElevenLabs API key contains characters that are not allowed in an HTTP header")]
    InvalidApiKey,
    #[error("ElevenLabs timeout must be greater than zero")]
    ZeroTimeout,
    #[error("could not build the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// [`Telephony`] backed by ElevenLabs. Cheap to share behind an `Arc`; holds one
/// connection-pooling HTTP client.
#[derive(Debug)]
pub struct ElevenLabsTelephony {
    client: reqwest::Client,
    endpoint: Url,
    conversations: Url,
    api_key: HeaderValue,
    config: ElevenLabsConfig,
}

impl ElevenLabsTelephony {
    pub fn new(config: ElevenLabsConfig) -> Result<Self, ElevenLabsBuildError> {
        for (name, value) in [
            ("base_url", config.base_url.as_str()),
            ("api_key", config.api_key.expose_secret()),
            ("agent_id", config.agent_id.as_str()),
            (
                "agent_phone_number_id",
                config.agent_phone_number_id.as_str(),
            ),
        ] {
            if value.trim().is_empty() {
                return Err(ElevenLabsBuildError::Missing(name));
            }
        }
        if config.timeout.is_zero() {
            return Err(ElevenLabsBuildError::ZeroTimeout);
        }
        let endpoint = endpoint_url(&config.base_url)?;
        let conversations = api_url(&config.base_url, CONVERSATIONS_PATH)?;
        let mut api_key = HeaderValue::from_str(config.api_key.expose_secret())
            .map_err(|_| ElevenLabsBuildError::InvalidApiKey)?;
        // Keeps the value out of reqwest's and hyper's own Debug output.
        api_key.set_sensitive(true);

        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(MAX_CONNECT_TIMEOUT))
            // A redirect would re-send `xi-api-key` to wherever it points (reqwest strips
            // only well-known auth headers), and a 307 would POST, i.e. dial, again.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(ElevenLabsBuildError::Client)?;

        Ok(Self {
            client,
            endpoint,
            conversations,
            api_key,
            config,
        })
    }

    /// Sends the one request and classifies the answer. Returns the HTTP status, if any,
    /// for the log line.
    async fn send(&self, call: &OutboundCall) -> (Option<u16>, Result<PlacedCall, TelephonyError>) {
        let request = OutboundCallRequest::new(
            &self.config.agent_id,
            &self.config.agent_phone_number_id,
            call.to_number.as_str(),
            &call.dynamic_variables,
            &call.prompt,
        );
        let body = match serde_json::to_vec(&request) {
            Ok(body) => body,
            Err(e) => {
                let error = TelephonyError::Unexpected(format!("could not encode request: {e}"));
                return (None, Err(error));
            }
        };

        // Exactly one attempt: ElevenLabs has no idempotency key, so any retry of a request
        // that may have arrived can phone the driver twice.
        let response = self
            .client
            .post(self.endpoint.clone())
            .header("xi-api-key", self.api_key.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body)
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(e) => return (None, Err(self.transport_error(e, call))),
        };
        let status = response.status();
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(e) => return (Some(status.as_u16()), Err(self.transport_error(e, call))),
        };
        (Some(status.as_u16()), self.classify(status, &bytes, call))
    }

    fn classify(
        &self,
        status: StatusCode,
        body: &[u8],
        call: &OutboundCall,
    ) -> Result<PlacedCall, TelephonyError> {
        let code = status.as_u16();
        if status.is_success() {
            return self.classify_success(code, body, call);
        }
        match code {
            401 | 403 => Err(TelephonyError::Unauthorized { status: code }),
            429 => Err(TelephonyError::RateLimited {
                detail: self.clean(&error_detail(body), call),
            }),
            400..=499 => Err(TelephonyError::Rejected {
                status: code,
                detail: self.clean(&error_detail(body), call),
            }),
            500..=599 => Err(TelephonyError::ServerError { status: code }),
            // 1xx/3xx: redirects are not followed (see `new`), so this is a misconfigured
            // base URL or a proxy in the way.
            _ => Err(TelephonyError::Unexpected(format!(
                "unexpected HTTP status {code}"
            ))),
        }
    }

    fn classify_success(
        &self,
        code: u16,
        body: &[u8],
        call: &OutboundCall,
    ) -> Result<PlacedCall, TelephonyError> {
        let answer: OutboundCallResponse = serde_json::from_slice(body).map_err(|e| {
            TelephonyError::Unexpected(self.clean(
                &format!("undecodable response body (HTTP {code}): {e}"),
                call,
            ))
        })?;
        if !answer.success {
            let message = answer
                .message
                .filter(|m| !m.trim().is_empty())
                .unwrap_or_else(|| "no message given".to_owned());
            return Err(TelephonyError::NotPlaced {
                message: self.clean(&message, call),
            });
        }
        let Some(raw_id) = answer.conversation_id.filter(|id| !id.is_empty()) else {
            return Err(TelephonyError::MissingConversationId);
        };
        let conversation_id = ConversationId::parse(raw_id).map_err(|e| {
            // The driver may well be ringing; without a usable id the post-call webhook
            // (matched by our call_sid) is what can still reconcile the Call.
            tracing::warn!(error = %e, "ElevenLabs returned an unusable conversation_id");
            TelephonyError::MissingConversationId
        })?;
        Ok(PlacedCall {
            conversation_id,
            provider_call_id: answer.call_sid.filter(|sid| !sid.trim().is_empty()),
        })
    }

    /// `GET /v1/convai/conversations/{id}`, once (the next reconciliation pass asks again).
    async fn get_conversation(
        &self,
        conversation_id: &ConversationId,
    ) -> (Option<u16>, Result<ConversationState, TelephonyError>) {
        let mut url = self.conversations.clone();
        // Pushed as a segment, so the id is percent-encoded and cannot change the path.
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.push(conversation_id.as_str());
        }
        let response = self
            .client
            .get(url)
            .header("xi-api-key", self.api_key.clone())
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(e) => return (None, Err(self.read_transport_error(e))),
        };
        let status = response.status();
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(e) => return (Some(status.as_u16()), Err(self.read_transport_error(e))),
        };
        (
            Some(status.as_u16()),
            self.classify_conversation(status, &bytes, conversation_id),
        )
    }

    fn classify_conversation(
        &self,
        status: StatusCode,
        body: &[u8],
        conversation_id: &ConversationId,
    ) -> Result<ConversationState, TelephonyError> {
        let code = status.as_u16();
        if status.is_success() {
            let answer = parse_conversation(body, conversation_id).map_err(|e| {
                TelephonyError::Unexpected(
                    self.redact(&format!("unreadable conversation (HTTP {code}): {e}")),
                )
            })?;
            return Ok(match answer.status.as_deref() {
                Some("done") => ConversationState::Done(Box::new(answer.report)),
                Some("failed") => ConversationState::Failed {
                    reason: answer
                        .failure_reason
                        .map(|r| self.redact(&r))
                        .unwrap_or_else(|| "conversation failed".to_owned()),
                },
                other => ConversationState::Pending {
                    status: other.unwrap_or("unknown").to_owned(),
                },
            });
        }
        match code {
            404 => Ok(ConversationState::NotFound),
            401 | 403 => Err(TelephonyError::Unauthorized { status: code }),
            429 => Err(TelephonyError::RateLimited {
                detail: self.redact(&error_detail(body)),
            }),
            400..=499 => Err(TelephonyError::Rejected {
                status: code,
                detail: self.redact(&error_detail(body)),
            }),
            500..=599 => Err(TelephonyError::ServerError { status: code }),
            _ => Err(TelephonyError::Unexpected(format!(
                "unexpected HTTP status {code}"
            ))),
        }
    }

    /// A read never dials, so a timeout is just a timeout.
    fn read_transport_error(&self, error: reqwest::Error) -> TelephonyError {
        if error.is_connect() {
            TelephonyError::Unreachable(self.redact(&describe(error)))
        } else if error.is_timeout() {
            TelephonyError::Timeout(self.config.timeout)
        } else {
            TelephonyError::Unexpected(self.redact(&describe(error)))
        }
    }

    /// Provider text without the API key, short.
    fn redact(&self, text: &str) -> String {
        truncate_chars(
            &text.replace(self.config.api_key.expose_secret(), "[redacted]"),
            MAX_DETAIL_CHARS,
        )
    }

    fn transport_error(&self, error: reqwest::Error, call: &OutboundCall) -> TelephonyError {
        // Connect first: a connect timeout is also a timeout, but it proves nothing was sent.
        if error.is_connect() {
            TelephonyError::Unreachable(self.clean(&describe(error), call))
        } else if error.is_timeout() {
            TelephonyError::Timeout(self.config.timeout)
        } else {
            TelephonyError::Unexpected(self.clean(&describe(error), call))
        }
    }

    /// Provider text goes into errors that are logged and stored: never let it carry the
    /// API key or the driver's full number, and keep it short.
    fn clean(&self, text: &str, call: &OutboundCall) -> String {
        let mut text = text.replace(self.config.api_key.expose_secret(), "[redacted]");
        // The number we dialed even where it is glued to other text, then any number in
        // any form (providers reformat it: `15551234567`, `(555) 123-4567`).
        let number = call.to_number.as_str();
        if !number.is_empty() {
            text = text.replace(number, &call.to_number.masked());
        }
        truncate_chars(&mask_phone_numbers(&text), MAX_DETAIL_CHARS)
    }
}

#[async_trait]
impl Telephony for ElevenLabsTelephony {
    #[tracing::instrument(name = "elevenlabs.place_call", skip_all, fields(call_sid = %call.call_sid))]
    async fn place_call(&self, call: &OutboundCall) -> Result<PlacedCall, TelephonyError> {
        let started = Instant::now();
        let (status, outcome) = self.send(call).await;
        let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let to = call.to_number.masked();
        match &outcome {
            Ok(placed) => tracing::info!(
                status,
                latency_ms,
                to = %to,
                conversation_id = %placed.conversation_id,
                provider_call_id = placed.provider_call_id.as_deref(),
                "ElevenLabs placed the call"
            ),
            Err(error) => tracing::warn!(
                status,
                latency_ms,
                to = %to,
                error = %error,
                "ElevenLabs did not place the call"
            ),
        }
        outcome
    }

    #[tracing::instrument(name = "elevenlabs.fetch_conversation", skip_all, fields(conversation_id = %conversation_id))]
    async fn fetch_conversation(
        &self,
        conversation_id: &ConversationId,
    ) -> Result<ConversationState, TelephonyError> {
        let started = Instant::now();
        let (status, outcome) = self.get_conversation(conversation_id).await;
        let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match &outcome {
            Ok(state) => tracing::info!(
                status,
                latency_ms,
                state = state_name(state),
                "ElevenLabs answered about the conversation"
            ),
            Err(error) => tracing::warn!(
                status,
                latency_ms,
                error = %error,
                "ElevenLabs conversation request failed"
            ),
        }
        outcome
    }
}

fn state_name(state: &ConversationState) -> &'static str {
    match state {
        ConversationState::Done(_) => "done",
        ConversationState::Failed { .. } => "failed",
        ConversationState::Pending { .. } => "pending",
        ConversationState::NotFound => "not_found",
    }
}

fn endpoint_url(base_url: &str) -> Result<Url, ElevenLabsBuildError> {
    api_url(base_url, OUTBOUND_CALL_PATH)
}

fn api_url(base_url: &str, path: &str) -> Result<Url, ElevenLabsBuildError> {
    let trimmed = base_url.trim().trim_end_matches('/');
    let invalid = || ElevenLabsBuildError::InvalidBaseUrl(trimmed.to_owned());
    let url = Url::parse(&format!("{trimmed}{path}")).map_err(|_| invalid())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid());
    }
    Ok(url)
}

/// The error and its causes on one line, without the URL (the causes say what failed).
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

pub(crate) fn truncate_chars(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ElevenLabsConfig {
        ElevenLabsConfig {
            base_url: "https://api.elevenlabs.io/".to_owned(),
            api_key: "sk_secret".into(),
            agent_id: "agent".to_owned(),
            agent_phone_number_id: "phnum".to_owned(),
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn endpoint_trims_the_trailing_slash() {
        let url = endpoint_url("https://api.elevenlabs.io/").expect("valid");
        assert_eq!(
            url.as_str(),
            "https://api.elevenlabs.io/v1/convai/twilio/outbound-call"
        );
        let url = endpoint_url("http://127.0.0.1:9000").expect("valid");
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:9000/v1/convai/twilio/outbound-call"
        );
    }

    #[test]
    fn invalid_settings_are_refused_without_echoing_the_key() {
        let mut c = config();
        c.base_url = "ftp://example.com".to_owned();
        assert!(matches!(
            ElevenLabsTelephony::new(c),
            Err(ElevenLabsBuildError::InvalidBaseUrl(_))
        ));
        let mut c = config();
        c.base_url = "not a url".to_owned();
        assert!(matches!(
            ElevenLabsTelephony::new(c),
            Err(ElevenLabsBuildError::InvalidBaseUrl(_))
        ));
        let mut c = config();
        c.api_key = " ".into();
        assert!(matches!(
            ElevenLabsTelephony::new(c),
            Err(ElevenLabsBuildError::Missing("api_key"))
        ));
        let mut c = config();
        c.api_key = "sk_secret\nInjected: 1".into();
        let err = ElevenLabsTelephony::new(c).expect_err("newline in key");
        assert!(matches!(err, ElevenLabsBuildError::InvalidApiKey));
        assert!(!err.to_string().contains("sk_secret"));
        assert!(!format!("{err:?}").contains("sk_secret"));
        let mut c = config();
        c.timeout = Duration::ZERO;
        assert!(matches!(
            ElevenLabsTelephony::new(c),
            Err(ElevenLabsBuildError::ZeroTimeout)
        ));
    }

    #[test]
    fn debug_output_hides_the_key() {
        let telephony = ElevenLabsTelephony::new(config()).expect("valid");
        let shown = format!("{telephony:?} {:?}", config());
        assert!(!shown.contains("sk_secret"), "{shown}");
        assert!(shown.contains("[REDACTED]"), "{shown}");
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_chars("abc", 3), "abc");
        assert_eq!(truncate_chars("äbcd", 3), "äb…");
        assert_eq!(truncate_chars(&"x".repeat(1000), 300).chars().count(), 300);
    }
}
