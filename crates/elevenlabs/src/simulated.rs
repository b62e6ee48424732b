//! A stand-in for ElevenLabs for local runs and demos (`TELEPHONY=simulated`): "dials" at
//! once, then plays a short scripted conversation against our own webhooks, signed the way
//! ElevenLabs signs, exactly as the real platform would deliver it. It also answers the
//! conversation API for the conversations it placed itself (in this process), so the
//! stale-call repair can be tried without an account.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use calls_domain::ConversationId;
use calls_domain::ports::{ConversationState, OutboundCall, PlacedCall, Telephony, TelephonyError};
use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::conversation::parse_conversation;
use crate::signature::{SIGNATURE_HEADER, sign};

/// Numbers ending in this "cannot be reached": lets demos and tests show a failed dial.
pub const UNREACHABLE_SUFFIX: &str = "0000";

pub const TRANSCRIPTION_PATH: &str = "/webhooks/elevenlabs/transcription";
pub const POST_CALL_PATH: &str = "/webhooks/elevenlabs/post-call";

/// Our own webhook may briefly fail (e.g. restarting); deliveries are idempotent there.
const MAX_ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Above the server's default wait for a conversation_id (5 s), so a waiting turn succeeds.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Process-wide, so two calls with the same call_sid in one instant still differ.
static CALL_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Conversations remembered for the conversation API; the oldest are forgotten first.
const REMEMBERED_CONVERSATIONS: usize = 10_000;

#[derive(Debug, Clone)]
pub struct SimulatedConfig {
    /// Where this service listens, e.g. `http://127.0.0.1:8080`.
    pub webhook_base_url: String,
    /// The server's `WEBHOOK_SECRET`; signs every delivery.
    pub webhook_secret: SecretString,
    /// Pause before the first turn and between turns.
    pub turn_interval: Duration,
    /// Turn number (1-based) whose per-turn webhook is not delivered, as if ElevenLabs lost
    /// it; the post-call event still has the turn, so its reconciliation restores it.
    pub drop_turn: Option<usize>,
    /// Send no post-call event, as if it were lost: the Call stays `in_progress` until the
    /// stale-call repair asks this telephony about it.
    pub skip_post_call: bool,
}

impl SimulatedConfig {
    pub const DEFAULT_TURN_INTERVAL: Duration = Duration::from_millis(150);

    pub fn new(webhook_base_url: impl Into<String>, webhook_secret: SecretString) -> Self {
        Self {
            webhook_base_url: webhook_base_url.into(),
            webhook_secret,
            turn_interval: Self::DEFAULT_TURN_INTERVAL,
            drop_turn: None,
            skip_post_call: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimulatedBuildError {
    #[error("simulated telephony webhook base URL is not a valid http(s) URL: {0}")]
    InvalidWebhookBaseUrl(String),
    #[error("could not build the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// [`Telephony`] that never phones anybody.
#[derive(Clone)]
pub struct SimulatedTelephony {
    shared: Arc<Shared>,
}

struct Shared {
    client: reqwest::Client,
    transcription_url: Url,
    post_call_url: Url,
    secret: SecretString,
    turn_interval: Duration,
    drop_turn: Option<usize>,
    skip_post_call: bool,
    conversations: Mutex<Conversations>,
}

/// What this process knows of the conversations it placed.
#[derive(Default)]
struct Conversations {
    by_id: HashMap<String, Played>,
    order: VecDeque<String>,
}

enum Played {
    /// Still being played.
    InProgress,
    /// Over: the post-call event's `data`, which is what the conversation API answers.
    Done(serde_json::Value),
}

impl Conversations {
    fn set(&mut self, id: &str, state: Played) {
        if self.by_id.insert(id.to_owned(), state).is_none() {
            self.order.push_back(id.to_owned());
            while self.order.len() > REMEMBERED_CONVERSATIONS {
                if let Some(oldest) = self.order.pop_front() {
                    self.by_id.remove(&oldest);
                }
            }
        }
    }
}

impl fmt::Debug for SimulatedTelephony {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimulatedTelephony")
            .field("transcription_url", &self.shared.transcription_url.as_str())
            .field("post_call_url", &self.shared.post_call_url.as_str())
            .field("turn_interval", &self.shared.turn_interval)
            .finish_non_exhaustive()
    }
}

impl SimulatedTelephony {
    pub fn new(config: SimulatedConfig) -> Result<Self, SimulatedBuildError> {
        let base = config.webhook_base_url.trim().trim_end_matches('/');
        let url = |path: &str| {
            Url::parse(&format!("{base}{path}"))
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
                .ok_or_else(|| SimulatedBuildError::InvalidWebhookBaseUrl(base.to_owned()))
        };
        let transcription_url = url(TRANSCRIPTION_PATH)?;
        let post_call_url = url(POST_CALL_PATH)?;
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(SimulatedBuildError::Client)?;
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                transcription_url,
                post_call_url,
                secret: config.webhook_secret,
                turn_interval: config.turn_interval,
                drop_turn: config.drop_turn,
                skip_post_call: config.skip_post_call,
                conversations: Mutex::new(Conversations::default()),
            }),
        })
    }
}

