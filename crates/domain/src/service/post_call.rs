//! Apply what ElevenLabs reports about a call's end: `post_call_transcription` completes
//! the Call (keeping the outcome and reconciling the transcript), `call_initiation_failure`
//! fails it. Each event is applied whole in one transaction, or not at all; a repeated
//! delivery changes nothing. The stale-call repair applies conversation-API answers here too.

use std::sync::Arc;

use time::{Duration, OffsetDateTime};

use crate::models::{Call, CallSid, CallStatus, ConversationId, ConversationReport};
use crate::ports::{
    BatchRepository, CallFinish, CallRepository, Ending, Finished, RepositoryError,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostCallEvent {
    Transcription(ConversationReport),
    InitiationFailure {
        conversation_id: Option<ConversationId>,
        call_sid: Option<CallSid>,
        /// ElevenLabs' `failure_reason`: `busy`, `no-answer` or `unknown`.
        failure_reason: String,
    },
}

impl PostCallEvent {
    /// Our call_sid, when the event carries it.
    pub fn call_sid(&self) -> Option<&CallSid> {
        match self {
            Self::Transcription(report) => report.call_sid.as_ref(),
            Self::InitiationFailure { call_sid, .. } => call_sid.as_ref(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostCallOutcome {
    /// The Call became `completed`; `turns_inserted` turns came from the event.
    Completed {
        call_sid: CallSid,
        turns_inserted: usize,
    },
    Failed(CallSid),
    /// The transcript (or outcome) was brought up to date on a Call already completed.
    Updated {
        call_sid: CallSid,
        turns_inserted: usize,
    },
    /// Already in the state the event asks for, or in a final state it may not change.
    Unchanged(CallSid),
    UnknownCall,
}

/// Applying an event fails only when the repository does.
pub type PostCallError = super::StoreFailure;

pub struct ApplyPostCall {
    repository: Arc<dyn CallRepository>,
    batches: Option<Arc<dyn BatchRepository>>,
}

impl ApplyPostCall {
    pub fn new(repository: Arc<dyn CallRepository>) -> Self {
        Self {
            repository,
            batches: None,
        }
    }

    /// Also settles the batch recipient whose attempt the Call is, before answering, so
    /// the batch view is right as soon as the webhook got its 2xx.
    pub fn with_batches(mut self, batches: Arc<dyn BatchRepository>) -> Self {
        self.batches = Some(batches);
        self
    }

    /// Settles the recipient of an ended Call; repeated settles change nothing, so an
    /// unchanged Call is settled again too (a crash may have come between the two).
    async fn settle(&self, outcome: PostCallOutcome) -> Result<PostCallOutcome, PostCallError> {
        let call_sid = match &outcome {
            PostCallOutcome::Completed { call_sid, .. }
            | PostCallOutcome::Updated { call_sid, .. }
            | PostCallOutcome::Failed(call_sid)
            | PostCallOutcome::Unchanged(call_sid) => call_sid,
            PostCallOutcome::UnknownCall => return Ok(outcome),
        };
        if let Some(batches) = &self.batches {
            super::batches::settle_ended_call(batches.as_ref(), call_sid).await?;
        }
        Ok(outcome)
    }

    /// By conversation_id; else by our call_sid (an outbound request that timed out on our
    /// side may still have placed the call). A Call found by call_sid that already has
    /// another conversation_id is not this event's Call.
    async fn find(
        &self,
        conversation_id: Option<&ConversationId>,
        call_sid: Option<&CallSid>,
    ) -> Result<Option<Call>, PostCallError> {
        if let Some(conv) = conversation_id {
            if let Some(call) = self.repository.get_by_conversation_id(conv).await? {
                return Ok(Some(call));
            }
        }
        let Some(sid) = call_sid else { return Ok(None) };
        let Some(call) = self.repository.get_by_call_sid(sid).await? else {
            return Ok(None);
        };
        match (&call.conversation_id, conversation_id) {
            (Some(mine), Some(theirs)) if mine != theirs => {
                tracing::warn!(%mine, %theirs, "post-call event names another conversation for this call_sid");
                Ok(None)
            }
            _ => Ok(Some(call)),
        }
    }

    /// Applies a finish; a conflict (the conversation_id belongs to another Call) or a
    /// Call deleted meanwhile means the event has no Call of ours.
    async fn finish(
        &self,
        call: &Call,
        finish: CallFinish,
    ) -> Result<Option<Finished>, PostCallError> {
        match self.repository.finish_call(&call.call_sid, &finish).await {
            Ok(done) => Ok(Some(done)),
            Err(RepositoryError::Conflict(why)) => {
                tracing::warn!(%why, "post-call event's conversation_id cannot be linked");
                Ok(None)
            }
            Err(RepositoryError::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Completes `call` with a finished conversation's report: end time = start +
    /// duration (start falls back to the Call's own, end to now), outcome, transcript.
    pub async fn complete(
        &self,
        call: &Call,
        report: &ConversationReport,
    ) -> Result<PostCallOutcome, PostCallError> {
        let start = report.start_time.unwrap_or(call.call_start_time);
        let end = report
            .duration_secs
            .filter(|d| *d >= 0)
            .and_then(|d| start.checked_add(Duration::seconds(d)))
            .unwrap_or_else(OffsetDateTime::now_utc);
        let finish = CallFinish {
            conversation_id: Some(report.conversation_id.clone()),
            ending: Ending::Completed {
                end,
                outcome: report.outcome.clone(),
                start,
                transcript: report.transcript.clone(),
            },
        };
        let Some(done) = self.finish(call, finish).await? else {
            return Ok(PostCallOutcome::UnknownCall);
        };
        let call_sid = done.call.call_sid.clone();
        if done.turns_inserted > 0 || done.turns_renumbered > 0 {
            tracing::info!(
                inserted = done.turns_inserted,
                renumbered = done.turns_renumbered,
                "transcript reconciled with the provider's"
            );
        }
        let outcome = if done.status_changed {
            PostCallOutcome::Completed {
                call_sid,
                turns_inserted: done.turns_inserted,
            }
        } else if done.is_unchanged() {
            PostCallOutcome::Unchanged(call_sid)
        } else {
            PostCallOutcome::Updated {
                call_sid,
                turns_inserted: done.turns_inserted,
            }
        };
        self.settle(outcome).await
    }

    /// Fails an `in_progress` Call with `reason`; any other Call is left as it is.
    pub async fn fail(
        &self,
        call: &Call,
        conversation_id: Option<ConversationId>,
        reason: String,
    ) -> Result<PostCallOutcome, PostCallError> {
        if call.status.is_terminal() {
            return self
                .settle(PostCallOutcome::Unchanged(call.call_sid.clone()))
                .await;
        }
        let finish = CallFinish {
            conversation_id,
            ending: Ending::Failed {
                end: OffsetDateTime::now_utc(),
                reason,
            },
        };
        let outcome = match self.finish(call, finish).await? {
            None => PostCallOutcome::UnknownCall,
            Some(done) if done.status_changed && done.call.status == CallStatus::Failed => {
                PostCallOutcome::Failed(done.call.call_sid)
            }
            Some(done) => PostCallOutcome::Unchanged(done.call.call_sid),
        };
        self.settle(outcome).await
    }

    #[tracing::instrument(name = "post_call", skip_all)]
    pub async fn execute(&self, event: &PostCallEvent) -> Result<PostCallOutcome, PostCallError> {
        match event {
            PostCallEvent::Transcription(report) => {
                let Some(call) = self
                    .find(Some(&report.conversation_id), report.call_sid.as_ref())
                    .await?
                else {
                    return Ok(PostCallOutcome::UnknownCall);
                };
                self.complete(&call, report).await
            }
            PostCallEvent::InitiationFailure {
                conversation_id,
                call_sid,
                failure_reason,
            } => {
                let Some(call) = self
                    .find(conversation_id.as_ref(), call_sid.as_ref())
                    .await?
                else {
                    return Ok(PostCallOutcome::UnknownCall);
                };
                self.fail(&call, conversation_id.clone(), failure_reason.clone())
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::MockCallRepository;
    use time::macros::datetime;

    fn call(status: CallStatus, conv: Option<&str>) -> Call {
        let t = datetime!(2024-11-21 10:00:00 UTC);
        Call {
            id: 1,
            call_sid: CallSid::parse("EL_1_x").expect("sid"),
            conversation_id: conv.map(|c| ConversationId::parse(c).expect("conv")),
            driver_id: Some(1),
            call_start_time: t,
            call_end_time: None,
            status,
            failure_reason: None,
            outcome: None,
            created_at: t,
            updated_at: t,
        }
    }

    fn finished(status: CallStatus, status_changed: bool, inserted: usize) -> Finished {
        Finished {
            call: call(status, Some("conv_1")),
            status_changed,
            turns_inserted: inserted,
            turns_renumbered: 0,
        }
    }

    fn report(call_sid: Option<&str>) -> ConversationReport {
        ConversationReport {
            call_sid: call_sid.map(|s| CallSid::parse(s).expect("sid")),
            ..crate::models::sample_report("conv_1", 95)
        }
    }

    async fn apply(
        repo: MockCallRepository,
        event: PostCallEvent,
    ) -> Result<PostCallOutcome, PostCallError> {
        ApplyPostCall::new(Arc::new(repo)).execute(&event).await
    }

    /// A repository that finds no Call by conversation_id and `by_sid` by call_sid.
    fn found_by_call_sid(by_sid: Call) -> MockCallRepository {
        let mut repo = MockCallRepository::new();
        repo.expect_get_by_conversation_id().returning(|_| Ok(None));
        repo.expect_get_by_call_sid()
            .returning(move |_| Ok(Some(by_sid.clone())));
        repo
    }

    #[tokio::test]
    async fn a_transcription_event_completes_the_call_with_outcome_and_transcript() {
        let mut repo = MockCallRepository::new();
        repo.expect_get_by_conversation_id()
            .returning(|_| Ok(Some(call(CallStatus::InProgress, Some("conv_1")))));
        repo.expect_finish_call()
            .withf(|sid, f| {
                let Ending::Completed {
                    end,
                    outcome,
                    start,
                    transcript,
                } = &f.ending
                else {
                    return false;
                };
                sid.as_str() == "EL_1_x"
                    && *end == datetime!(2024-11-21 10:01:35 UTC)
                    && *start == datetime!(2024-11-21 10:00:00 UTC)
                    && outcome.call_successful.as_deref() == Some("success")
                    && transcript.len() == 1
                    && f.conversation_id.as_ref().map(ConversationId::as_str) == Some("conv_1")
            })
            .times(1)
            .returning(|_, _| Ok(finished(CallStatus::Completed, true, 1)));

        let outcome = apply(repo, PostCallEvent::Transcription(report(None)))
            .await
            .expect("ok");

        assert_eq!(
            outcome,
            PostCallOutcome::Completed {
                call_sid: CallSid::parse("EL_1_x").expect("sid"),
                turns_inserted: 1
            }
        );
    }

    #[tokio::test]
    async fn a_repeated_event_is_reported_unchanged() {
        let mut repo = MockCallRepository::new();
        repo.expect_get_by_conversation_id()
            .returning(|_| Ok(Some(call(CallStatus::Completed, Some("conv_1")))));
        repo.expect_finish_call()
            .times(1)
            .returning(|_, _| Ok(finished(CallStatus::Completed, false, 0)));

        let outcome = apply(repo, PostCallEvent::Transcription(report(None)))
            .await
            .expect("ok");

        assert!(matches!(outcome, PostCallOutcome::Unchanged(_)));
    }

    #[tokio::test]
    async fn with_batches_the_recipient_is_settled_before_the_answer_also_on_a_repeat() {
        for (status, changed) in [
            (CallStatus::Completed, true),
            (CallStatus::Completed, false),
        ] {
            let mut repo = MockCallRepository::new();
            repo.expect_get_by_conversation_id()
                .returning(|_| Ok(Some(call(CallStatus::InProgress, Some("conv_1")))));
            repo.expect_finish_call()
                .returning(move |_, _| Ok(finished(status, changed, 0)));
            let mut batches = crate::ports::MockBatchRepository::new();
            batches
                .expect_settle_call()
                .withf(|sid, redialable, _| sid.as_str() == "EL_1_x" && *redialable)
                .times(1)
                .returning(|_, _, _| Ok(Some(crate::models::RecipientState::Completed)));
            ApplyPostCall::new(Arc::new(repo))
                .with_batches(Arc::new(batches))
                .execute(&PostCallEvent::Transcription(report(None)))
                .await
                .expect("ok");
        }
    }

    #[tokio::test]
    async fn with_batches_an_unknown_call_settles_nothing_and_a_settle_failure_is_an_error() {
        let mut repo = MockCallRepository::new();
        repo.expect_get_by_conversation_id().returning(|_| Ok(None));
        let mut batches = crate::ports::MockBatchRepository::new();
        batches.expect_settle_call().times(0);
        let outcome = ApplyPostCall::new(Arc::new(repo))
            .with_batches(Arc::new(batches))
            .execute(&PostCallEvent::Transcription(report(None)))
            .await
            .expect("ok");
        assert_eq!(outcome, PostCallOutcome::UnknownCall);

        let mut repo = MockCallRepository::new();
        repo.expect_get_by_conversation_id()
            .returning(|_| Ok(Some(call(CallStatus::InProgress, Some("conv_1")))));
        repo.expect_finish_call()
            .returning(|_, _| Ok(finished(CallStatus::Failed, true, 0)));
        let mut batches = crate::ports::MockBatchRepository::new();
        batches
            .expect_settle_call()
            .returning(|_, _, _| Err(RepositoryError::Unavailable("down".into())));
        let failed = ApplyPostCall::new(Arc::new(repo))
            .with_batches(Arc::new(batches))
            .execute(&PostCallEvent::InitiationFailure {
                conversation_id: Some(ConversationId::parse("conv_1").expect("conv")),
                call_sid: None,
                failure_reason: "busy".into(),
            })
            .await;
        assert!(
            matches!(failed, Err(PostCallError::Unavailable(_))),
            "{failed:?}"
        );
    }

    #[tokio::test]
    async fn a_call_without_conversation_id_is_found_by_call_sid_and_linked_in_the_finish() {
        let mut repo = found_by_call_sid(call(CallStatus::Failed, None));
        repo.expect_finish_call()
            .withf(|sid, f| {
                sid.as_str() == "EL_1_x"
                    && f.conversation_id.as_ref().map(ConversationId::as_str) == Some("conv_1")
            })
            .times(1)
            .returning(|_, _| Ok(finished(CallStatus::Completed, true, 0)));

        let outcome = apply(repo, PostCallEvent::Transcription(report(Some("EL_1_x"))))
            .await
            .expect("ok");

        assert!(matches!(outcome, PostCallOutcome::Completed { .. }));
    }

    #[tokio::test]
    async fn a_call_sid_whose_call_has_another_conversation_is_not_ours() {
        let mut repo = found_by_call_sid(call(CallStatus::InProgress, Some("conv_other")));
        repo.expect_finish_call().times(0);

        let outcome = apply(repo, PostCallEvent::Transcription(report(Some("EL_1_x"))))
            .await
            .expect("ok");

        assert_eq!(outcome, PostCallOutcome::UnknownCall);
    }

    #[tokio::test]
    async fn a_conflict_while_linking_is_an_unknown_call_not_an_error() {
        let mut repo = found_by_call_sid(call(CallStatus::InProgress, None));
        repo.expect_finish_call()
            .returning(|_, _| Err(RepositoryError::Conflict("taken".into())));

        let outcome = apply(repo, PostCallEvent::Transcription(report(Some("EL_1_x"))))
            .await
            .expect("ok");

        assert_eq!(outcome, PostCallOutcome::UnknownCall);
    }

    #[tokio::test]
    async fn a_database_outage_is_reported_as_unavailable() {
        let mut repo = MockCallRepository::new();
        repo.expect_get_by_conversation_id()
            .returning(|_| Ok(Some(call(CallStatus::InProgress, Some("conv_1")))));
        repo.expect_finish_call()
            .returning(|_, _| Err(RepositoryError::Unavailable("down".into())));

        let err = apply(repo, PostCallEvent::Transcription(report(None)))
            .await
            .expect_err("fails");

        assert!(matches!(err, PostCallError::Unavailable(_)));
    }

    #[tokio::test]
    async fn an_unknown_call_is_reported_not_failed() {
        let mut repo = MockCallRepository::new();
        repo.expect_get_by_conversation_id().returning(|_| Ok(None));
        repo.expect_get_by_call_sid().returning(|_| Ok(None));

        let outcome = apply(
            repo,
            PostCallEvent::Transcription(report(Some("EL_9_none"))),
        )
        .await
        .expect("ok");

        assert_eq!(outcome, PostCallOutcome::UnknownCall);
    }

    fn busy() -> PostCallEvent {
        PostCallEvent::InitiationFailure {
            conversation_id: Some(ConversationId::parse("conv_1").expect("conv")),
            call_sid: None,
            failure_reason: "busy".into(),
        }
    }

    /// A repository whose Call for conv_1 is in `status`.
    fn found_by_conversation(status: CallStatus) -> MockCallRepository {
        let mut repo = MockCallRepository::new();
        repo.expect_get_by_conversation_id()
            .returning(move |_| Ok(Some(call(status, Some("conv_1")))));
        repo
    }

    #[tokio::test]
    async fn an_initiation_failure_fails_an_in_progress_call_with_its_reason() {
        let mut repo = found_by_conversation(CallStatus::InProgress);
        repo.expect_finish_call()
            .withf(|_, f| matches!(&f.ending, Ending::Failed { reason, .. } if reason == "busy"))
            .times(1)
            .returning(|_, _| Ok(finished(CallStatus::Failed, true, 0)));
        let outcome = apply(repo, busy()).await.expect("ok");
        assert!(matches!(outcome, PostCallOutcome::Failed(_)));
    }

    #[tokio::test]
    async fn an_initiation_failure_leaves_a_completed_call_alone() {
        let mut repo = found_by_conversation(CallStatus::Completed);
        repo.expect_finish_call().times(0);
        let outcome = apply(repo, busy()).await.expect("ok");
        assert!(matches!(outcome, PostCallOutcome::Unchanged(_)));
    }
}
