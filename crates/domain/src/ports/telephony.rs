use std::collections::BTreeMap;
use std::time::Duration;

use crate::models::{CallSid, ConversationId, PhoneNumber};

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

/// Why a call was not placed. Every variant means "do not assume the driver was dialed
/// successfully"; none of them is retried by the adapter (a retry could dial twice).
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

#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait::async_trait]
pub trait Telephony: Send + Sync + 'static {
    /// Asks the provider to dial. Called once per Call; never retried.
    async fn place_call(&self, call: &OutboundCall) -> Result<PlacedCall, TelephonyError>;
}
