//! Ports of durable batches: where recipients live ([`BatchRepository`]) and who says
//! whether a driver may be rung now ([`PredialCheck`]).

use std::time::Duration;

use time::OffsetDateTime;

use super::RepositoryError;
use crate::models::{
    BatchId, BatchListQuery, BatchPage, BatchView, CallSid, ConversationId, DialRules, DriverCall,
    Due, LastCheck, PhoneNumber, RecipientState, StateCounts,
};

/// A batch to write, every recipient resolved (rules and first due time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBatch {
    pub batch_id: BatchId,
    pub created_at: OffsetDateTime,
    pub call_type: String,
    pub timestamp: String,
    /// In request order.
    pub recipients: Vec<NewRecipient>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecipient {
    /// The driver with attempt 1's call_sid.
    pub driver: DriverCall,
    pub rules: DialRules,
    /// When attempt 1 is due.
    pub first_due: OffsetDateTime,
}

/// A recipient claimed by a dialer for its next attempt (state `dialing`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedAttempt {
    pub recipient_id: i64,
    pub batch_id: BatchId,
    /// 1-based.
    pub attempt: u32,
    /// The driver, with this attempt's call_sid (`EL_{driverId}_{timestamp}[#n]`).
    pub driver: DriverCall,
    pub rules: DialRules,
    /// When the attempt was due (dialer lag = request sent − due).
    pub due_at: OffsetDateTime,
    /// Whether the claim already wrote the attempt's Call (`in_progress`). When it did not
    /// (a pre-dial check comes first), [`BatchRepository::start_attempt`] writes it.
    pub call_written: bool,
}

impl ClaimedAttempt {
    pub fn call_sid(&self) -> &CallSid {
        &self.driver.call_sid
    }
}

/// What to claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimRequest {
    pub now: OffsetDateTime,
    pub limit: u32,
    /// Only this batch's recipients (the batch-call endpoint dials its own).
    pub batch_id: Option<BatchId>,
    /// Write each attempt's Call in the claim's transaction (no pre-dial check); otherwise
    /// the claim only holds the recipient and the Call is written after the check.
    pub write_calls: bool,
}

/// What a sweep changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepOutcome {
    /// Recipients whose attempt's Call had ended without being settled.
    pub settled: u64,
    /// Scheduled recipients past their expiry, now `failed` (`expired`).
    pub expired: u64,
    /// Claims whose holder died before writing the attempt's Call, scheduled again (no
    /// Call was written, so nobody was dialed).
    pub released: u64,
}

