use std::collections::BTreeMap;
use std::time::Duration;

use crate::models::{CallSid, ConversationId, ConversationReport, PhoneNumber};

/// Everything a telephony provider needs to phone one driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundCall {
    pub call_sid: CallSid,
    pub to_number: PhoneNumber,
    /// The agent's prompt for this call.
    pub prompt: String,
    /// Dynamic variables for the agent; always includes `call_sid`.
    pub dynamic_variables: BTreeMap<String, String>,
}

/// The provider's answer to a placed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedCall {
    pub conversation_id: ConversationId,
    /// The provider's own (Twilio) call id, when it sends one.
    pub provider_call_id: Option<String>,
}

/// What the provider says about a conversation it was asked for (the stale-call repair).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConversationState {
    /// The conversation is over (ElevenLabs' `status: done`); the report has the same
    /// content as a `post_call_transcription` event.
    Done(Box<ConversationReport>),
    /// The call failed (ElevenLabs' `status: failed`).
    Failed { reason: String },
    /// Still going, or being processed (`initiated`, `in-progress`, `processing`, …).
    Pending { status: String },
    /// The provider has no such conversation (HTTP 404).
    NotFound,
}

/// Why a telephony request failed. For [`Telephony::place_call`] every variant means "do
/// not assume the driver was dialed successfully"; none of them is retried by the adapter
/// (a retry could dial twice). For [`Telephony::fetch_conversation`] every variant means
/// "nothing is known about the conversation".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TelephonyError {
    #[error("telephony provider rejected our credentials (HTTP {status})")]
    Unauthorized { status: u16 },
    #[error("telephony provider rejected the request (HTTP {status}): {detail}")]
    Rejected { status: u16, detail: String },
    #[error("telephony provider is rate limiting us (HTTP 429): {detail}")]
    RateLimited { detail: String },
    #[error("telephony provider failed (HTTP {status})")]
    ServerError { status: u16 },
    #[error("telephony provider did not place the call: {message}")]
    NotPlaced { message: String },
    #[error("telephony provider answered without a conversation_id")]
    MissingConversationId,
    #[error("telephony provider did not answer within {0:?}")]
    Timeout(Duration),
    #[error("telephony provider unreachable: {0}")]
    Unreachable(String),
    #[error("unexpected answer from telephony provider: {0}")]
    Unexpected(String),
}

impl TelephonyError {
    /// The HTTP status of the provider's answer, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Unauthorized { status }
            | Self::Rejected { status, .. }
            | Self::ServerError { status } => Some(*status),
            Self::RateLimited { .. } => Some(429),
            Self::NotPlaced { .. }
            | Self::MissingConversationId
            | Self::Timeout(_)
            | Self::Unreachable(_)
            | Self::Unexpected(_) => None,
        }
    }

    /// Whether a batch may dial the driver again after this failure: not after an answer
    /// 4xx other than 408 and 429 (a rejected number or a configuration problem), yes
    /// after anything else (busy, no answer, timeouts, 5xx, `success:false`, …).
    pub fn is_redialable(&self) -> bool {
        self.status()
            .is_none_or(crate::models::is_redialable_status)
    }
}

#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait::async_trait]
pub trait Telephony: Send + Sync + 'static {
    /// Asks the provider to dial. Called once per Call; never retried.
    async fn place_call(&self, call: &OutboundCall) -> Result<PlacedCall, TelephonyError>;

    /// Asks the provider what became of a conversation. Reads only; callers may ask again
    /// later.
    ///
    /// # Errors
    /// Any failure to get a usable answer (transport, 5xx, an unreadable body) MUST be a
    /// [`TelephonyError`]; a 404 MUST be [`ConversationState::NotFound`], not an error.
    async fn fetch_conversation(
        &self,
        conversation_id: &ConversationId,
    ) -> Result<ConversationState, TelephonyError>;
}
