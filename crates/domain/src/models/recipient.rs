//! Recipients (one per driver of a batch), their states, the pre-dial check's last answer,
//! and the read views of a batch (SPEC "Recipient states and re-dials", "GET /batches").

use std::fmt;
use std::str::FromStr;

use time::OffsetDateTime;

use super::{BatchId, CallSid, CallStatus, PageLimit};

/// `scheduled` → `dialing` → `in_call` → `completed` | `failed` | `cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecipientState {
    /// Waiting for its due time.
    Scheduled,
    /// Claimed by a dialer: the pre-dial check or the attempt's outbound request is under way.
    Dialing,
    /// The attempt's Call has a conversation_id.
    InCall,
    Completed,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown recipient state {0:?}")]
pub struct UnknownRecipientState(pub String);

impl RecipientState {
    pub const ALL: [Self; 6] = [
        Self::Scheduled,
        Self::Dialing,
        Self::InCall,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Dialing => "dialing",
            Self::InCall => "in_call",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// `completed`, `failed` and `cancelled` never change again (except that a completed
    /// attempt arriving late turns `failed`/`cancelled` into `completed`).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

impl FromStr for RecipientState {
    type Err = UnknownRecipientState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownRecipientState(s.to_owned()))
    }
}

impl fmt::Display for RecipientState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The failure reason of a recipient that ran past its expiry.
pub const EXPIRED: &str = "expired";

/// The pre-dial check's answer, as kept on the recipient (`last_check` jsonb).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckResult {
    Eligible,
    NotEligible,
    Failed,
}

/// `last_check`: `{"at","result","detail"}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LastCheck {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub result: CheckResult,
    pub detail: Option<String>,
}

/// `status` of a batch: `cancelled` once cancel was asked, else `active` while any
/// recipient is `scheduled`, `dialing` or `in_call`, else `done`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BatchStatus {
    Active,
    Done,
    Cancelled,
}

impl BatchStatus {
    pub fn of(cancelled: bool, counts: &StateCounts) -> Self {
        if cancelled {
            Self::Cancelled
        } else if counts.scheduled + counts.dialing + counts.in_call > 0 {
            Self::Active
        } else {
            Self::Done
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Done => "done",
            Self::Cancelled => "cancelled",
        }
    }
}

/// How many recipients are in each state (all six, zeros included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct StateCounts {
    pub scheduled: u64,
    pub dialing: u64,
    pub in_call: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl StateCounts {
    pub fn add(&mut self, state: RecipientState, n: u64) {
        let slot = match state {
            RecipientState::Scheduled => &mut self.scheduled,
            RecipientState::Dialing => &mut self.dialing,
            RecipientState::InCall => &mut self.in_call,
            RecipientState::Completed => &mut self.completed,
            RecipientState::Failed => &mut self.failed,
            RecipientState::Cancelled => &mut self.cancelled,
        };
        *slot += n;
    }

    pub fn get(&self, state: RecipientState) -> u64 {
        match state {
            RecipientState::Scheduled => self.scheduled,
            RecipientState::Dialing => self.dialing,
            RecipientState::InCall => self.in_call,
            RecipientState::Completed => self.completed,
            RecipientState::Failed => self.failed,
            RecipientState::Cancelled => self.cancelled,
        }
    }

    pub fn total(&self) -> u64 {
        RecipientState::ALL.iter().map(|s| self.get(*s)).sum()
    }
}

/// One attempt of a recipient: a Call of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptView {
    pub attempt: u32,
    pub call_sid: CallSid,
    pub status: CallStatus,
    pub failure_reason: Option<String>,
    pub call_start_time: OffsetDateTime,
}

/// One recipient as the batch view shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientView {
    pub driver_id: i64,
    pub driver_name: String,
    /// E.164, as stored.
    pub phone_number: String,
    /// IANA name.
    pub time_zone: String,
    pub state: RecipientState,
    /// Set while `scheduled`.
    pub next_attempt_at: Option<OffsetDateTime>,
    pub failure_reason: Option<String>,
    pub last_check: Option<LastCheck>,
    /// Oldest first.
    pub attempts: Vec<AttemptView>,
}

/// `GET /batches/{batch_id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchView {
    pub batch_id: BatchId,
    pub created_at: OffsetDateTime,
    pub call_type: String,
    pub timestamp: String,
    pub status: BatchStatus,
    pub counts: StateCounts,
    /// In request order.
    pub drivers: Vec<RecipientView>,
}

/// One entry of `GET /batches`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSummary {
    pub batch_id: BatchId,
    pub created_at: OffsetDateTime,
    pub status: BatchStatus,
    pub counts: StateCounts,
}

/// A place in the batch listing order (`created_at` DESC, then `batch_id` DESC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchPosition {
    pub created_at: OffsetDateTime,
    pub batch_id: BatchId,
}

/// One page request of `GET /batches`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchListQuery {
    pub limit: PageLimit,
    /// `None` for the first page; otherwise only batches strictly after this position.
    pub after: Option<BatchPosition>,
}

/// One page of batches, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPage {
    pub batches: Vec<BatchSummary>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<BatchPosition>,
}

impl BatchPage {
    /// Builds a page from up to `limit + 1` batches in listing order (the extra one only
    /// tells that another page exists).
    pub fn from_lookahead(mut batches: Vec<BatchSummary>, limit: PageLimit) -> Self {
        let limit = usize::from(limit.get());
        let more = batches.len() > limit;
        batches.truncate(limit);
        let next = if more {
            batches.last().map(|b| BatchPosition {
                created_at: b.created_at,
                batch_id: b.batch_id,
            })
        } else {
            None
        };
        Self { batches, next }
    }
}
