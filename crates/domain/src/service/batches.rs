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
    ConversationId, DialRules, DriverCall, Due, LastCheck, RecipientState, StateCounts,
    attempt_call_sid, first_due, mask_phone_numbers,
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

    /// The batch and attempt of a Call (`None` when it is no batch's attempt).
    pub async fn attempt_of(
        &self,
        call_sid: &CallSid,
    ) -> Result<Option<(BatchId, u32)>, StoreFailure> {
        Ok(self.batches.attempt_of_call(call_sid).await?)
    }

    /// Recipients of all batches by state (for the metrics).
    pub async fn recipient_counts(&self) -> Result<StateCounts, StoreFailure> {
        Ok(self.batches.recipient_counts().await?)
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
    /// cancelled, the window closed or the recipient expired during the check): nobody
    /// was dialed; the recipient is `cancelled`, `scheduled` again or `failed`.
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
        // Whole microseconds, as stored: the due time computed from it is exact.
        let now = OffsetDateTime::now_utc();
        let at = now
            .replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
            .unwrap_or(now);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{
        BatchStatus, CallWindow, Driver, PhoneNumber, RedialDelays, Schedule, StateCounts,
        TimeZone, Violation, WallTime,
    };
    use crate::ports::{
        MockBatchRepository, MockPredialCheck, MockTelephony, PlacedCall, TelephonyError,
    };
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2024-06-01 15:00 UTC);

    fn driver(id: i64) -> Driver {
        Driver {
            driver_id: id,
            driver_name: format!("Driver {id}"),
            phone_number: PhoneNumber::parse("+15551234567").expect("phone"),
            custom_rules: String::new(),
            trip_id: "trip".into(),
            violations: vec![Violation {
                kind: "temperature".into(),
                description: "Reefer at 45F".into(),
            }],
            time_zone: None,
            not_before: None,
        }
    }

    fn tz(name: &str) -> TimeZone {
        TimeZone::parse(name).expect("tz")
    }

    fn view(batch: &NewBatch) -> BatchView {
        BatchView {
            batch_id: batch.batch_id,
            created_at: batch.created_at,
            call_type: batch.call_type.clone(),
            timestamp: batch.timestamp.clone(),
            status: BatchStatus::Active,
            counts: StateCounts::default(),
            drivers: Vec::new(),
        }
    }

    fn defaults() -> BatchDefaults {
        BatchDefaults {
            time_zone: tz("America/New_York"),
            window: CallWindow::parse("08:00-20:00").expect("window"),
            redial_delays: RedialDelays::new(vec![60]).expect("delays"),
            expiry: Duration::from_secs(3600),
        }
    }

    fn create(repo: MockBatchRepository) -> CreateBatch {
        CreateBatch::new(Arc::new(repo), defaults())
    }

    #[test]
    fn each_recipient_resolves_zone_window_delays_and_expiry_from_driver_schedule_defaults() {
        let mut own = driver(1);
        own.time_zone = Some(tz("America/Chicago"));
        own.not_before = Some(datetime!(2024-06-02 01:00 UTC));
        let plain = driver(2);
        let b = Batch::new(
            "violation".into(),
            "ts".into(),
            vec![own, plain.clone()],
            Schedule::default(),
        )
        .expect("batch");
        let planned = create(MockBatchRepository::new())
            .plan(&b, NOW)
            .expect("plan");
        let (r1, r2) = (&planned.recipients[0], &planned.recipients[1]);
        assert_eq!(r1.rules.time_zone.name(), "America/Chicago", "the driver's");
        assert_eq!(r2.rules.time_zone.name(), "America/New_York", "the default");
        assert_eq!(r1.rules.window.to_string(), "08:00-20:00");
        assert_eq!(r1.rules.redial_delays.as_secs(), [60]);
        // 2024-06-02 01:00 UTC is 20:00 CDT on the 1st (the end): next morning 08:00 CDT.
        assert_eq!(r1.first_due, datetime!(2024-06-02 13:00 UTC));
        assert_eq!(r2.first_due, NOW, "11:00 EDT is inside");
        assert_eq!(r1.rules.expires_at, r1.first_due + time::Duration::hours(1));
        assert_eq!(r1.driver.call_sid.as_str(), "EL_1_ts");

        let scheduled = Batch::new(
            "violation".into(),
            "ts".into(),
            vec![plain],
            Schedule {
                time_zone: Some(tz("Europe/Berlin")),
                window: Some(CallWindow::Any),
                not_before: None,
                redial_delays: Some(RedialDelays::new(vec![]).expect("none")),
            },
        )
        .expect("batch");
        let planned = create(MockBatchRepository::new())
            .plan(&scheduled, NOW)
            .expect("plan");
        let r = &planned.recipients[0];
        assert_eq!(r.rules.time_zone.name(), "Europe/Berlin", "the schedule's");
        assert_eq!(r.rules.window, CallWindow::Any, "any overrides CALL_WINDOW");
        assert!(r.rules.redial_delays.as_secs().is_empty());
    }

    #[tokio::test]
    async fn a_not_before_more_than_400_days_ahead_is_refused_before_anything_is_written() {
        let mut repo = MockBatchRepository::new();
        repo.expect_create_batch().times(0);
        let use_case = create(repo);
        let limit = NOW + time::Duration::days(400);
        let mut far = driver(1);
        far.not_before = Some(limit + time::Duration::SECOND);
        let b = Batch::new(
            "v".into(),
            "ts".into(),
            vec![driver(0), far],
            Schedule::default(),
        )
        .expect("batch");
        assert!(matches!(
            use_case.execute(&b, NOW).await,
            Err(CreateBatchError::NotBeforeTooFar { driver: Some(1) })
        ));
        let b = Batch::new(
            "v".into(),
            "ts".into(),
            vec![driver(0)],
            Schedule {
                not_before: Some(limit + time::Duration::SECOND),
                ..Schedule::default()
            },
        )
        .expect("batch");
        assert!(matches!(
            use_case.plan(&b, NOW),
            Err(CreateBatchError::NotBeforeTooFar { driver: None })
        ));
        let mut edge = driver(1);
        edge.not_before = Some(limit);
        let b =
            Batch::new("v".into(), "ts".into(), vec![edge], Schedule::default()).expect("batch");
        assert!(use_case.plan(&b, NOW).is_ok(), "exactly 400 days is fine");
    }

    #[tokio::test]
    async fn create_writes_once_and_a_taken_call_sid_is_already_exists() {
        let b = Batch::new(
            "v".into(),
            "ts".into(),
            vec![driver(1)],
            Schedule::default(),
        )
        .expect("batch");
        let mut repo = MockBatchRepository::new();
        repo.expect_create_batch()
            .times(1)
            .withf(|n| n.recipients.len() == 1 && n.created_at == NOW)
            .returning(|n| Ok(view(n)));
        assert!(create(repo).execute(&b, NOW).await.is_ok());

        let mut repo = MockBatchRepository::new();
        repo.expect_create_batch()
            .returning(|_| Err(RepositoryError::Conflict("EL_1_ts".into())));
        assert!(matches!(
            create(repo).execute(&b, NOW).await,
            Err(CreateBatchError::AlreadyExists(_))
        ));
    }

    #[tokio::test]
    async fn read_and_cancel_pass_through_and_unknown_is_none() {
        let id = BatchId::generate();
        let mut repo = MockBatchRepository::new();
        repo.expect_get_batch().returning(|_| Ok(None));
        repo.expect_cancel_batch()
            .withf(move |b, at| *b == id && *at == NOW)
            .returning(|_, _| Ok(None));
        repo.expect_list_batches()
            .returning(|_| Err(RepositoryError::Unavailable("down".into())));
        let repo: Arc<dyn BatchRepository> = Arc::new(repo);
        assert_eq!(
            ReadBatches::new(repo.clone()).get(&id).await.ok(),
            Some(None)
        );
        assert!(matches!(
            ReadBatches::new(repo.clone())
                .list(&BatchListQuery::default())
                .await,
            Err(StoreFailure::Unavailable(_))
        ));
        assert_eq!(
            CancelBatch::new(repo).execute(&id, NOW).await.ok(),
            Some(None)
        );
    }

    fn rules(window: CallWindow, expires_in: time::Duration) -> DialRules {
        DialRules {
            time_zone: TimeZone::utc(),
            window,
            redial_delays: RedialDelays::new(vec![600]).expect("delays"),
            expires_at: OffsetDateTime::now_utc() + expires_in,
        }
    }

    fn claimed(call_written: bool, rules: DialRules) -> ClaimedAttempt {
        ClaimedAttempt {
            recipient_id: 7,
            batch_id: BatchId::generate(),
            attempt: 2,
            driver: DriverCall {
                call_sid: CallSid::parse("EL_1_ts#2").expect("sid"),
                driver_id: 1,
                driver_name: "Driver 1".into(),
                phone_number: PhoneNumber::parse("+15551234567").expect("phone"),
                custom_rules: String::new(),
                trip_id: "trip".into(),
                violations: Vec::new(),
            },
            rules,
            due_at: NOW,
            call_written,
        }
    }

    fn any_rules() -> DialRules {
        rules(CallWindow::Any, time::Duration::days(1))
    }

    fn context() -> CallContext {
        CallContext {
            dispatcher_name: "AGY Dispatcher".into(),
            transfer_to_number: "+18005551234".into(),
        }
    }

    fn dialer(
        repo: MockBatchRepository,
        telephony: MockTelephony,
        predial: Option<MockPredialCheck>,
    ) -> Dialer {
        Dialer::new(
            Arc::new(repo),
            Arc::new(telephony),
            predial.map(|p| Arc::new(p) as Arc<dyn PredialCheck>),
            context(),
        )
    }

    fn placed() -> Result<PlacedCall, TelephonyError> {
        Ok(PlacedCall {
            conversation_id: ConversationId::parse("conv_1").expect("conv"),
            provider_call_id: Some("CA1".into()),
        })
    }

    #[tokio::test]
    async fn without_a_predial_check_the_claim_writes_the_calls_and_with_one_it_holds() {
        let mut repo = MockBatchRepository::new();
        repo.expect_claim_due()
            .withf(|r| r.write_calls && r.batch_id.is_none() && r.limit == 8 && r.now == NOW)
            .times(1)
            .returning(|_| Ok(Vec::new()));
        let d = dialer(repo, MockTelephony::new(), None);
        assert!(d.claim(NOW, 8).await.expect("claim").is_empty());

        let id = BatchId::generate();
        let mut repo = MockBatchRepository::new();
        repo.expect_claim_due()
            .withf(move |r| !r.write_calls && r.batch_id == Some(id))
            .times(1)
            .returning(|_| Ok(Vec::new()));
        let d = dialer(repo, MockTelephony::new(), Some(MockPredialCheck::new()));
        assert!(d.claim_batch(&id, NOW, 8).await.expect("claim").is_empty());
    }

    #[tokio::test]
    async fn a_written_claim_is_dialed_once_and_its_conversation_recorded() {
        let mut repo = MockBatchRepository::new();
        repo.expect_start_attempt().times(0);
        repo.expect_record_placed()
            .withf(|c, conv| c.attempt == 2 && conv.as_str() == "conv_1")
            .times(1)
            .returning(|_, _| Ok(RecipientState::InCall));
        let mut telephony = MockTelephony::new();
        telephony
            .expect_place_call()
            .withf(|call| {
                call.call_sid.as_str() == "EL_1_ts#2"
                    && call.dynamic_variables.get("call_sid").map(String::as_str)
                        == Some("EL_1_ts#2")
            })
            .times(1)
            .returning(|_| placed());
        let outcome = dialer(repo, telephony, None)
            .dial(&claimed(true, any_rules()))
            .await;
        assert_eq!(
            outcome,
            DialOutcome::Placed {
                conversation_id: ConversationId::parse("conv_1").expect("conv"),
                provider_call_id: Some("CA1".into()),
            }
        );
    }

    #[tokio::test]
    async fn failures_are_classified_and_recorded_with_the_settled_state() {
        let cases = [
            (
                TelephonyError::Rejected {
                    status: 400,
                    detail: "bad number".into(),
                },
                false,
            ),
            (
                TelephonyError::Rejected {
                    status: 404,
                    detail: "no agent".into(),
                },
                false,
            ),
            (TelephonyError::Unauthorized { status: 401 }, false),
            (
                TelephonyError::Rejected {
                    status: 408,
                    detail: "timeout".into(),
                },
                true,
            ),
            (
                TelephonyError::RateLimited {
                    detail: "slow down".into(),
                },
                true,
            ),
            (TelephonyError::ServerError { status: 503 }, true),
            (
                TelephonyError::NotPlaced {
                    message: "busy".into(),
                },
                true,
            ),
            (TelephonyError::MissingConversationId, true),
            (TelephonyError::Timeout(Duration::from_secs(30)), true),
            (TelephonyError::Unreachable("refused".into()), true),
        ];
        for (error, redialable) in cases {
            assert_eq!(error.is_redialable(), redialable, "{error}");
            let expected_reason = error.to_string();
            let mut repo = MockBatchRepository::new();
            let reason = expected_reason.clone();
            repo.expect_record_dial_failure()
                .withf(move |c, r, re, _| c.attempt == 2 && r == reason && *re == redialable)
                .times(1)
                .returning(move |_, _, re, _| {
                    Ok(if re {
                        RecipientState::Scheduled
                    } else {
                        RecipientState::Failed
                    })
                });
            repo.expect_record_placed().times(0);
            let mut telephony = MockTelephony::new();
            let e = error.clone();
            telephony
                .expect_place_call()
                .times(1)
                .returning(move |_| Err(e.clone()));
            let outcome = dialer(repo, telephony, None)
                .dial(&claimed(true, any_rules()))
                .await;
            assert_eq!(
                outcome,
                DialOutcome::Failed {
                    reason: expected_reason,
                    redialable,
                    state: if redialable {
                        RecipientState::Scheduled
                    } else {
                        RecipientState::Failed
                    },
                },
                "{error}"
            );
        }
    }

    /// A window starting two hours from now (UTC), an hour long.
    fn window_in_two_hours() -> (CallWindow, WallTime) {
        let start = OffsetDateTime::now_utc() + time::Duration::hours(2);
        let end = start + time::Duration::hours(1);
        let wt = |t: OffsetDateTime| WallTime::new(t.hour(), t.minute()).expect("wall time");
        (
            CallWindow::Between {
                start: wt(start),
                end: wt(end),
            },
            wt(start),
        )
    }

    #[tokio::test]
    async fn not_eligible_is_due_again_after_retry_after_inside_the_window_with_no_attempt_used() {
        let (window, start) = window_in_two_hours();
        let mut predial = MockPredialCheck::new();
        predial
            .expect_check()
            .withf(|r| r.attempt == 2 && r.driver_id == 1 && r.call_sid.as_str() == "EL_1_ts#2")
            .times(1)
            .returning(|_| PredialAnswer::NotEligible {
                retry_after: Duration::from_secs(900),
            });
        let mut repo = MockBatchRepository::new();
        repo.expect_record_check()
            .withf(move |_, check, next| {
                let Some(Due::At(at)) = next else {
                    return false;
                };
                check.result == CheckResult::NotEligible
                    && check.detail.is_none()
                    && *at >= check.at + time::Duration::seconds(900)
                    && (at.hour(), at.minute(), at.second()) == start_hms(start)
            })
            .times(1)
            .returning(|_, _, _| Ok(RecipientState::Scheduled));
        repo.expect_start_attempt().times(0);
        let mut telephony = MockTelephony::new();
        telephony.expect_place_call().times(0);
        let outcome = dialer(repo, telephony, Some(predial))
            .dial(&claimed(false, rules(window, time::Duration::days(1))))
            .await;
        assert!(matches!(
            outcome,
            DialOutcome::NotDialed {
                check: CheckResult::NotEligible,
                next: Due::At(_)
            }
        ));
    }

    fn start_hms(start: WallTime) -> (u8, u8, u8) {
        let text = start.to_string();
        let (h, m) = text.split_once(':').expect("HH:MM");
        (h.parse().expect("h"), m.parse().expect("m"), 0)
    }

    #[tokio::test]
    async fn a_failed_check_fails_closed_and_is_asked_again_after_a_minute() {
        let mut predial = MockPredialCheck::new();
        predial.expect_check().returning(|_| PredialAnswer::Failed {
            detail: "HTTP 500 from +15551234567".into(),
        });
        let mut repo = MockBatchRepository::new();
        repo.expect_record_check()
            .withf(|_, check, next| {
                check.result == CheckResult::Failed
                    && check
                        .detail
                        .as_deref()
                        .is_some_and(|d| !d.contains("5551234567"))
                    && *next == Some(Due::At(check.at + time::Duration::seconds(60)))
            })
            .times(1)
            .returning(|_, _, _| Ok(RecipientState::Scheduled));
        let mut telephony = MockTelephony::new();
        telephony.expect_place_call().times(0);
        let outcome = dialer(repo, telephony, Some(predial))
            .dial(&claimed(false, any_rules()))
            .await;
        assert!(matches!(
            outcome,
            DialOutcome::NotDialed {
                check: CheckResult::Failed,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn a_check_that_would_wait_past_the_expiry_expires_the_recipient() {
        let mut predial = MockPredialCheck::new();
        predial
            .expect_check()
            .returning(|_| PredialAnswer::NotEligible {
                retry_after: Duration::from_secs(7200),
            });
        let mut repo = MockBatchRepository::new();
        repo.expect_record_check()
            .withf(|_, _, next| *next == Some(Due::Expired))
            .times(1)
            .returning(|_, _, _| Ok(RecipientState::Failed));
        let mut telephony = MockTelephony::new();
        telephony.expect_place_call().times(0);
        let outcome = dialer(repo, telephony, Some(predial))
            .dial(&claimed(
                false,
                rules(CallWindow::Any, time::Duration::hours(1)),
            ))
            .await;
        assert!(matches!(
            outcome,
            DialOutcome::NotDialed {
                next: Due::Expired,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn eligible_writes_the_call_then_dials() {
        let mut predial = MockPredialCheck::new();
        predial
            .expect_check()
            .returning(|_| PredialAnswer::Eligible);
        let mut seq = mockall::Sequence::new();
        let mut repo = MockBatchRepository::new();
        repo.expect_record_check()
            .withf(|_, check, next| check.result == CheckResult::Eligible && next.is_none())
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _, _| Ok(RecipientState::Dialing));
        repo.expect_start_attempt()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(true));
        let mut telephony = MockTelephony::new();
        telephony
            .expect_place_call()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| placed());
        repo.expect_record_placed()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(RecipientState::InCall));
        let outcome = dialer(repo, telephony, Some(predial))
            .dial(&claimed(false, any_rules()))
            .await;
        assert!(matches!(outcome, DialOutcome::Placed { .. }));
    }

    #[tokio::test]
    async fn a_claim_cancelled_during_the_check_is_not_dialed() {
        let mut predial = MockPredialCheck::new();
        predial
            .expect_check()
            .returning(|_| PredialAnswer::Eligible);
        let mut repo = MockBatchRepository::new();
        repo.expect_record_check()
            .returning(|_, _, _| Ok(RecipientState::Dialing));
        repo.expect_start_attempt().returning(|_, _| Ok(false));
        let mut telephony = MockTelephony::new();
        telephony.expect_place_call().times(0);
        let outcome = dialer(repo, telephony, Some(predial))
            .dial(&claimed(false, any_rules()))
            .await;
        assert_eq!(outcome, DialOutcome::Abandoned);
    }

    #[tokio::test]
    async fn no_dial_when_the_attempt_cannot_be_recorded() {
        let mut repo = MockBatchRepository::new();
        repo.expect_start_attempt()
            .returning(|_, _| Err(RepositoryError::Unavailable("down".into())));
        let mut telephony = MockTelephony::new();
        telephony.expect_place_call().times(0);
        let mut predial = MockPredialCheck::new();
        predial
            .expect_check()
            .returning(|_| PredialAnswer::Eligible);
        repo.expect_record_check()
            .returning(|_, _, _| Ok(RecipientState::Dialing));
        let outcome = dialer(repo, telephony, Some(predial))
            .dial(&claimed(false, any_rules()))
            .await;
        assert!(matches!(outcome, DialOutcome::StoreFailed { .. }));
    }

    #[tokio::test]
    async fn a_placed_call_that_cannot_be_recorded_is_still_placed() {
        let mut repo = MockBatchRepository::new();
        repo.expect_record_placed()
            .returning(|_, _| Err(RepositoryError::Unavailable("down".into())));
        let mut telephony = MockTelephony::new();
        telephony
            .expect_place_call()
            .times(1)
            .returning(|_| placed());
        let outcome = dialer(repo, telephony, None)
            .dial(&claimed(true, any_rules()))
            .await;
        assert!(matches!(outcome, DialOutcome::Placed { .. }));
    }

    #[tokio::test]
    async fn the_sweep_releases_claims_older_than_the_stale_claim_age() {
        let mut repo = MockBatchRepository::new();
        repo.expect_sweep()
            .withf(|now, cutoff| *now == NOW && *cutoff == NOW - time::Duration::seconds(300))
            .times(1)
            .returning(|_, _| Ok(SweepOutcome::default()));
        let d = dialer(repo, MockTelephony::new(), None);
        assert_eq!(d.sweep(NOW).await.expect("sweep"), SweepOutcome::default());
    }
}