/// Persistence of batches and recipients.
///
/// Implementations retry transient failures only where a retry cannot duplicate work,
/// like [`super::CallRepository`], and then return [`RepositoryError::Unavailable`].
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait::async_trait]
pub trait BatchRepository: Send + Sync + 'static {
    /// Writes the batch and all its recipients, `scheduled` at their first due time, in
    /// one transaction (one INSERT per table).
    ///
    /// # Errors
    /// MUST return [`RepositoryError::Conflict`], writing nothing, when an attempt-1
    /// call_sid already belongs to a Call or to another recipient.
    async fn create_batch(&self, batch: &NewBatch) -> Result<BatchView, RepositoryError>;

    async fn get_batch(&self, batch_id: &BatchId) -> Result<Option<BatchView>, RepositoryError>;

    /// One page of batches, newest first (`created_at` DESC, then id DESC), cut by
    /// position like [`super::CallRepository::list_calls`].
    async fn list_batches(&self, query: &BatchListQuery) -> Result<BatchPage, RepositoryError>;

    /// Marks the batch cancelled and every `scheduled` recipient `cancelled`; `dialing`
    /// and `in_call` ones finish their call and are never re-dialed. Idempotent.
    /// `None` for an unknown batch.
    async fn cancel_batch(
        &self,
        batch_id: &BatchId,
        now: OffsetDateTime,
    ) -> Result<Option<BatchView>, RepositoryError>;

    /// Claims up to `limit` recipients that are `scheduled`, due at `now` and not expired
    /// (oldest due first) so that no other transaction can (`FOR UPDATE SKIP LOCKED`):
    /// each becomes `dialing` for its next attempt, and with `write_calls` the attempt's
    /// Call is written `in_progress` in the same transaction. Committed before returning.
    /// Due recipients of a cancelled batch become `cancelled`; expired ones `failed`.
    async fn claim_due(
        &self,
        request: &ClaimRequest,
    ) -> Result<Vec<ClaimedAttempt>, RepositoryError>;

    /// Writes the attempt's Call (`in_progress`, no conversation_id) for a claim made
    /// without `write_calls`, if the recipient is still `dialing` that attempt. `false`
    /// when the claim no longer holds (cancelled, released): then nobody may dial.
    async fn start_attempt(
        &self,
        claimed: &ClaimedAttempt,
        now: OffsetDateTime,
    ) -> Result<bool, RepositoryError>;

    /// Keeps the pre-dial check's answer as `last_check`; with `next`, the recipient
    /// (still `dialing` this attempt, no Call written) goes back to `scheduled` at that
    /// time, or `failed` (`expired`). No attempt is used.
    async fn record_check(
        &self,
        claimed: &ClaimedAttempt,
        check: &LastCheck,
        next: Option<Due>,
    ) -> Result<RecipientState, RepositoryError>;

    /// The outbound request succeeded: links the conversation_id to the attempt's Call
    /// and moves the recipient from `dialing` to `in_call` (unless it was settled meanwhile).
    ///
    /// # Errors
    /// [`RepositoryError::Conflict`] when another Call holds this conversation_id.
    async fn record_placed(
        &self,
        claimed: &ClaimedAttempt,
        conversation_id: &ConversationId,
    ) -> Result<RecipientState, RepositoryError>;

    /// The outbound request failed: the attempt's Call becomes `failed` with `reason` (if
    /// still `in_progress`) and the recipient is settled, in one transaction.
    async fn record_dial_failure(
        &self,
        claimed: &ClaimedAttempt,
        reason: &str,
        redialable: bool,
        now: OffsetDateTime,
    ) -> Result<RecipientState, RepositoryError>;

    /// Settles the recipient whose attempt this Call is, from the Call's final status:
    /// `completed` → recipient `completed` whatever its state (a scheduled re-dial is
    /// dropped); `failed` (the recipient's current attempt) → next attempt by
    /// [`crate::models::decide_settlement`], else `failed`/`cancelled`. Idempotent.
    /// `None` when the Call is no batch attempt.
    async fn settle_call(
        &self,
        call_sid: &CallSid,
        redialable: bool,
        now: OffsetDateTime,
    ) -> Result<Option<RecipientState>, RepositoryError>;

    /// How many recipients of all batches are in each state (the `/metrics` gauge).
    async fn recipient_counts(&self) -> Result<StateCounts, RepositoryError>;

    /// The safety net: settles recipients whose attempt's Call ended, fails (`expired`)
    /// scheduled recipients past their expiry, and schedules again (at once) claims that
    /// never wrote their Call and were taken before `release_claims_before`.
    async fn sweep(
        &self,
        now: OffsetDateTime,
        release_claims_before: OffsetDateTime,
    ) -> Result<SweepOutcome, RepositoryError>;

    /// The batch and the attempt number of the Call with this call_sid (the console's
    /// call page); `None` for a Call that is no batch's attempt, or no Call.
    async fn attempt_of_call(
        &self,
        call_sid: &CallSid,
    ) -> Result<Option<(BatchId, u32)>, RepositoryError>;
}

/// Asked right before each attempt (the dispatcher system knows the driver's duty status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PredialRequest {
    pub batch_id: BatchId,
    pub call_sid: CallSid,
    pub attempt: u32,
    pub driver_id: i64,
    pub phone_number: PhoneNumber,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PredialAnswer {
    /// 2xx `{"eligible":true}`: dial.
    Eligible,
    /// `{"eligible":false}`: not now; due again after `retry_after` (default 900 s).
    NotEligible { retry_after: Duration },
    /// Anything else (timeout, non-2xx, garbage): the check fails closed.
    Failed { detail: String },
}

#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait::async_trait]
pub trait PredialCheck: Send + Sync + 'static {
    /// Never fails: every problem is [`PredialAnswer::Failed`].
    async fn check(&self, request: &PredialRequest) -> PredialAnswer;
}
