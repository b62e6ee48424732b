//! Entities and value types. Value types parse rather than validate: once you hold a
//! `CallSid`, it is a valid one.

mod batch;
mod batches;
mod call;
mod call_listing;
mod call_sid;
mod conversation;
mod conversation_id;
mod outcome;
mod phone_number;
mod recipient;
mod schedule;
mod settlement;
mod transcription;

pub use batch::{
    BatchCall, DriverCall, InvalidBatch, RawBatch, RawDriver, RawViolation, Violation,
};
pub use batches::{
    Batch, BatchDefaults, BatchError, BatchId, Driver, InvalidBatchId, Schedule, attempt_call_sid,
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
pub use recipient::{
    AttemptView, BatchListQuery, BatchPage, BatchPosition, BatchStatus, BatchSummary, BatchView,
    CheckResult, EXPIRED, LastCheck, RecipientState, RecipientView, StateCounts,
    UnknownRecipientState,
};
pub use schedule::{
    CallWindow, DialRules, Due, InvalidCallWindow, InvalidRedialDelays, RedialDelays, TimeZone,
    UnknownTimeZone, WallTime, add_duration, first_due, next_in_window,
};
pub use settlement::{SettleInput, Settlement, decide_settlement, is_redialable_status};
pub use transcription::{
    CallTranscription, NewTurn, Speaker, SpeakerType, TurnParseError, UnknownSpeaker,
    parse_timestamp,
};

/// Identifiers are stored in `varchar(255)` columns.
pub(crate) const MAX_ID_LEN: usize = 255;
