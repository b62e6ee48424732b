//! The pre-dial check over HTTP (SPEC "Pre-dial check"): right before each attempt the
//! dialer asks the dispatcher system whether the driver may be called now.
//!
//! `POST {PREDIAL_URL}` with `{"batch_id","call_sid","attempt","driverId","phoneNumber"}`
//! (and `Authorization: Bearer {PREDIAL_TOKEN}` when set). A 2xx `{"eligible":true}` is
//! [`PredialAnswer::Eligible`]; `{"eligible":false}` with an optional non-negative integer
//! `retry_after_secs` (default 900) is [`PredialAnswer::NotEligible`]; anything else —
//! timeout, connection error, non-2xx, another body — is [`PredialAnswer::Failed`] with a
//! short detail, and the domain keeps the driver from being dialed (the check fails closed).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use calls_domain::ports::{PredialAnswer, PredialCheck, PredialRequest};
use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

/// Used when a not-eligible answer says nothing about when to ask again (SPEC).
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(900);

/// Longest answer body read; an eligibility answer is a few dozen bytes.
const MAX_BODY_BYTES: usize = 16 * 1024;
/// Details end up on the recipient (`last_check.detail`) and in logs; keep them short.
const MAX_DETAIL_CHARS: usize = 200;

pub struct PredialConfig {
    /// `PREDIAL_URL`.
    pub url: String,
    /// `PREDIAL_TOKEN`: sent as a bearer token when set.
    pub token: Option<SecretString>,
    /// `PREDIAL_TIMEOUT_MS`: the whole request, connect to last byte.
    pub timeout: Duration,
}

impl fmt::Debug for PredialConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PredialConfig")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PredialBuildError {
    #[error("PREDIAL_URL is not a valid http(s) URL")]
    InvalidUrl,
    #[error("PREDIAL_TOKEN contains characters that are not allowed in an HTTP header")]
    InvalidToken,
    #[error("PREDIAL_TIMEOUT_MS must be greater than zero")]
    ZeroTimeout,
    #[error("could not build the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// [`PredialCheck`] over HTTP. One connection-pooling client; cheap to share in an `Arc`.
pub struct HttpPredialCheck {
    client: reqwest::Client,
    url: Url,
    authorization: Option<HeaderValue>,
    timeout: Duration,
}

impl fmt::Debug for HttpPredialCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpPredialCheck")
            .field("url", &self.url.as_str())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpPredialCheck {
    pub fn new(config: PredialConfig) -> Result<Self, PredialBuildError> {
        let url = Url::parse(config.url.trim())
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or(PredialBuildError::InvalidUrl)?;
        if config.timeout.is_zero() {
            return Err(PredialBuildError::ZeroTimeout);
        }
        let authorization = config
            .token
            .as_ref()
            .map(|token| {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
                    .map_err(|_| PredialBuildError::InvalidToken)?;
                value.set_sensitive(true);
                Ok(value)
            })
            .transpose()?;
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            // A redirect is an answer we do not understand (fails closed), and the token
            // must not follow it anywhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(PredialBuildError::Client)?;
        Ok(Self {
            client,
            url,
            authorization,
            timeout: config.timeout,
        })
    }

    async fn ask(&self, request: &PredialRequest) -> Result<PredialAnswer, String> {
        let body = WireRequest {
            batch_id: request.batch_id.to_string(),
            call_sid: request.call_sid.as_str(),
            attempt: request.attempt,
            driver_id: request.driver_id,
            phone_number: request.phone_number.as_str(),
        };
        let mut builder = self.client.post(self.url.clone()).json(&body);
        if let Some(auth) = &self.authorization {
            builder = builder.header(AUTHORIZATION, auth.clone());
        }
        let mut response = builder.send().await.map_err(|e| self.transport(&e))?;
        let status = response.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.transport(&e))? {
            if bytes.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(format!("answer larger than {MAX_BODY_BYTES} bytes"));
            }
            bytes.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(format!("HTTP {}", status.as_u16()));
        }
        parse_answer(status, &bytes)
    }

    /// Transport failures without the URL (it may hold credentials in a query string).
    fn transport(&self, e: &reqwest::Error) -> String {
        if e.is_timeout() {
            format!("no answer within {} ms", self.timeout.as_millis())
        } else if e.is_connect() {
            "could not connect".to_owned()
        } else {
            short(&format!("request failed: {}", ErrorChain(e)))
        }
    }
}

