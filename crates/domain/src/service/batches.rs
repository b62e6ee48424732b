//! Durable batches: create (resolve each recipient's rules and first due time), read,
//! cancel, and the dialer (claim → pre-dial check → dial → record), plus the hook that
//! settles a recipient when its attempt's Call ends.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use super::StoreFailure;
use super::place_calls::outbound_call;
use super::prompt::CallContext;
use crate::models::{
    Batch, BatchDefaults, BatchId, BatchListQuery, BatchPage, BatchView, CallSid, CheckResult,
    ConversationId, DialRules, DriverCall, Due, LastCheck, RecipientState, attempt_call_sid,
    first_due, mask_phone_numbers,
};
use crate::ports::{
    BatchRepository, BoxError, ClaimRequest, ClaimedAttempt, NewBatch, NewRecipient, PredialAnswer,
    PredialCheck, PredialRequest, RepositoryError, SweepOutcome, Telephony,
};

/// A `notBefore` further ahead than this is refused.
pub const MAX_NOT_BEFORE_AHEAD: Duration = Duration::from_secs(400 * 86_400);
/// A pre-dial check that failed (fails closed) is asked again after this long.
pub const CHECK_FAILED_RETRY: Duration = Duration::from_secs(60);
/// A claim that wrote no Call for this long belonged to an instance that died (the
/// pre-dial check is bounded far below this); the sweep schedules it again.
pub const STALE_CLAIM: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum CreateBatchError {
    /// `driver: None` is the schedule's notBefore, `Some(i)` the i-th driver's.
    #[error("notBefore must be at most 400 days ahead")]
    NotBeforeTooFar { driver: Option<usize> },
    /// No instant in the window for over a year (cannot happen for a valid window).
    #[error("the call window never opens")]
    NeverDue { driver: usize },
    /// An attempt-1 call_sid is taken (a retried request): nothing was written.
    #[error("call_sid already exists: {0}")]
    AlreadyExists(String),
    #[error("database unavailable")]
    Unavailable(#[source] BoxError),
    #[error("unexpected error while creating the batch")]
    Unexpected(#[source] BoxError),
}

impl From<RepositoryError> for CreateBatchError {
    fn from(e: RepositoryError) -> Self {
        match e {
            RepositoryError::Conflict(what) => Self::AlreadyExists(what),
            RepositoryError::Unavailable(inner) => Self::Unavailable(inner),
            other => Self::Unexpected(Box::new(other)),
        }
    }
}

/// `POST /batches`: every driver becomes a recipient, committed with its first due time.
pub struct CreateBatch {
    batches: Arc<dyn BatchRepository>,
    defaults: BatchDefaults,
}

impl CreateBatch {
    pub fn new(batches: Arc<dyn BatchRepository>, defaults: BatchDefaults) -> Self {
        Self { batches, defaults }
    }

    /// Resolves each recipient's time zone (driver → schedule → default), window and
    /// delays (schedule → default) and expiry, then writes the batch in one transaction.
    #[tracing::instrument(name = "create_batch", skip_all, fields(drivers = batch.drivers().len()))]
    pub async fn execute(
        &self,
        batch: &Batch,
        now: OffsetDateTime,
    ) -> Result<BatchView, CreateBatchError> {
        let new = self.plan(batch, now)?;
        let view = self.batches.create_batch(&new).await?;
        tracing::info!(batch_id = %view.batch_id, "batch created");
        Ok(view)
    }

    /// The batch as it will be written (pure).
    pub fn plan(&self, batch: &Batch, now: OffsetDateTime) -> Result<NewBatch, CreateBatchError> {
        let limit = add(now, MAX_NOT_BEFORE_AHEAD);
        let schedule = batch.schedule();
        if schedule.not_before.is_some_and(|t| t > limit) {
            return Err(CreateBatchError::NotBeforeTooFar { driver: None });
        }
        let window = schedule.window.unwrap_or(self.defaults.window);
        let delays = schedule
            .redial_delays
            .clone()
            .unwrap_or_else(|| self.defaults.redial_delays.clone());
        let mut recipients = Vec::with_capacity(batch.drivers().len());
        for (index, d) in batch.drivers().iter().enumerate() {
            if d.not_before.is_some_and(|t| t > limit) {
                return Err(CreateBatchError::NotBeforeTooFar {
                    driver: Some(index),
                });
            }
            let time_zone = d
                .time_zone
                .clone()
                .or_else(|| schedule.time_zone.clone())
                .unwrap_or_else(|| self.defaults.time_zone.clone());
            let due = first_due(
                now,
                &[schedule.not_before, d.not_before],
                &time_zone,
                &window,
            )
            .ok_or(CreateBatchError::NeverDue { driver: index })?;
            let call_sid = attempt_call_sid(d.driver_id, batch.timestamp(), 1)
                .map_err(|e| CreateBatchError::Unexpected(Box::new(e)))?;
            recipients.push(NewRecipient {
                driver: DriverCall {
                    call_sid,
                    driver_id: d.driver_id,
                    driver_name: d.driver_name.clone(),
                    phone_number: d.phone_number.clone(),
                    custom_rules: d.custom_rules.clone(),
                    trip_id: d.trip_id.clone(),
                    violations: d.violations.clone(),
                },
                rules: DialRules {
                    time_zone,
                    window,
                    redial_delays: delays.clone(),
                    expires_at: add(due, self.defaults.expiry),
                },
                first_due: due,
            });
        }
        Ok(NewBatch {
            batch_id: BatchId::generate(),
            created_at: now,
            call_type: batch.call_type().to_owned(),
            timestamp: batch.timestamp().to_owned(),
            recipients,
        })
    }
}

pub(crate) fn add(at: OffsetDateTime, d: Duration) -> OffsetDateTime {
    crate::models::add_duration(at, d)
}

/// `GET /batches/{id}` and `GET /batches` (the console reads through these too).
pub struct ReadBatches {
    batches: Arc<dyn BatchRepository>,
}

impl ReadBatches {
    pub fn new(batches: Arc<dyn BatchRepository>) -> Self {
        Self { batches }
    }

    pub async fn get(&self, batch_id: &BatchId) -> Result<Option<BatchView>, StoreFailure> {
        Ok(self.batches.get_batch(batch_id).await?)
    }

    pub async fn list(&self, query: &BatchListQuery) -> Result<BatchPage, StoreFailure> {
        Ok(self.batches.list_batches(query).await?)
    }
}

/// `POST /batches/{id}/cancel`.
pub struct CancelBatch {
    batches: Arc<dyn BatchRepository>,
}

impl CancelBatch {
    pub fn new(batches: Arc<dyn BatchRepository>) -> Self {
        Self { batches }
    }

    /// `None` for an unknown batch. Asking again changes nothing.
    pub async fn execute(
        &self,
        batch_id: &BatchId,
        now: OffsetDateTime,
    ) -> Result<Option<BatchView>, StoreFailure> {
        Ok(self.batches.cancel_batch(batch_id, now).await?)
    }
}

/// What became of one claimed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialOutcome {
    /// The provider placed the call (the recipient is `in_call`).
    Placed {
        conversation_id: ConversationId,
        /// The provider's own (Twilio) call id, when it sends one.
        provider_call_id: Option<String>,
    },
    /// The outbound request failed; the Call is `failed` with `reason` and the recipient
    /// was settled into `state` (`scheduled` for a re-dial, `failed`, `cancelled`, or
    /// `completed` when the attempt turned out to have completed meanwhile).
    Failed {
        reason: String,
        redialable: bool,
        state: RecipientState,
    },
    /// The pre-dial check said not now (or failed): no Call, no attempt used.
    NotDialed { check: CheckResult, next: Due },
    /// The claim no longer held when the Call was to be written (the batch was
    /// cancelled): nobody was dialed.
    Abandoned,
    /// The database failed before anything was dialed: the claim is released by the
    /// sweep, or the stale-call repair settles the Call.
    StoreFailed { reason: String },
}

/// The dialer's steps; the server owns the timer and the bound on requests in flight.
pub struct Dialer {
    batches: Arc<dyn BatchRepository>,
    telephony: Arc<dyn Telephony>,
    predial: Option<Arc<dyn PredialCheck>>,
    context: CallContext,
}

impl Dialer {
    pub fn new(
        batches: Arc<dyn BatchRepository>,
        telephony: Arc<dyn Telephony>,
        predial: Option<Arc<dyn PredialCheck>>,
        context: CallContext,
    ) -> Self {
        Self {
            batches,
            telephony,
            predial,
            context,
        }
    }

    /// Claims up to `limit` due recipients of any batch (committed before returning; with
    /// no pre-dial check each attempt's Call is written in the claim's transaction).
    pub async fn claim(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<ClaimedAttempt>, StoreFailure> {
        self.claim_in(None, now, limit).await
    }

    /// Claims the due recipients of one batch (the batch-call endpoint dials its own).
    pub async fn claim_batch(
        &self,
        batch_id: &BatchId,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<ClaimedAttempt>, StoreFailure> {
        self.claim_in(Some(*batch_id), now, limit).await
    }

    async fn claim_in(
        &self,
        batch_id: Option<BatchId>,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<ClaimedAttempt>, StoreFailure> {
        let request = ClaimRequest {
            now,
            limit,
            batch_id,
            write_calls: self.predial.is_none(),
        };
        Ok(self.batches.claim_due(&request).await?)
    }

    /// Pre-dial check (when configured) → write the Call if the claim did not → the one
    /// outbound request → record its answer (the recipient is settled on failure).
    #[tracing::instrument(name = "dial", skip_all, fields(batch_id = %claimed.batch_id, call_sid = %claimed.call_sid(), attempt = claimed.attempt))]
    pub async fn dial(&self, claimed: &ClaimedAttempt) -> DialOutcome {
        if let Some(predial) = &self.predial {
            if let Some(outcome) = self.check(predial.as_ref(), claimed).await {
                return outcome;
            }
        }
        if !claimed.call_written {
            match self
                .batches
                .start_attempt(claimed, OffsetDateTime::now_utc())
                .await
            {
                Ok(true) => {}
                Ok(false) => return DialOutcome::Abandoned,
                Err(e) => return store_failed("could not record the attempt's call", &e),
            }
        }
        let call = outbound_call(&claimed.driver, &self.context);
        match self.telephony.place_call(&call).await {
            Ok(placed) => {
                if let Err(e) = self
                    .batches
                    .record_placed(claimed, &placed.conversation_id)
                    .await
                {
                    // The call is happening; the post-call webhook links it by call_sid
                    // and settles the recipient.
                    tracing::error!(error.message = %e, "call placed but not recorded");
                }
                tracing::info!(conversation_id = %placed.conversation_id, "attempt placed");
                DialOutcome::Placed {
                    conversation_id: placed.conversation_id,
                    provider_call_id: placed.provider_call_id,
                }
            }
            Err(e) => {
                let reason = mask_phone_numbers(&e.to_string());
                let redialable = e.is_redialable();
                tracing::warn!(reason = %reason, redialable, "attempt not placed");
                match self
                    .batches
                    .record_dial_failure(claimed, &reason, redialable, OffsetDateTime::now_utc())
                    .await
                {
                    Ok(state) => DialOutcome::Failed {
                        reason,
                        redialable,
                        state,
                    },
                    Err(db) => {
                        // The Call stays in_progress: the stale-call repair fails it and
                        // its settle hook re-dials by the rule.
                        tracing::error!(error.message = %db, "could not record the failed attempt");
                        DialOutcome::Failed {
                            reason,
                            redialable,
                            state: RecipientState::Dialing,
                        }
                    }
                }
            }
        }
    }

    /// `Some` when the attempt must not be dialed now.
    async fn check(
        &self,
        predial: &dyn PredialCheck,
        claimed: &ClaimedAttempt,
    ) -> Option<DialOutcome> {
        let request = PredialRequest {
            batch_id: claimed.batch_id,
            call_sid: claimed.call_sid().clone(),
            attempt: claimed.attempt,
            driver_id: claimed.driver.driver_id,
            phone_number: claimed.driver.phone_number.clone(),
        };
        let answer = predial.check(&request).await;
        let at = OffsetDateTime::now_utc();
        let (check, detail, wait) = match answer {
            PredialAnswer::Eligible => (CheckResult::Eligible, None, None),
            PredialAnswer::NotEligible { retry_after } => {
                (CheckResult::NotEligible, None, Some(retry_after))
            }
            PredialAnswer::Failed { detail } => (
                CheckResult::Failed,
                Some(mask_phone_numbers(&detail)),
                Some(CHECK_FAILED_RETRY),
            ),
        };
        tracing::info!(result = ?check, "pre-dial check");
        let last = LastCheck {
            at,
            result: check,
            detail,
        };
        let next = wait.map(|w| claimed.rules.due_from(add(at, w)));
        match self.batches.record_check(claimed, &last, next).await {
            Ok(_) => {}
            // Not dialing is the safe side: the sweep releases the claim later.
            Err(e) if next.is_some() => {
                tracing::error!(error.message = %e, "could not record the pre-dial check");
            }
            Err(e) => return Some(store_failed("could not record the pre-dial check", &e)),
        }
        next.map(|next| DialOutcome::NotDialed { check, next })
    }

    /// The safety net: settles attempts whose Call ended unnoticed, expires overdue
    /// recipients, releases claims of instances that died before writing their Call.
    pub async fn sweep(&self, now: OffsetDateTime) -> Result<SweepOutcome, StoreFailure> {
        let stale = now
            .checked_sub(time::Duration::try_from(STALE_CLAIM).unwrap_or(time::Duration::MAX))
            .unwrap_or(now);
        Ok(self.batches.sweep(now, stale).await?)
    }
}

fn store_failed(what: &str, e: &RepositoryError) -> DialOutcome {
    tracing::error!(error.message = %e, "{what}; not dialing");
    DialOutcome::StoreFailed {
        reason: format!("{what}: {e}"),
    }
}

/// Settles the recipient of a batch attempt whose Call just ended (ApplyPostCall,
/// ReconcileStale). Re-dialable: a failure reported by the provider or the stale-call
/// repair always is.
pub(crate) async fn settle_ended_call(
    batches: &dyn BatchRepository,
    call_sid: &CallSid,
) -> Result<(), StoreFailure> {
    match batches
        .settle_call(call_sid, true, OffsetDateTime::now_utc())
        .await
    {
        Ok(Some(state)) => {
            tracing::debug!(%call_sid, state = %state, "batch recipient settled");
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