#[async_trait]
impl Telephony for SimulatedTelephony {
    #[tracing::instrument(name = "simulated.place_call", skip_all, fields(call_sid = %call.call_sid))]
    async fn place_call(&self, call: &OutboundCall) -> Result<PlacedCall, TelephonyError> {
        if call.to_number.as_str().ends_with(UNREACHABLE_SUFFIX) {
            tracing::info!(to = %call.to_number.masked(), "simulated call not placed");
            return Err(TelephonyError::NotPlaced {
                message: "simulated: number unreachable".to_owned(),
            });
        }
        let (conversation_id, provider_call_id) = new_ids(call.call_sid.as_str());
        let conversation_id = ConversationId::parse(conversation_id)
            .map_err(|e| TelephonyError::Unexpected(format!("simulated conversation_id: {e}")))?;
        tracing::info!(
            to = %call.to_number.masked(),
            conversation_id = %conversation_id,
            "simulated call placed"
        );

        let conversation = Conversation {
            call_sid: call.call_sid.as_str().to_owned(),
            conversation_id: conversation_id.as_str().to_owned(),
            turns: script(&call.dynamic_variables),
        };
        self.shared
            .conversations()
            .set(&conversation.conversation_id, Played::InProgress);
        let shared = Arc::clone(&self.shared);
        let span = tracing::Span::current();
        // Detached: like the real platform, the conversation outlives the dial request.
        tokio::spawn(tracing::Instrument::instrument(
            async move { shared.play(conversation).await },
            span,
        ));

        Ok(PlacedCall {
            conversation_id,
            provider_call_id: Some(provider_call_id),
        })
    }

    /// Answers for the conversations this process placed; any other id is unknown (404),
    /// as it would be at ElevenLabs.
    async fn fetch_conversation(
        &self,
        conversation_id: &ConversationId,
    ) -> Result<ConversationState, TelephonyError> {
        let data = match self
            .shared
            .conversations()
            .by_id
            .get(conversation_id.as_str())
        {
            None => return Ok(ConversationState::NotFound),
            Some(Played::InProgress) => {
                return Ok(ConversationState::Pending {
                    status: "in-progress".to_owned(),
                });
            }
            Some(Played::Done(data)) => data.clone(),
        };
        // Read like the real answer, so the simulation exercises the same reader.
        let body = serde_json::to_vec(&data)
            .map_err(|e| TelephonyError::Unexpected(format!("simulated conversation: {e}")))?;
        let answer = parse_conversation(&body, conversation_id)
            .map_err(|e| TelephonyError::Unexpected(format!("simulated conversation: {e}")))?;
        Ok(ConversationState::Done(Box::new(answer.report)))
    }
}

