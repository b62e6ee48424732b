use std::fmt;
use std::str::FromStr;

use time::OffsetDateTime;

use super::{CallOutcome, CallSid, ConversationId};

/// Lifecycle of a Call: written `InProgress` before dialing, then `Completed` or `Failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallStatus {
    InProgress,
    Completed,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown call status {0:?}")]
pub struct UnknownCallStatus(pub String);

impl CallStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }

    /// Completed and failed calls never change status again.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::InProgress)
    }
}

impl FromStr for CallStatus {
    type Err = UnknownCallStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "in_progress" => Ok(Self::InProgress),
            "completed" => Ok(Self::Completed),
            "failed" => Ok(Self::Failed),
            other => Err(UnknownCallStatus(other.to_owned())),
        }
    }
}

impl fmt::Display for CallStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One outbound call to one driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub id: i64,
    pub call_sid: CallSid,
    /// NULL until ElevenLabs has answered our outbound-call request.
    pub conversation_id: Option<ConversationId>,
    pub driver_id: Option<i64>,
    pub call_start_time: OffsetDateTime,
    pub call_end_time: Option<OffsetDateTime>,
    pub status: CallStatus,
    /// Why a call is `Failed`, kept for audit.
    pub failure_reason: Option<String>,
    /// ElevenLabs' post-call analysis; `None` until a post-call event (or reconciliation)
    /// brought one.
    pub outcome: Option<CallOutcome>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// What is known of a Call before anyone is dialed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCall {
    pub call_sid: CallSid,
    pub driver_id: Option<i64>,
    pub call_start_time: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_through_its_text_form() {
        for status in [
            CallStatus::InProgress,
            CallStatus::Completed,
            CallStatus::Failed,
        ] {
            assert_eq!(status.as_str().parse::<CallStatus>(), Ok(status));
        }
        assert!("IN_PROGRESS".parse::<CallStatus>().is_err());
    }

    #[test]
    fn only_in_progress_is_not_terminal() {
        assert!(!CallStatus::InProgress.is_terminal());
        assert!(CallStatus::Completed.is_terminal());
        assert!(CallStatus::Failed.is_terminal());
    }
}
