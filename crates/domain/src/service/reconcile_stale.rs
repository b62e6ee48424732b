//! Stale-call repair: a Call still `in_progress` long after it started lost its post-call
//! event (ElevenLabs does not retry webhooks by default) or never got one. Ask the provider
//! what became of the conversation and apply the answer as the post-call event would have:
//! `done` completes the Call (outcome, transcript reconciliation), `failed` and a 404 fail
//! it, anything else leaves it. A Call that never got a conversation_id fails.
//!
//! One pass at a time across all instances (the repository's reconciler lease), with a
//! bounded number of requests in flight and a bounded request rate toward the provider.
//! Nothing here is fatal: a provider error leaves the Call for a later pass.
//!
//! Fair: a Call asked about and still unfinished is deferred by [`check_backoff`] of its
//! age, one left unanswered goes to the back of the queue, and each pass takes never-asked
//! Calls first, so every stale Call is examined within a bounded number of passes however
//! many stay unfinished or keep failing. A Call
//! the provider still reports unfinished `give_up_after` its start ends `failed`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use time::OffsetDateTime;

use super::post_call::{ApplyPostCall, PostCallError, PostCallOutcome};
use crate::models::{Call, CallSid, ConversationId};
use crate::ports::{CallRepository, ConversationState, Pacer, Telephony};

/// Failure reason of a stale Call that never got a conversation_id.
pub const NO_CONVERSATION_ID: &str = "no conversation_id";
/// Failure reason of a stale Call whose conversation ElevenLabs does not know.
pub const NOT_FOUND_REASON: &str = "conversation not found at ElevenLabs (HTTP 404)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileSettings {
    /// Calls examined per pass, oldest first; the rest wait for the next pass.
    pub batch_limit: i64,
    /// Conversation requests in flight at once (their starts are spaced by the `Pacer`).
    pub concurrency: usize,
    /// Age at which a Call the provider still reports unfinished is failed instead of
    /// being asked about again.
    pub give_up_after: Duration,
}

/// Default of [`ReconcileSettings::give_up_after`]: three days (no phone call lasts that
/// long; ElevenLabs caps a conversation at hours).
pub const DEFAULT_GIVE_UP_AFTER: Duration = Duration::from_secs(3 * 24 * 3600);

/// How long a stale Call that is still unfinished waits before it is asked about again: a
/// tenth of its age, between one minute and six hours. Young Calls are asked again soon
/// (their post-call event is merely late), old ones rarely.
pub fn check_backoff(age: Duration) -> Duration {
    (age / 10).clamp(Duration::from_secs(60), Duration::from_secs(6 * 3600))
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        Self {
            batch_limit: 100,
            concurrency: 4,
            give_up_after: DEFAULT_GIVE_UP_AFTER,
        }
    }
}

/// What a pass did to one Call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReconcileResult {
    /// The conversation was done: the Call is `completed`, with its outcome; turns missing
    /// from the stored transcript were inserted.
    Completed { turns_inserted: usize },
    /// The Call is now `failed` with this reason (a failed conversation, or none at all).
    Failed { reason: String },
    /// The provider does not know the conversation: the Call is now `failed`.
    NotFound { reason: String },
    /// The conversation is not over yet (the provider's status); the Call is left as it is.
    Pending { status: String },
    /// The Call reached a final state meanwhile (its post-call event won the race).
    Unchanged,
    /// Nothing could be learned or applied; the Call is left for the next pass.
    Error { error: String },
}