#[async_trait]
impl PredialCheck for HttpPredialCheck {
    #[tracing::instrument(name = "predial.check", skip_all, fields(call_sid = %request.call_sid, attempt = request.attempt))]
    async fn check(&self, request: &PredialRequest) -> PredialAnswer {
        match self.ask(request).await {
            Ok(answer) => answer,
            Err(detail) => {
                tracing::warn!(detail = %detail, "pre-dial check failed; not dialing");
                PredialAnswer::Failed { detail }
            }
        }
    }
}

#[derive(Serialize)]
struct WireRequest<'a> {
    batch_id: String,
    call_sid: &'a str,
    attempt: u32,
    #[serde(rename = "driverId")]
    driver_id: i64,
    #[serde(rename = "phoneNumber")]
    phone_number: &'a str,
}

/// Reads a 2xx body. Only the two documented shapes count; the check fails closed on any
/// other, so a half-understood answer never dials a driver.
fn parse_answer(status: StatusCode, bytes: &[u8]) -> Result<PredialAnswer, String> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|_| format!("HTTP {}: answer is not JSON", status.as_u16()))?;
    let object = value
        .as_object()
        .ok_or_else(|| "answer is not a JSON object".to_owned())?;
    match object.get("eligible") {
        Some(serde_json::Value::Bool(true)) => Ok(PredialAnswer::Eligible),
        Some(serde_json::Value::Bool(false)) => {
            let retry_after = match object.get("retry_after_secs") {
                None => DEFAULT_RETRY_AFTER,
                Some(v) => v
                    .as_u64()
                    .map(Duration::from_secs)
                    .ok_or_else(|| "retry_after_secs is not a non-negative integer".to_owned())?,
            };
            Ok(PredialAnswer::NotEligible { retry_after })
        }
        Some(_) => Err("eligible is not a boolean".to_owned()),
        None => Err("answer has no eligible field".to_owned()),
    }
}

fn short(text: &str) -> String {
    text.chars().take(MAX_DETAIL_CHARS).collect()
}

/// An error and its sources on one line (reqwest's own Display is only the outer layer).
struct ErrorChain<'a>(&'a reqwest::Error);

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.0;
        // `without_url` needs ownership; the URL is left out by printing the kind only.
        write!(
            f,
            "{}",
            if e.is_body() {
                "reading the answer"
            } else if e.is_request() {
                "sending the request"
            } else {
                "transport"
            }
        )?;
        let mut source = std::error::Error::source(e);
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_two_documented_answers_are_understood() {
        let ok = StatusCode::OK;
        assert_eq!(
            parse_answer(ok, br#"{"eligible":true}"#),
            Ok(PredialAnswer::Eligible)
        );
        assert_eq!(
            parse_answer(ok, br#"{"eligible":false}"#),
            Ok(PredialAnswer::NotEligible {
                retry_after: DEFAULT_RETRY_AFTER
            })
        );
        assert_eq!(
            parse_answer(ok, br#"{"eligible":false,"retry_after_secs":0}"#),
            Ok(PredialAnswer::NotEligible {
                retry_after: Duration::ZERO
            })
        );
        for bad in [
            &br#"{"eligible":"true"}"#[..],
            br#"{"eligible":false,"retry_after_secs":-1}"#,
            br#"{"eligible":false,"retry_after_secs":1.5}"#,
            br#"{"eligible":false,"retry_after_secs":"60"}"#,
            br#"{"eligible":false,"retry_after_secs":null}"#,
            br#"{}"#,
            br#"[true]"#,
            b"yes",
            b"",
        ] {
            assert!(
                parse_answer(ok, bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let config = PredialConfig {
            url: "http://127.0.0.1:1/check".into(),
            token: Some(SecretString::from("tok_topsecret")),
            timeout: Duration::from_secs(1),
        };
        assert!(!format!("{config:?}").contains("topsecret"));
        let check = HttpPredialCheck::new(config).expect("builds");
        assert!(!format!("{check:?}").contains("topsecret"));
    }

    #[test]
    fn bad_settings_are_refused() {
        let config = |url: &str, timeout| PredialConfig {
            url: url.into(),
            token: None,
            timeout,
        };
        let second = Duration::from_secs(1);
        assert!(matches!(
            HttpPredialCheck::new(config("ftp://x/y", second)),
            Err(PredialBuildError::InvalidUrl)
        ));
        assert!(matches!(
            HttpPredialCheck::new(config("not a url", second)),
            Err(PredialBuildError::InvalidUrl)
        ));
        assert!(matches!(
            HttpPredialCheck::new(config("http://x/y", Duration::ZERO)),
            Err(PredialBuildError::ZeroTimeout)
        ));
        assert!(matches!(
            HttpPredialCheck::new(PredialConfig {
                token: Some(SecretString::from("a\nb")),
                ..config("http://x/y", second)
            }),
            Err(PredialBuildError::InvalidToken)
        ));
    }
}
