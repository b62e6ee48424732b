//! The violation-call domain: what a Call and a transcript turn are, the ports the
//! adapters implement, and the use cases. No I/O crate is a dependency of this crate.

pub mod models;
pub mod ports;
pub mod service;

pub use models::{
    Call, CallSid, CallSidError, CallStatus, CallTranscription, ConversationId,
    ConversationIdError, NewCall, NewTurn, Speaker, SpeakerType, TurnParseError,
};
pub use ports::{AppendOutcome, CallRepository, RepositoryError, StoredTurn, Telephony};
