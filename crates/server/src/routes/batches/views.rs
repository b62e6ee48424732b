//! The batch view and the listing entry, exactly as SPEC "GET /batches/{batch_id}" names
//! their fields.

use calls_domain::models::{
    AttemptView, BatchSummary, BatchView, CheckResult, LastCheck, RecipientView, StateCounts,
};
use serde::Serialize;
use time::OffsetDateTime;
use time::serde::rfc3339 as rfc3339_utc;

/// How many recipients are in each of the six states.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CountsView {
    pub scheduled: u64,
    pub dialing: u64,
    pub in_call: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl From<StateCounts> for CountsView {
    fn from(c: StateCounts) -> Self {
        Self {
            scheduled: c.scheduled,
            dialing: c.dialing,
            in_call: c.in_call,
            completed: c.completed,
            failed: c.failed,
            cancelled: c.cancelled,
        }
    }
}

/// The pre-dial check's last answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LastCheckView {
    #[serde(with = "rfc3339_utc")]
    pub at: OffsetDateTime,
    /// `eligible`, `not_eligible` or `failed`.
    #[schema(example = "not_eligible")]
    pub result: &'static str,
    pub detail: Option<String>,
}

impl From<LastCheck> for LastCheckView {
    fn from(c: LastCheck) -> Self {
        Self {
            at: c.at,
            result: match c.result {
                CheckResult::Eligible => "eligible",
                CheckResult::NotEligible => "not_eligible",
                CheckResult::Failed => "failed",
            },
            detail: c.detail,
        }
    }
}

/// One attempt: a Call of its own.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttemptEntry {
    /// 1-based.
    pub attempt: u32,
    /// `EL_{driverId}_{timestamp}`, then `…#2`, `…#3`.
    pub call_sid: String,
    /// The Call's status: `in_progress`, `completed` or `failed`.
    pub status: &'static str,
    pub failure_reason: Option<String>,
    #[serde(with = "rfc3339_utc")]
    pub call_start_time: OffsetDateTime,
}

impl From<AttemptView> for AttemptEntry {
    fn from(a: AttemptView) -> Self {
        Self {
            attempt: a.attempt,
            call_sid: a.call_sid.to_string(),
            status: a.status.as_str(),
            failure_reason: a.failure_reason,
            call_start_time: a.call_start_time,
        }
    }
}

/// One recipient (a driver of the batch).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecipientEntry {
    #[serde(rename = "driverId")]
    pub driver_id: i64,
    #[serde(rename = "driverName")]
    pub driver_name: String,
    /// E.164, as normalized.
    #[serde(rename = "phoneNumber")]
    pub phone_number: String,
    /// IANA name, as resolved when the batch was created.
    pub time_zone: String,
    /// `scheduled`, `dialing`, `in_call`, `completed`, `failed` or `cancelled`.
    #[schema(example = "scheduled")]
    pub state: &'static str,
    /// When the next attempt is due (ISO 8601 UTC); null unless `scheduled`.
    #[serde(with = "rfc3339_utc::option")]
    #[schema(value_type = Option<String>)]
    pub next_attempt_at: Option<OffsetDateTime>,
    /// Why the recipient `failed` (`expired`, or the last attempt's reason).
    pub failure_reason: Option<String>,
    /// The pre-dial check's last answer; null before the first.
    pub last_check: Option<LastCheckView>,
    /// Oldest first.
    pub attempts: Vec<AttemptEntry>,
}

impl From<RecipientView> for RecipientEntry {
    fn from(r: RecipientView) -> Self {
        Self {
            driver_id: r.driver_id,
            driver_name: r.driver_name,
            phone_number: r.phone_number,
            time_zone: r.time_zone,
            state: r.state.as_str(),
            next_attempt_at: r.next_attempt_at,
            failure_reason: r.failure_reason,
            last_check: r.last_check.map(LastCheckView::from),
            attempts: r.attempts.into_iter().map(AttemptEntry::from).collect(),
        }
    }
}

/// A batch with every recipient and attempt.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"batch_id": "0193a4c2-7b1e-7d3a-9f00-1c2d3e4f5a6b", "created_at": "2024-11-21T10:00:00.123Z", "call_type": "violation", "timestamp": "2024-11-21T10:00:00Z", "status": "active", "counts": {"scheduled": 1, "dialing": 0, "in_call": 0, "completed": 0, "failed": 0, "cancelled": 0}, "drivers": [{"driverId": 333, "driverName": "Test Driver", "phoneNumber": "+15551234567", "time_zone": "America/Chicago", "state": "scheduled", "next_attempt_at": "2024-11-21T14:00:00Z", "failure_reason": null, "last_check": null, "attempts": []}]}))]
pub struct BatchViewBody {
    /// A UUID (v7, time-ordered).
    pub batch_id: String,
    #[serde(with = "rfc3339_utc")]
    pub created_at: OffsetDateTime,
    pub call_type: String,
    /// The request's timestamp, as given.
    pub timestamp: String,
    /// `cancelled` once cancel was asked, else `active` while any recipient is
    /// `scheduled`, `dialing` or `in_call`, else `done`.
    #[schema(example = "active")]
    pub status: &'static str,
    pub counts: CountsView,
    /// In request order.
    pub drivers: Vec<RecipientEntry>,
}

impl From<BatchView> for BatchViewBody {
    fn from(b: BatchView) -> Self {
        Self {
            batch_id: b.batch_id.to_string(),
            created_at: b.created_at,
            call_type: b.call_type,
            timestamp: b.timestamp,
            status: b.status.as_str(),
            counts: b.counts.into(),
            drivers: b.drivers.into_iter().map(RecipientEntry::from).collect(),
        }
    }
}

/// One batch of the listing.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchSummaryView {
    pub batch_id: String,
    #[serde(with = "rfc3339_utc")]
    pub created_at: OffsetDateTime,
    pub status: &'static str,
    pub counts: CountsView,
}

impl From<BatchSummary> for BatchSummaryView {
    fn from(b: BatchSummary) -> Self {
        Self {
            batch_id: b.batch_id.to_string(),
            created_at: b.created_at,
            status: b.status.as_str(),
            counts: b.counts.into(),
        }
    }
}

/// One page of batches, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchListView {
    pub batches: Vec<BatchSummaryView>,
    /// Send it back as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}
