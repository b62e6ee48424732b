//! Ports: what the domain needs from the outside world. Every trait is object safe
//! (`Arc<dyn CallRepository>`), `Send + Sync`, and mockable with the `mocks` feature.
//! Adapters translate their own errors into the error types defined here.

use std::time::Duration;

use time::OffsetDateTime;

use crate::models::{
    Call, CallListQuery, CallOutcome, CallPage, CallSid, CallStatus, CallTranscription,
    ConversationId, EventTurn, NewCall, NewTurn,
};

pub mod batches;
pub mod console_sessions;
pub mod telephony;

pub use batches::{
    BatchRepository, ClaimRequest, ClaimedAttempt, NewBatch, NewRecipient, PredialAnswer,
    PredialCheck, PredialRequest, SweepOutcome,
};
#[cfg(any(test, feature = "mocks"))]
pub use batches::{MockBatchRepository, MockPredialCheck};

#[cfg(any(test, feature = "mocks"))]
pub use console_sessions::MockConsoleSessions;
pub use console_sessions::{ConsoleSessions, SessionHash};
#[cfg(any(test, feature = "mocks"))]
pub use telephony::MockTelephony;
pub use telephony::{ConversationState, OutboundCall, PlacedCall, Telephony, TelephonyError};

/// Boxed cause carried by the catch-all variants, so chains are kept (never a `String`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    /// No Call has this call_sid.
    #[error("call not found")]
    NotFound,
    /// The Call exists but cannot take turns: no conversation_id yet, or it failed.
    #[error("call cannot take turns (status {status}, or no conversation_id)")]
    Incomplete { status: CallStatus },
    /// A unique key (call_sid or conversation_id) already belongs to another Call.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database could not be reached, even after the adapter's bounded retries.
    #[error("database unavailable")]
    Unavailable(#[source] BoxError),
    /// Anything else: a bug or a broken invariant.
    #[error("unexpected repository error")]
    Unexpected(#[source] BoxError),
}

/// Ids of a stored turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredTurn {
    pub transcription_id: i64,
    pub sequence_number: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// A new row was written with the next sequence number.
    Created(StoredTurn),
    /// The same turn was stored before; nothing was written.
    Duplicate(StoredTurn),
}

impl AppendOutcome {
    pub fn stored(&self) -> StoredTurn {
        match self {
            Self::Created(t) | Self::Duplicate(t) => *t,
        }
    }
}

/// How a Call ends, applied by [`CallRepository::finish_call`] in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallFinish {
    /// ElevenLabs' conversation_id, linked to a Call that has none yet.
    pub conversation_id: Option<ConversationId>,
    pub ending: Ending,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The call took place. Sets `completed` (also on a Call we had marked `failed`: the
    /// provider's word is final), the end time and the outcome, and reconciles the stored
    /// transcript with ElevenLabs' (see [`crate::service::transcript_merge`]). On a Call
    /// already `completed` only the outcome and the transcript are brought up to date.
    Completed {
        end: OffsetDateTime,
        outcome: CallOutcome,
        /// Start of the conversation: inserted turns are timed from it.
        start: OffsetDateTime,
        transcript: Vec<EventTurn>,
    },
    /// The call never connected. Applies to an `in_progress` Call only.
    Failed { end: OffsetDateTime, reason: String },
}

/// What [`CallRepository::finish_call`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// The Call after the change.
    pub call: Call,
    pub status_changed: bool,
    pub turns_inserted: usize,
    pub turns_renumbered: usize,
}

impl Finished {
    /// Nothing was written (a repeated event, or a final state the event may not change).
    pub fn is_unchanged(&self) -> bool {
        !self.status_changed && self.turns_inserted == 0 && self.turns_renumbered == 0
    }
}

/// Releases the lock behind a [`ReconcilerLease`]; implemented by the repository adapter.
#[async_trait::async_trait]
pub trait LeaseGuard: Send {
    /// Gives the lock up now (rather than when the guard is dropped).
    async fn release(self: Box<Self>);
}

/// Proof that this process is the only one reconciling stale Calls, for as long as it is
/// held. [`ReconcilerLease::release`] gives it up; dropping it also does, a little later
/// (the adapter closes what holds the lock).
pub struct ReconcilerLease {
    guard: Option<Box<dyn LeaseGuard>>,
}

impl ReconcilerLease {
    pub fn new(guard: Box<dyn LeaseGuard>) -> Self {
        Self { guard: Some(guard) }
    }

    /// A lease that holds nothing (mocks and single-process tests).
    pub fn unguarded() -> Self {
        Self { guard: None }
    }

    pub async fn release(mut self) {
        if let Some(guard) = self.guard.take() {
            guard.release().await;
        }
    }
}

impl std::fmt::Debug for ReconcilerLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReconcilerLease")
            .field("guarded", &self.guard.is_some())
            .finish()
    }
}

/// Waiting, for the use cases that must (a turn waiting for its Call's conversation_id).
/// The adapter owns the timer (tokio's in the server), so the domain needs no runtime.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait::async_trait]
pub trait Timer: Send + Sync + 'static {
    async fn sleep(&self, duration: Duration);
}

/// Spacing of requests to a provider: [`Pacer::wait`] returns when the next request may
/// start, whatever the concurrency (the server's `Pace` lets one start every 200 ms).
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait::async_trait]
pub trait Pacer: Send + Sync + 'static {
    async fn wait(&self);
}

