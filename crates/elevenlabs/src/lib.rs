//! Telephony adapters for the violation-call service: ElevenLabs Conversational AI
//! outbound calls ([`ElevenLabsTelephony`]), a simulated provider for local runs
//! ([`SimulatedTelephony`]), and ElevenLabs' webhook signature scheme ([`signature`]).

mod client;
pub mod conversation;
pub mod signature;
mod simulated;
mod wire;

pub use client::{DEFAULT_BASE_URL, ElevenLabsBuildError, ElevenLabsConfig, ElevenLabsTelephony};
pub use conversation::{
    ConversationAnswer, PayloadError, PostCallEnvelope, PostCallWebhook, parse_conversation,
    parse_post_call,
};
pub use signature::{
    DEFAULT_TOLERANCE_SECS, SIGNATURE_HEADER, SignatureError, Verifier, check_header, sign, verify,
};
pub use simulated::{
    POST_CALL_PATH, SimulatedBuildError, SimulatedConfig, SimulatedTelephony, TRANSCRIPTION_PATH,
    UNREACHABLE_SUFFIX,
};