impl ReconcileResult {
    /// Stable name, for the metric label and the printed line.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Completed { .. } => "completed",
            Self::Failed { .. } => "failed",
            Self::NotFound { .. } => "not_found",
            Self::Pending { .. } => "pending",
            Self::Unchanged => "unchanged",
            Self::Error { .. } => "error",
        }
    }

    /// One-line detail for humans.
    pub fn detail(&self) -> String {
        match self {
            Self::Completed { turns_inserted: 1 } => "1 turn restored".to_owned(),
            Self::Completed { turns_inserted } => format!("{turns_inserted} turns restored"),
            Self::Failed { reason } | Self::NotFound { reason } => reason.clone(),
            Self::Pending { status } => format!("conversation status {status}"),
            Self::Unchanged => "already final".to_owned(),
            Self::Error { error } => error.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciled {
    pub call_sid: CallSid,
    pub result: ReconcileResult,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassOutcome {
    /// Another instance holds the reconciler lock; nothing was done.
    Skipped,
    /// One line per stale Call examined, oldest first.
    Ran(Vec<Reconciled>),
}

/// A pass fails only when the repository does (failures on single Calls are results).
pub type ReconcileError = super::StoreFailure;

pub struct ReconcileStale {
    repository: Arc<dyn CallRepository>,
    telephony: Arc<dyn Telephony>,
    pace: Arc<dyn Pacer>,
    post_call: ApplyPostCall,
    settings: ReconcileSettings,
}

impl ReconcileStale {
    pub fn new(
        repository: Arc<dyn CallRepository>,
        telephony: Arc<dyn Telephony>,
        pace: Arc<dyn Pacer>,
        settings: ReconcileSettings,
    ) -> Self {
        Self {
            post_call: ApplyPostCall::new(repository.clone()),
            repository,
            telephony,
            pace,
            settings: ReconcileSettings {
                batch_limit: settings.batch_limit.max(1),
                concurrency: settings.concurrency.max(1),
                give_up_after: settings.give_up_after,
            },
        }
    }

    /// Also settles the batch recipient of every attempt it ends (see
    /// [`ApplyPostCall::with_batches`]): a re-dialable failure is re-dialed by the rule.
    pub fn with_batches(mut self, batches: Arc<dyn crate::ports::BatchRepository>) -> Self {
        self.post_call = self.post_call.with_batches(batches);
        self
    }

    /// Runs one pass over the Calls `in_progress` for longer than `older_than`, unless
    /// another instance is running one.
    ///
    /// # Errors
    /// The database could not be asked for the lock or the stale Calls. Failures on single
    /// Calls are results, not errors.
    #[tracing::instrument(name = "reconcile_stale", skip_all, fields(older_than_secs = older_than.as_secs()))]
    pub async fn execute(&self, older_than: Duration) -> Result<PassOutcome, ReconcileError> {
        let Some(lease) = self.repository.try_lock_reconciler().await? else {
            tracing::info!("another instance is reconciling stale calls; skipping this pass");
            return Ok(PassOutcome::Skipped);
        };
        let result = self.pass(older_than).await;
        lease.release().await;
        result.map(PassOutcome::Ran)
    }

    async fn pass(&self, older_than: Duration) -> Result<Vec<Reconciled>, ReconcileError> {
        // No Call predates 1970; clamping keeps an absurd --older-than from overflowing.
        let cutoff = time::Duration::try_from(older_than)
            .ok()
            .and_then(|d| OffsetDateTime::now_utc().checked_sub(d))
            .map_or(OffsetDateTime::UNIX_EPOCH, |c| {
                c.max(OffsetDateTime::UNIX_EPOCH)
            });
        let calls = self
            .repository
            .stale_calls(cutoff, self.settings.batch_limit)
            .await?;
        if calls.is_empty() {
            tracing::debug!("no stale calls");
            return Ok(Vec::new());
        }
        tracing::info!(count = calls.len(), "reconciling stale calls");
        let results = futures_util::stream::iter(calls)
            .map(|call| self.reconcile_one(call))
            .buffered(self.settings.concurrency)
            .collect()
            .await;
        Ok(results)
    }

    #[tracing::instrument(name = "reconcile_call", skip_all, fields(call_sid = %call.call_sid))]
    async fn reconcile_one(&self, call: Call) -> Reconciled {
        let now = OffsetDateTime::now_utc();
        let age = Duration::try_from(now - call.call_start_time).unwrap_or_default();
        let mut result = match call.conversation_id.clone() {
            None => self.fail(&call, None, NO_CONVERSATION_ID.to_owned()).await,
            Some(conversation_id) => {
                self.pace.wait().await;
                self.ask(&call, conversation_id).await
            }
        };
        if let ReconcileResult::Pending { status } = &result {
            if age >= self.settings.give_up_after {
                let reason = format!(
                    "conversation still {status} at ElevenLabs {} hours after the call started; given up",
                    age.as_secs() / 3600
                );
                result = self.fail(&call, call.conversation_id.clone(), reason).await;
            }
        }
        // Still unfinished: asked again after a pause that grows with its age. Unanswered
        // (a provider or database error): due again at once, but behind every Call not
        // asked since, so a failing few cannot hold the others back.
        let next = match result {
            ReconcileResult::Pending { .. } => Some(
                time::Duration::try_from(check_backoff(age))
                    .ok()
                    .and_then(|d| now.checked_add(d))
                    .unwrap_or(now),
            ),
            ReconcileResult::Error { .. } => Some(now),
            _ => None,
        };
        if let Some(next) = next {
            if let Err(e) = self.repository.defer_reconcile(&call.call_sid, next).await {
                // Only fairness suffers: the Call comes up again in the next pass.
                tracing::warn!(error = %e, "could not defer the next check of a stale call");
            }
        }
        match &result {
            ReconcileResult::Error { error } => {
                tracing::warn!(result = result.label(), %error, "stale call left for the next pass");
            }
            other => tracing::info!(
                result = other.label(),
                detail = %other.detail(),
                "stale call reconciled"
            ),
        }
        Reconciled {
            call_sid: call.call_sid,
            result,
        }
    }

    async fn ask(&self, call: &Call, conversation_id: ConversationId) -> ReconcileResult {
        let state = match self.telephony.fetch_conversation(&conversation_id).await {
            Ok(state) => state,
            Err(e) => {
                return ReconcileResult::Error {
                    error: e.to_string(),
                };
            }
        };
        match state {
            ConversationState::Done(report) => match self.post_call.complete(call, &report).await {
                Ok(
                    PostCallOutcome::Completed { turns_inserted, .. }
                    | PostCallOutcome::Updated { turns_inserted, .. },
                ) => ReconcileResult::Completed { turns_inserted },
                Ok(PostCallOutcome::Unchanged(_) | PostCallOutcome::Failed(_)) => {
                    ReconcileResult::Unchanged
                }
                Ok(PostCallOutcome::UnknownCall) => unknown_call(),
                Err(e) => apply_error(&e),
            },
            ConversationState::Failed { reason } => {
                self.fail(call, Some(conversation_id), reason).await
            }
            ConversationState::Pending { status } => ReconcileResult::Pending { status },
            ConversationState::NotFound => {
                match self
                    .fail(call, Some(conversation_id), NOT_FOUND_REASON.to_owned())
                    .await
                {
                    ReconcileResult::Failed { reason } => ReconcileResult::NotFound { reason },
                    other => other,
                }
            }
        }
    }

    async fn fail(
        &self,
        call: &Call,
        conversation_id: Option<ConversationId>,
        reason: String,
    ) -> ReconcileResult {
        match self
            .post_call
            .fail(call, conversation_id, reason.clone())
            .await
        {
            Ok(PostCallOutcome::Failed(_)) => ReconcileResult::Failed { reason },
            Ok(PostCallOutcome::UnknownCall) => unknown_call(),
            Ok(_) => ReconcileResult::Unchanged,
            Err(e) => apply_error(&e),
        }
    }
}

/// The Call vanished, or the conversation turned out to be linked to another Call.
fn unknown_call() -> ReconcileResult {
    ReconcileResult::Error {
        error: "the call could not take the conversation (deleted, or the conversation belongs to another call)".to_owned(),
    }
}

fn apply_error(e: &PostCallError) -> ReconcileResult {
    let mut error = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        error.push_str(": ");
        error.push_str(&cause.to_string());
        source = cause.source();
    }
    ReconcileResult::Error { error }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RepositoryError;
    use crate::models::{CallStatus, ConversationReport};
    use crate::ports::{
        CallFinish, Ending, Finished, MockCallRepository, MockPacer, MockTelephony,
        ReconcilerLease, TelephonyError,
    };
    use mockall::predicate::eq;
    use std::sync::Mutex;
    use time::macros::datetime;

    fn call(sid: &str, conv: Option<&str>) -> Call {
        let t = datetime!(2024-11-21 10:00:00 UTC);
        Call {
            id: 1,
            call_sid: CallSid::parse(sid).expect("sid"),
            conversation_id: conv.map(|c| ConversationId::parse(c).expect("conv")),
            driver_id: Some(1),
            call_start_time: t,
            call_end_time: None,
            status: CallStatus::InProgress,
            failure_reason: None,
            outcome: None,
            created_at: t,
            updated_at: t,
        }
    }

    fn conv(id: &str) -> ConversationId {
        ConversationId::parse(id).expect("conv")
    }

    fn report(id: &str) -> ConversationReport {
        crate::models::sample_report(id, 60)
    }

    /// A repository that grants the lock and lists `calls` as stale.
    fn repo_with(calls: Vec<Call>) -> MockCallRepository {
        let mut repo = MockCallRepository::new();
        repo.expect_try_lock_reconciler()
            .times(1)
            .returning(|| Ok(Some(ReconcilerLease::unguarded())));
        repo.expect_stale_calls()
            .times(1)
            .return_once(move |_, _| Ok(calls));
        repo
    }

    /// `finish_call` answers as PostgreSQL would for a Call that was in progress.
    fn finish_answer(sid: &CallSid, finish: &CallFinish) -> Result<Finished, RepositoryError> {
        let mut c = call(sid.as_str(), None);
        c.conversation_id = finish.conversation_id.clone();
        let inserted = match &finish.ending {
            Ending::Completed { transcript, .. } => {
                c.status = CallStatus::Completed;
                transcript.len()
            }
            Ending::Failed { reason, .. } => {
                c.status = CallStatus::Failed;
                c.failure_reason = Some(reason.clone());
                0
            }
        };
        Ok(Finished {
            call: c,
            status_changed: true,
            turns_inserted: inserted,
            turns_renumbered: 0,
        })
    }

    /// A pacer that never holds a request back.
    fn no_pace() -> Arc<MockPacer> {
        let mut pacer = MockPacer::new();
        pacer.expect_wait().returning(|| ());
        Arc::new(pacer)
    }

    fn reconciler(repo: MockCallRepository, telephony: MockTelephony) -> ReconcileStale {
        ReconcileStale::new(
            Arc::new(repo),
            Arc::new(telephony),
            no_pace(),
            ReconcileSettings::default(),
        )
    }

    async fn run(reconciler: &ReconcileStale) -> Vec<Reconciled> {
        match reconciler
            .execute(Duration::from_secs(1800))
            .await
            .expect("pass runs")
        {
            PassOutcome::Ran(lines) => lines,
            PassOutcome::Skipped => panic!("pass skipped"),
        }
    }

    #[tokio::test]
    async fn a_done_conversation_completes_the_call_with_outcome_and_transcript() {
        let mut repo = repo_with(vec![call("EL_1_a", Some("conv_a"))]);
        repo.expect_finish_call()
            .withf(|sid, f| {
                sid.as_str() == "EL_1_a"
                    && matches!(&f.ending, Ending::Completed { outcome, transcript, end, .. }
                        if outcome.call_successful.as_deref() == Some("success")
                            && transcript.len() == 1
                            && *end == datetime!(2024-11-21 10:01:00 UTC))
            })
            .times(1)
            .returning(finish_answer);
        let mut telephony = MockTelephony::new();
        telephony
            .expect_fetch_conversation()
            .with(eq(conv("conv_a")))
            .times(1)
            .returning(|_| Ok(ConversationState::Done(Box::new(report("conv_a")))));

        let lines = run(&reconciler(repo, telephony)).await;

        assert_eq!(
            lines,
            vec![Reconciled {
                call_sid: CallSid::parse("EL_1_a").expect("sid"),
                result: ReconcileResult::Completed { turns_inserted: 1 }
            }]
        );
    }

    #[tokio::test]
    async fn a_failed_conversation_fails_the_call_with_its_reason() {
        let mut repo = repo_with(vec![call("EL_2_b", Some("conv_b"))]);
        repo.expect_finish_call()
            .withf(
                |_, f| matches!(&f.ending, Ending::Failed { reason, .. } if reason == "no-answer"),
            )
            .times(1)
            .returning(finish_answer);
        let mut telephony = MockTelephony::new();
        telephony.expect_fetch_conversation().returning(|_| {
            Ok(ConversationState::Failed {
                reason: "no-answer".into(),
            })
        });

        let lines = run(&reconciler(repo, telephony)).await;

        assert_eq!(
            lines[0].result,
            ReconcileResult::Failed {
                reason: "no-answer".into()
            }
        );
        assert_eq!(lines[0].result.label(), "failed");
    }

    #[tokio::test]
    async fn a_pending_conversation_leaves_the_call_alone_and_defers_its_next_check() {
        let mut young = call("EL_3_c", Some("conv_c"));
        young.call_start_time = OffsetDateTime::now_utc() - time::Duration::hours(1);
        let mut repo = repo_with(vec![young]);
        repo.expect_finish_call().times(0);
        repo.expect_defer_reconcile()
            .withf(|sid, next| {
                // A tenth of its age (one hour): six minutes from now.
                let wait = *next - OffsetDateTime::now_utc();
                sid.as_str() == "EL_3_c"
                    && wait > time::Duration::minutes(5)
                    && wait <= time::Duration::minutes(6) + time::Duration::seconds(5)
            })
            .times(1)
            .returning(|_, _| Ok(()));
        let mut telephony = MockTelephony::new();
        telephony.expect_fetch_conversation().returning(|_| {
            Ok(ConversationState::Pending {
                status: "processing".into(),
            })
        });

        let lines = run(&reconciler(repo, telephony)).await;

        assert_eq!(
            lines[0].result,
            ReconcileResult::Pending {
                status: "processing".into()
            }
        );
    }

    #[tokio::test]
    async fn a_conversation_still_unfinished_days_after_the_call_started_fails_it() {
        // call() started in 2024: long past the three days.
        let mut repo = repo_with(vec![call("EL_3_old", Some("conv_old"))]);
        repo.expect_finish_call()
            .withf(|_, f| {
                matches!(&f.ending, Ending::Failed { reason, .. }
                    if reason.contains("still processing") && reason.contains("given up"))
            })
            .times(1)
            .returning(finish_answer);
        repo.expect_defer_reconcile().times(0);
        let mut telephony = MockTelephony::new();
        telephony.expect_fetch_conversation().returning(|_| {
            Ok(ConversationState::Pending {
                status: "processing".into(),
            })
        });

        let lines = run(&reconciler(repo, telephony)).await;

        assert_eq!(lines[0].result.label(), "failed");
    }

    #[test]
    fn checks_back_off_with_age_between_a_minute_and_six_hours() {
        assert_eq!(
            check_backoff(Duration::from_secs(30 * 60)),
            Duration::from_secs(180)
        );
        assert_eq!(
            check_backoff(Duration::from_secs(10)),
            Duration::from_secs(60)
        );
        assert_eq!(
            check_backoff(Duration::from_secs(30 * 24 * 3600)),
            Duration::from_secs(6 * 3600)
        );
    }

    #[tokio::test]
    async fn an_unknown_conversation_fails_the_call_naming_the_404() {
        let mut repo = repo_with(vec![call("EL_4_d", Some("conv_d"))]);
        repo.expect_finish_call()
            .withf(|_, f| {
                matches!(&f.ending, Ending::Failed { reason, .. } if reason.contains("HTTP 404"))
            })
            .times(1)
            .returning(finish_answer);
        let mut telephony = MockTelephony::new();
        telephony
            .expect_fetch_conversation()
            .returning(|_| Ok(ConversationState::NotFound));

        let lines = run(&reconciler(repo, telephony)).await;

        assert_eq!(
            lines[0].result,
            ReconcileResult::NotFound {
                reason: NOT_FOUND_REASON.into()
            }
        );
        assert_eq!(lines[0].result.label(), "not_found");
    }

    #[tokio::test]
    async fn a_provider_error_changes_nothing_and_the_pass_goes_on() {
        let mut repo = repo_with(vec![
            call("EL_5_e", Some("conv_e")),
            call("EL_6_f", Some("conv_f")),
        ]);
        repo.expect_finish_call()
            .withf(|sid, _| sid.as_str() == "EL_6_f")
            .times(1)
            .returning(finish_answer);
        let mut telephony = MockTelephony::new();
        telephony
            .expect_fetch_conversation()
            .with(eq(conv("conv_e")))
            .returning(|_| Err(TelephonyError::ServerError { status: 500 }));
        repo.expect_defer_reconcile()
            .withf(|sid, _| sid.as_str() == "EL_5_e")
            .times(1)
            .returning(|_, _| Ok(()));
        telephony
            .expect_fetch_conversation()
            .with(eq(conv("conv_f")))
            .returning(|_| Ok(ConversationState::NotFound));

        let lines = run(&reconciler(repo, telephony)).await;

        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].call_sid.as_str(), "EL_5_e", "oldest first");
        assert!(
            matches!(&lines[0].result, ReconcileResult::Error { error } if error.contains("500")),
            "{:?}",
            lines[0]
        );
        assert_eq!(lines[1].result.label(), "not_found");
    }

    #[tokio::test]
    async fn with_batches_a_stale_attempt_failed_by_the_repair_is_settled_for_its_redial() {
        let mut repo = repo_with(vec![call("EL_7_g#2", None)]);
        repo.expect_finish_call().times(1).returning(finish_answer);
        let mut telephony = MockTelephony::new();
        telephony.expect_fetch_conversation().times(0);
        let mut batches = crate::ports::MockBatchRepository::new();
        batches
            .expect_settle_call()
            .withf(|sid, redialable, _| sid.as_str() == "EL_7_g#2" && *redialable)
            .times(1)
            .returning(|_, _, _| Ok(Some(crate::models::RecipientState::Scheduled)));

        let lines = run(&reconciler(repo, telephony).with_batches(Arc::new(batches))).await;

        assert_eq!(lines.len(), 1);
    }

    #[tokio::test]
    async fn a_call_without_conversation_id_fails_without_asking_the_provider() {
        let mut repo = repo_with(vec![call("EL_7_g", None)]);
        repo.expect_finish_call()
            .withf(|_, f| {
                f.conversation_id.is_none()
                    && matches!(&f.ending, Ending::Failed { reason, .. } if reason == NO_CONVERSATION_ID)
            })
            .times(1)
            .returning(finish_answer);
        let mut telephony = MockTelephony::new();
        telephony.expect_fetch_conversation().times(0);

        let lines = run(&reconciler(repo, telephony)).await;

        assert_eq!(
            lines[0].result,
            ReconcileResult::Failed {
                reason: NO_CONVERSATION_ID.into()
            }
        );
    }

    #[tokio::test]
    async fn a_call_finished_meanwhile_is_reported_unchanged() {
        let mut repo = repo_with(vec![call("EL_8_h", Some("conv_h"))]);
        // The post-call event completed the Call between the listing and the finish.
        repo.expect_finish_call().times(1).returning(|sid, _| {
            let mut c = call(sid.as_str(), Some("conv_h"));
            c.status = CallStatus::Completed;
            Ok(Finished {
                call: c,
                status_changed: false,
                turns_inserted: 0,
                turns_renumbered: 0,
            })
        });
        let mut telephony = MockTelephony::new();
        telephony.expect_fetch_conversation().returning(|_| {
            Ok(ConversationState::Failed {
                reason: "busy".into(),
            })
        });

        let lines = run(&reconciler(repo, telephony)).await;

        assert_eq!(lines[0].result, ReconcileResult::Unchanged);
    }

    #[tokio::test]
    async fn a_database_error_while_applying_is_a_result_not_a_crash() {
        let mut repo = repo_with(vec![call("EL_9_i", Some("conv_i"))]);
        repo.expect_finish_call()
            .returning(|_, _| Err(RepositoryError::Unavailable("connection refused".into())));
        // Left for a later pass, after a pause.
        repo.expect_defer_reconcile()
            .times(1)
            .returning(|_, _| Ok(()));
        let mut telephony = MockTelephony::new();
        telephony
            .expect_fetch_conversation()
            .returning(|_| Ok(ConversationState::Done(Box::new(report("conv_i")))));

        let lines = run(&reconciler(repo, telephony)).await;

        assert!(
            matches!(&lines[0].result, ReconcileResult::Error { error } if error.contains("connection refused")),
            "{:?}",
            lines[0]
        );
    }

    #[tokio::test]
    async fn a_pass_is_skipped_when_another_instance_holds_the_lock() {
        let mut repo = MockCallRepository::new();
        repo.expect_try_lock_reconciler().returning(|| Ok(None));
        repo.expect_stale_calls().times(0);

        let outcome = reconciler(repo, MockTelephony::new())
            .execute(Duration::from_secs(1800))
            .await
            .expect("ok");

        assert_eq!(outcome, PassOutcome::Skipped);
    }

    #[tokio::test]
    async fn a_database_outage_before_the_pass_is_an_error() {
        let mut repo = MockCallRepository::new();
        repo.expect_try_lock_reconciler()
            .returning(|| Ok(Some(ReconcilerLease::unguarded())));
        repo.expect_stale_calls()
            .returning(|_, _| Err(RepositoryError::Unavailable("down".into())));

        let err = reconciler(repo, MockTelephony::new())
            .execute(Duration::from_secs(1800))
            .await
            .expect_err("fails");

        assert!(matches!(err, ReconcileError::Unavailable(_)));
    }

    #[tokio::test]
    async fn the_cutoff_is_now_minus_the_age_and_the_batch_is_bounded() {
        let mut repo = MockCallRepository::new();
        repo.expect_try_lock_reconciler()
            .returning(|| Ok(Some(ReconcilerLease::unguarded())));
        let before = OffsetDateTime::now_utc();
        repo.expect_stale_calls()
            .withf(move |cutoff, limit| {
                let age = before - *cutoff;
                *limit == 100
                    && age >= time::Duration::seconds(1799)
                    && age <= time::Duration::seconds(1801)
            })
            .times(1)
            .returning(|_, _| Ok(Vec::new()));
        let outcome = reconciler(repo, MockTelephony::new())
            .execute(Duration::from_secs(1800))
            .await
            .expect("ok");
        assert_eq!(outcome, PassOutcome::Ran(Vec::new()));

        // An absurd age cannot overflow: nothing predates 1970.
        let mut repo = MockCallRepository::new();
        repo.expect_try_lock_reconciler()
            .returning(|| Ok(Some(ReconcilerLease::unguarded())));
        repo.expect_stale_calls()
            .withf(|cutoff, _| *cutoff == OffsetDateTime::UNIX_EPOCH)
            .times(1)
            .returning(|_, _| Ok(Vec::new()));
        reconciler(repo, MockTelephony::new())
            .execute(Duration::from_secs(u64::MAX))
            .await
            .expect("ok");
    }

    #[tokio::test]
    async fn every_conversation_request_waits_for_the_pacer_first() {
        let mut calls: Vec<Call> = (0..5)
            .map(|i| call(&format!("EL_{i}_p"), Some(&format!("conv_p{i}"))))
            .collect();
        calls.push(call("EL_9_p", None));
        let mut repo = repo_with(calls);
        repo.expect_finish_call().returning(finish_answer);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut pacer = MockPacer::new();
        let seen = order.clone();
        pacer
            .expect_wait()
            .times(5)
            .returning(move || seen.lock().expect("lock").push("wait"));
        let mut telephony = MockTelephony::new();
        let seen = order.clone();
        telephony.expect_fetch_conversation().returning(move |_| {
            seen.lock().expect("lock").push("request");
            Ok(ConversationState::Pending {
                status: "in-progress".into(),
            })
        });
        let reconciler = ReconcileStale::new(
            Arc::new(repo),
            Arc::new(telephony),
            Arc::new(pacer),
            ReconcileSettings {
                concurrency: 1,
                ..ReconcileSettings::default()
            },
        );

        let lines = run(&reconciler).await;

        assert_eq!(lines.len(), 6);
        assert_eq!(
            *order.lock().expect("lock"),
            ["wait", "request"].repeat(5),
            "the Call without conversation_id asks nobody"
        );
    }

    /// A provider that answers slowly and records how many requests overlap; mockall's
    /// answers are immediate, so they cannot show concurrency.
    struct SlowProvider {
        in_flight: Mutex<(usize, usize)>,
    }

    #[async_trait::async_trait]
    impl Telephony for SlowProvider {
        async fn place_call(
            &self,
            _: &crate::ports::OutboundCall,
        ) -> Result<crate::ports::PlacedCall, TelephonyError> {
            Err(TelephonyError::Unexpected("not used".into()))
        }

        async fn fetch_conversation(
            &self,
            _: &ConversationId,
        ) -> Result<ConversationState, TelephonyError> {
            {
                let mut n = self.in_flight.lock().expect("lock");
                n.0 += 1;
                n.1 = n.1.max(n.0);
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
            self.in_flight.lock().expect("lock").0 -= 1;
            Ok(ConversationState::Pending {
                status: "in-progress".into(),
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_the_configured_number_of_requests_are_in_flight() {
        let calls: Vec<Call> = (0..12)
            .map(|i| call(&format!("EL_{i}_q"), Some(&format!("conv_q{i}"))))
            .collect();
        let provider = Arc::new(SlowProvider {
            in_flight: Mutex::new((0, 0)),
        });
        let mut repo = repo_with(calls);
        repo.expect_defer_reconcile()
            .times(12)
            .returning(|_, _| Ok(()));
        let reconciler = ReconcileStale::new(
            Arc::new(repo),
            provider.clone(),
            no_pace(),
            ReconcileSettings {
                give_up_after: Duration::MAX,
                ..ReconcileSettings::default()
            },
        );

        let lines = run(&reconciler).await;

        assert_eq!(lines.len(), 12);
        assert_eq!(provider.in_flight.lock().expect("lock").1, 4);
    }
}
