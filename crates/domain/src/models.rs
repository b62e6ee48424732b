//! Entities and value types. Value types parse rather than validate: once you hold a
//! `CallSid`, it is a valid one.

mod batch;
mod call;
mod call_listing;
mod call_sid;
mod conversation;
mod conversation_id;
mod outcome;
mod phone_number;
mod transcription;

pub use batch::{
    BatchCall, DriverCall, InvalidBatch, RawBatch, RawDriver, RawViolation, Violation,
};
pub use call::{Call, CallStatus, NewCall, UnknownCallStatus};
pub use call_listing::{
    CallFilter, CallListQuery, CallPage, CallPosition, EmptyTimeRange, InvalidPageLimit, PageLimit,
};
pub use call_sid::{CallSid, CallSidError};
#[cfg(test)]
pub(crate) use conversation::sample_report;
pub use conversation::{ConversationReport, EventTurn};
pub use conversation_id::{ConversationId, ConversationIdError};
pub use outcome::CallOutcome;
pub use phone_number::{InvalidPhoneNumber, PhoneNumber, mask_phone_numbers};
pub use transcription::{
    CallTranscription, NewTurn, Speaker, SpeakerType, TurnParseError, UnknownSpeaker,
    parse_timestamp,
};

/// Identifiers are stored in `varchar(255)` columns.
pub(crate) const MAX_ID_LEN: usize = 255;