/// `sim_conv_<16 hex>` and `CA<32 hex>` (the shape of a Twilio call sid).
fn new_ids(call_sid: &str) -> (String, String) {
    let n = CALL_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    let digest = Sha256::new()
        .chain_update(call_sid.as_bytes())
        .chain_update(n.to_le_bytes())
        .chain_update(nanos.to_le_bytes())
        .finalize();
    let conversation_id = format!("sim_conv_{}", hex::encode(&digest[..8]));
    let provider_call_id = format!("CA{}", hex::encode(&digest[16..32]));
    (conversation_id, provider_call_id)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Agent,
    User,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::User => "user",
        }
    }
}

struct Turn {
    role: Role,
    message: String,
}

struct Conversation {
    call_sid: String,
    conversation_id: String,
    turns: Vec<Turn>,
}

fn script(vars: &BTreeMap<String, String>) -> Vec<Turn> {
    let var = |name: &str| {
        vars.get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let greeting_name = var("driver_name").map_or_else(String::new, |n| format!(" {n}"));
    let violation =
        var("violation_summary").unwrap_or_else(|| "a safety event on your recent trip".to_owned());
    let turn = |role, message: String| Turn { role, message };
    vec![
        turn(
            Role::Agent,
            format!(
                "Hi{greeting_name}, this is the safety assistant calling on behalf of your dispatcher. Do you have a minute to talk?"
            ),
        ),
        turn(Role::User, "Sure, I have a minute. What's going on?".to_owned()),
        turn(
            Role::Agent,
            format!("Our system flagged {violation}. Can you tell me what happened?"),
        ),
        turn(
            Role::User,
            "I saw that too. I am checking on it right now and will have it sorted before my next stop."
                .to_owned(),
        ),
        turn(
            Role::Agent,
            format!(
                "Thanks for explaining{greeting_name}. I've noted it for your dispatcher. Drive safe, goodbye."
            ),
        ),
    ]
}

impl Shared {
    fn conversations(&self) -> std::sync::MutexGuard<'_, Conversations> {
        // No code panics while holding it; a poisoned map is still consistent.
        self.conversations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn play(&self, conversation: Conversation) {
        tokio::time::sleep(self.turn_interval).await;
        let start_unix = OffsetDateTime::now_utc().unix_timestamp();
        let started = Instant::now();
        let mut transcript = Vec::with_capacity(conversation.turns.len());
        for (index, turn) in conversation.turns.iter().enumerate() {
            if index > 0 {
                tokio::time::sleep(self.turn_interval).await;
            }
            let body = json!({
                "call_sid": conversation.call_sid,
                "speaker": turn.role.as_str(),
                "message": turn.message,
                "timestamp": rfc3339_now(),
            });
            transcript.push(json!({
                "role": turn.role.as_str(),
                "message": turn.message,
                "time_in_call_secs": started.elapsed().as_secs(),
            }));
            if self.drop_turn == Some(index + 1) {
                tracing::info!(
                    turn = index + 1,
                    "simulated: dropping this turn's webhook on purpose"
                );
                continue;
            }
            self.deliver(&self.transcription_url, &body, "transcription turn")
                .await;
        }
        tokio::time::sleep(self.turn_interval).await;

        let data = json!({
            "agent_id": "simulated-agent",
            "conversation_id": conversation.conversation_id,
            "status": "done",
            "transcript": transcript,
            "metadata": {
                "start_time_unix_secs": start_unix,
                // Rounded up: a finished call lasted at least a second.
                "call_duration_secs": started.elapsed().as_secs() + 1,
                "termination_reason": "end_call tool was called.",
            },
            "analysis": analysis(),
            "conversation_initiation_client_data": {
                "dynamic_variables": {"call_sid": conversation.call_sid},
            },
        });
        self.conversations()
            .set(&conversation.conversation_id, Played::Done(data.clone()));
        if self.skip_post_call {
            tracing::info!("simulated: not sending the post-call event, on purpose");
            return;
        }
        let event = json!({
            "type": "post_call_transcription",
            "event_timestamp": OffsetDateTime::now_utc().unix_timestamp(),
            "data": data,
        });
        self.deliver(&self.post_call_url, &event, "post-call event")
            .await;
    }

    /// POSTs one signed delivery, retrying a failure a few times with the same body (the
    /// server deduplicates), then gives up with a warning: a demo must not wedge.
    async fn deliver(&self, url: &Url, body: &serde_json::Value, what: &'static str) {
        let bytes = match serde_json::to_vec(body) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(error = %e, what, "could not encode simulated webhook");
                return;
            }
        };
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=MAX_ATTEMPTS {
            let signature = sign(
                self.secret.expose_secret(),
                OffsetDateTime::now_utc().unix_timestamp(),
                &bytes,
            );
            let sent = self
                .client
                .post(url.clone())
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .header(SIGNATURE_HEADER, signature)
                .body(bytes.clone())
                .send()
                .await;
            let failure = match sent {
                Ok(response) if response.status().is_success() => {
                    tracing::debug!(
                        what,
                        status = response.status().as_u16(),
                        "simulated webhook delivered"
                    );
                    return;
                }
                Ok(response) => format!("HTTP {}", response.status().as_u16()),
                Err(e) => e.without_url().to_string(),
            };
            if attempt == MAX_ATTEMPTS {
                tracing::warn!(what, attempt, error = %failure, "simulated webhook not delivered; skipping it");
                return;
            }
            tracing::debug!(what, attempt, error = %failure, "simulated webhook failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
}

/// What the scripted driver says, as ElevenLabs' analysis would report it with the
/// data-collection items of docs/elevenlabs.md.
fn analysis() -> serde_json::Value {
    json!({
        "call_successful": "success",
        "transcript_summary": "The agent told the driver about the flagged violation. The driver acknowledged it, is checking on it now and expects it sorted before the next stop.",
        "data_collection_results": {
            "violation_acknowledged": {
                "data_collection_id": "violation_acknowledged",
                "value": true,
                "rationale": "The driver said they saw the alert too."
            },
            "reason_given": {
                "data_collection_id": "reason_given",
                "value": "Driver saw the alert and is checking on it.",
                "rationale": "The driver explained they are checking on it right now."
            },
            "fix_eta": {
                "data_collection_id": "fix_eta",
                "value": "before the next stop",
                "rationale": "The driver will have it sorted before the next stop."
            }
        }
    })
}

/// Millisecond precision, `Z` suffix: what ElevenLabs' `system__time_utc` looks like.
fn rfc3339_now() -> String {
    let now = OffsetDateTime::now_utc();
    let now = now.replace_millisecond(now.millisecond()).unwrap_or(now);
    now.format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_expected_shape_and_differ_per_call() {
        let (conv, ca) = new_ids("EL_1_2");
        assert!(conv.starts_with("sim_conv_"));
        assert_eq!(conv.len(), "sim_conv_".len() + 16);
        assert!(
            conv["sim_conv_".len()..]
                .chars()
                .all(|c| c.is_ascii_hexdigit())
        );
        assert!(ca.starts_with("CA"));
        assert_eq!(ca.len(), 34);
        assert!(ca[2..].chars().all(|c| c.is_ascii_hexdigit()));
        let (again, _) = new_ids("EL_1_2");
        assert_ne!(conv, again);
    }

    #[test]
    fn script_uses_the_dynamic_variables_when_present() {
        let vars = BTreeMap::from([
            ("driver_name".to_owned(), "Jane Doe".to_owned()),
            (
                "violation_summary".to_owned(),
                "speeding on I-80".to_owned(),
            ),
        ]);
        let turns = script(&vars);
        assert_eq!(turns.len(), 5);
        assert_eq!(turns[0].role, Role::Agent);
        assert!(turns[0].message.contains("Jane Doe"));
        assert!(turns.iter().any(|t| t.message.contains("speeding on I-80")));
        assert_eq!(turns.last().map(|t| t.role), Some(Role::Agent));

        let plain = script(&BTreeMap::new());
        assert!(plain[0].message.starts_with("Hi, this"));
        assert!(plain[2].message.contains("a safety event"));
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        let ts = rfc3339_now();
        assert!(ts.ends_with('Z'), "{ts}");
        let parsed = OffsetDateTime::parse(&ts, &Rfc3339).expect("parses");
        assert_eq!(parsed.nanosecond() % 1_000_000, 0);
    }
}