/// Persistence of Calls and their transcript turns.
///
/// Implementations retry transient failures (lost connection, serialization failure,
/// deadlock, pool timeout) a bounded number of times, only where a retry cannot
/// duplicate work, and then return [`RepositoryError::Unavailable`].
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait::async_trait]
pub trait CallRepository: Send + Sync + 'static {
    /// Writes a new Call, `in_progress`, with no conversation_id.
    ///
    /// # Errors
    /// MUST return [`RepositoryError::Conflict`] when the call_sid already exists.
    async fn create_call(&self, new: &NewCall) -> Result<Call, RepositoryError>;

    async fn get_by_call_sid(&self, call_sid: &CallSid) -> Result<Option<Call>, RepositoryError>;

    async fn get_by_conversation_id(
        &self,
        conversation_id: &ConversationId,
    ) -> Result<Option<Call>, RepositoryError>;

    /// Stores ElevenLabs' conversation_id on the Call. Setting the same value again is a no-op.
    ///
    /// # Errors
    /// [`RepositoryError::NotFound`] for an unknown call_sid; [`RepositoryError::Conflict`]
    /// when the Call already has another conversation_id or another Call has this one.
    async fn set_conversation_id(
        &self,
        call_sid: &CallSid,
        conversation_id: &ConversationId,
    ) -> Result<Call, RepositoryError>;

    /// Sets the status, the end time and the failure reason (all three as given).
    ///
    /// # Errors
    /// [`RepositoryError::NotFound`] for an unknown call_sid.
    async fn set_status(
        &self,
        call_sid: &CallSid,
        status: CallStatus,
        call_end_time: Option<OffsetDateTime>,
        failure_reason: Option<String>,
    ) -> Result<Call, RepositoryError>;

    /// Resolves call_sid → conversation_id; `None` while the Call has none.
    ///
    /// # Errors
    /// [`RepositoryError::NotFound`] for an unknown call_sid.
    async fn conversation_id_for(
        &self,
        call_sid: &CallSid,
    ) -> Result<Option<ConversationId>, RepositoryError>;

    /// The Call's turns in sequence order (empty while it has no conversation_id).
    ///
    /// # Errors
    /// [`RepositoryError::NotFound`] for an unknown call_sid.
    async fn list_turns(
        &self,
        call_sid: &CallSid,
    ) -> Result<Vec<CallTranscription>, RepositoryError>;

    /// Appends a turn to the Call's transcript in one transaction: the next sequence
    /// number (gapless 1..N per call, race-free across connections and processes), or,
    /// when the same speaker, timestamp and text were stored before, the stored ids.
    ///
    /// # Errors
    /// [`RepositoryError::NotFound`] for an unknown call_sid;
    /// [`RepositoryError::Incomplete`] for a Call without conversation_id or a failed Call.
    async fn append_turn(&self, turn: &NewTurn) -> Result<AppendOutcome, RepositoryError>;

    /// Ends a Call in one transaction under the Call's row lock (the lock appends take, so
    /// a turn arriving meanwhile waits and then gets the next number): links the
    /// conversation_id, applies the [`Ending`], and for `Completed` reconciles the
    /// transcript. Idempotent: applying the same finish again changes nothing.
    ///
    /// # Errors
    /// [`RepositoryError::NotFound`] for an unknown call_sid; [`RepositoryError::Conflict`]
    /// when the Call has another conversation_id or another Call has this one.
    async fn finish_call(
        &self,
        call_sid: &CallSid,
        finish: &CallFinish,
    ) -> Result<Finished, RepositoryError>;

    /// Checks that the database answers (readiness).
    async fn ping(&self) -> Result<(), RepositoryError>;

    /// One page of Calls matching `query.filter`, newest first (`call_start_time` DESC,
    /// then `id` DESC), starting strictly after `query.after`.
    ///
    /// MUST cut pages by position (keyset), never by offset: walking the pages with each
    /// page's `next` visits every Call that existed when the walk started exactly once,
    /// whatever is inserted meanwhile. `next` MUST be `None` on the last page (no link to
    /// an empty page).
    async fn list_calls(&self, query: &CallListQuery) -> Result<CallPage, RepositoryError>;

    /// Calls still `in_progress` that started before `started_before` and are due for a
    /// check (never checked, or their [`CallRepository::defer_reconcile`] time has come),
    /// at most `limit` of them: never checked first, then by the time their check became
    /// due, then oldest first (`call_start_time`, then `id`).
    async fn stale_calls(
        &self,
        started_before: OffsetDateTime,
        limit: i64,
    ) -> Result<Vec<Call>, RepositoryError>;

    /// Notes that the stale Call was asked about and is still unfinished: it is not due
    /// for another check before `next_check_at`.
    async fn defer_reconcile(
        &self,
        call_sid: &CallSid,
        next_check_at: OffsetDateTime,
    ) -> Result<(), RepositoryError>;

    /// Takes the stale-call reconciler's lock without waiting: `None` when another process
    /// (or another lease in this one) holds it. The lock MUST be shared by every instance
    /// using the same tables and MUST be released when its holder dies.
    async fn try_lock_reconciler(&self) -> Result<Option<ReconcilerLease>, RepositoryError>;
}
