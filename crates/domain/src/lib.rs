//! The violation-call domain: what a Call and a transcript turn are, the ports the
//! adapters implement, and the use cases. No I/O crate is a dependency of this crate.

pub mod models;
pub mod ports;
pub mod service;

pub use models::{
    Call, CallOutcome, CallSid, CallSidError, CallStatus, CallTranscription, ConversationId,
    ConversationIdError, ConversationReport, EventTurn, NewCall, NewTurn, Speaker, SpeakerType,
    TurnParseError,
};
pub use ports::{
    AppendOutcome, CallFinish, CallRepository, ConversationState, Ending, Finished, LeaseGuard,
    Pacer, ReconcilerLease, RepositoryError, StoredTurn, Telephony, Timer,
};
