//! Apply ElevenLabs' post-call webhook to our Call: `post_call_transcription` completes
//! it, `call_initiation_failure` fails it. Idempotent: a repeated delivery changes nothing.

use std::sync::Arc;

use time::{Duration, OffsetDateTime};

use crate::models::{Call, CallSid, CallStatus, ConversationId, NewTurn, SpeakerType};
use crate::ports::{BoxError, CallRepository, RepositoryError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostCallEvent {
    Transcription {
        conversation_id: ConversationId,
        /// Our call_sid from the event's dynamic variables, when present.
        call_sid: Option<CallSid>,
        start_unix_secs: Option<i64>,
        duration_secs: Option<i64>,
        /// The event's transcript, used only when no turn reached our webhook.
        transcript: Vec<EventTurn>,
    },
    InitiationFailure {
        conversation_id: Option<ConversationId>,
        call_sid: Option<CallSid>,
        reason: String,
    },
}

/// One turn of a post-call transcript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTurn {
    pub speaker: SpeakerType,
    pub message: String,
    pub time_in_call_secs: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostCallOutcome {
    Completed(CallSid),
    Failed(CallSid),
    /// Already in the state the event asks for, or in a final state it may not change.
    Unchanged(CallSid),
    UnknownCall,
}

#[derive(Debug, thiserror::Error)]
pub enum PostCallError {
    #[error("database unavailable")]
    Unavailable(#[source] BoxError),
    #[error("unexpected error while applying a post-call event")]
    Unexpected(#[source] BoxError),
}

impl From<RepositoryError> for PostCallError {
    fn from(e: RepositoryError) -> Self {
        match e {
            RepositoryError::Unavailable(inner) => Self::Unavailable(inner),
            other => Self::Unexpected(Box::new(other)),
        }
    }
}

pub struct ApplyPostCall {
    repository: Arc<dyn CallRepository>,
}

impl ApplyPostCall {
    pub fn new(repository: Arc<dyn CallRepository>) -> Self {
        Self { repository }
    }

    /// By conversation_id; else by our call_sid (an outbound request that timed out on our
    /// side may still have placed the call), linking the conversation_id to it.
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
            (None, Some(conv)) => match self.repository.set_conversation_id(sid, conv).await {
                Ok(linked) => Ok(Some(linked)),
                Err(RepositoryError::Conflict(why)) => {
                    tracing::warn!(%why, "post-call event's conversation_id cannot be linked");
                    Ok(None)
                }
                Err(e) => Err(e.into()),
            },
            (Some(mine), Some(theirs)) if mine != theirs => {
                tracing::warn!(%mine, %theirs, "post-call event names another conversation for this call_sid");
                Ok(None)
            }
            _ => Ok(Some(call)),
        }
    }

    /// When no turn reached our webhook (a Call that failed on our side but took place
    /// refuses them), the event's transcript is stored instead, so nothing is lost. It runs
    /// on repeated deliveries too: appends are idempotent.
    async fn recover_transcript(
        &self,
        call_sid: &CallSid,
        start: OffsetDateTime,
        transcript: &[EventTurn],
    ) -> Result<(), PostCallError> {
        if transcript.is_empty() || !self.repository.list_turns(call_sid).await?.is_empty() {
            return Ok(());
        }
        let mut stored = 0;
        for turn in transcript.iter().filter(|t| !t.message.trim().is_empty()) {
            let timestamp = start
                .checked_add(Duration::seconds(turn.time_in_call_secs.max(0)))
                .unwrap_or(start);
            let new = NewTurn {
                call_sid: call_sid.clone(),
                speaker: turn.speaker,
                message: turn.message.clone(),
                timestamp,
            };
            match self.repository.append_turn(&new).await {
                Ok(_) => stored += 1,
                Err(RepositoryError::Incomplete { .. }) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        tracing::info!(stored, "transcript recovered from the post-call event");
        Ok(())
    }

    #[tracing::instrument(name = "post_call", skip_all)]
    pub async fn execute(&self, event: &PostCallEvent) -> Result<PostCallOutcome, PostCallError> {
        match event {
            PostCallEvent::Transcription {
                conversation_id,
                call_sid,
                start_unix_secs,
                duration_secs,
                transcript,
            } => {
                let Some(call) = self.find(Some(conversation_id), call_sid.as_ref()).await? else {
                    return Ok(PostCallOutcome::UnknownCall);
                };
                let start = start_unix_secs
                    .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
                    .unwrap_or(call.call_start_time);
                let outcome = if call.status == CallStatus::Completed {
                    PostCallOutcome::Unchanged(call.call_sid.clone())
                } else {
                    let end = duration_secs
                        .filter(|d| *d >= 0)
                        .and_then(|d| start.checked_add(Duration::seconds(d)))
                        .unwrap_or_else(OffsetDateTime::now_utc);
                    // A Call we marked failed (say, our request timed out) that did take
                    // place becomes completed: the provider's word is final.
                    self.repository
                        .set_status(&call.call_sid, CallStatus::Completed, Some(end), None)
                        .await?;
                    PostCallOutcome::Completed(call.call_sid.clone())
                };
                self.recover_transcript(&call.call_sid, start, transcript)
                    .await?;
                Ok(outcome)
            }
            PostCallEvent::InitiationFailure {
                conversation_id,
                call_sid,
                reason,
            } => {
                let Some(call) = self
                    .find(conversation_id.as_ref(), call_sid.as_ref())
                    .await?
                else {
                    return Ok(PostCallOutcome::UnknownCall);
                };
                if call.status.is_terminal() {
                    return Ok(PostCallOutcome::Unchanged(call.call_sid));
                }
                self.repository
                    .set_status(
                        &call.call_sid,
                        CallStatus::Failed,
                        Some(OffsetDateTime::now_utc()),
                        Some(format!("call initiation failure: {reason}")),
                    )
                    .await?;
                Ok(PostCallOutcome::Failed(call.call_sid))
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
            created_at: t,
            updated_at: t,
        }
    }

    fn transcription(call_sid: Option<&str>) -> PostCallEvent {
        PostCallEvent::Transcription {
            conversation_id: ConversationId::parse("conv_1").expect("conv"),
            call_sid: call_sid.map(|s| CallSid::parse(s).expect("sid")),
            start_unix_secs: Some(1_732_183_200),
            duration_secs: Some(95),
            transcript: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_transcription_event_completes_the_call_with_start_plus_duration() {
        let mut repo = MockCallRepository::new();
        repo.expect_get_by_conversation_id()
            .returning(|_| Ok(Some(call(CallStatus::InProgress, Some("conv_1")))));
        repo.expect_set_status()
            .withf(|_, s, end, reason| {
                *s == CallStatus::Completed
                    && *end == Some(datetime!(2024-11-21 10:01:35 UTC))
                    && reason.is_none()
            })
            .times(1)
            .returning(|_, _, _, _| Ok(call(CallStatus::Completed, Some("conv_1"))));

        let outcome = ApplyPostCall::new(Arc::new(repo))
            .execute(&transcription(None))
            .await
            .expect("ok");

        assert!(matches!(outcome, PostCallOutcome::Completed(_)));
    }

    #[tokio::test]
    async fn a_repeated_event_changes_nothing() {
        let mut repo = MockCallRepository::new();
        repo.expect_get_by_conversation_id()
            .returning(|_| Ok(Some(call(CallStatus::Completed, Some("conv_1")))));
        repo.expect_set_status().times(0);

        let outcome = ApplyPostCall::new(Arc::new(repo))
            .execute(&transcription(None))
            .await
            .expect("ok");

        assert!(matches!(outcome, PostCallOutcome::Unchanged(_)));
    }

    #[tokio::test]
    async fn a_call_without_conversation_id_is_found_by_call_sid_and_linked() {
        let mut repo = MockCallRepository::new();
        repo.expect_get_by_conversation_id().returning(|_| Ok(None));
        repo.expect_get_by_call_sid()
            .returning(|_| Ok(Some(call(CallStatus::Failed, None))));
        repo.expect_set_conversation_id()
            .withf(|sid, conv| sid.as_str() == "EL_1_x" && conv.as_str() == "conv_1")
            .times(1)
            .returning(|_, _| Ok(call(CallStatus::Failed, Some("conv_1"))));
        repo.expect_set_status()
            .withf(|_, s, _, _| *s == CallStatus::Completed)
            .times(1)
            .returning(|_, _, _, _| Ok(call(CallStatus::Completed, Some("conv_1"))));

        let outcome = ApplyPostCall::new(Arc::new(repo))
            .execute(&transcription(Some("EL_1_x")))
            .await
            .expect("ok");

        assert!(matches!(outcome, PostCallOutcome::Completed(_)));
    }

    #[tokio::test]
    async fn the_event_transcript_is_stored_when_no_turn_reached_us() {
        let mut event = transcription(None);
        if let PostCallEvent::Transcription { transcript, .. } = &mut event {
            *transcript = vec![
                EventTurn {
                    speaker: SpeakerType::Agent,
                    message: "Hi".into(),
                    time_in_call_secs: 0,
                },
                EventTurn {
                    speaker: SpeakerType::Driver,
                    message: " ".into(),
                    time_in_call_secs: 2,
                },
                EventTurn {
                    speaker: SpeakerType::Driver,
                    message: "Hello".into(),
                    time_in_call_secs: 3,
                },
            ];
        }
        let mut repo = MockCallRepository::new();
        repo.expect_get_by_conversation_id()
            .returning(|_| Ok(Some(call(CallStatus::InProgress, Some("conv_1")))));
        repo.expect_set_status()
            .returning(|_, _, _, _| Ok(call(CallStatus::Completed, Some("conv_1"))));
        repo.expect_list_turns()
            .times(1)
            .returning(|_| Ok(Vec::new()));
        let mut seq = mockall::Sequence::new();
        repo.expect_append_turn()
            .withf(|t| t.message == "Hi" && t.timestamp == datetime!(2024-11-21 10:00:00 UTC))
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| {
                Ok(crate::ports::AppendOutcome::Created(
                    crate::ports::StoredTurn {
                        transcription_id: 1,
                        sequence_number: 1,
                    },
                ))
            });
        repo.expect_append_turn()
            .withf(|t| {
                t.message == "Hello"
                    && t.speaker == SpeakerType::Driver
                    && t.timestamp == datetime!(2024-11-21 10:00:03 UTC)
            })
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| {
                Ok(crate::ports::AppendOutcome::Created(
                    crate::ports::StoredTurn {
                        transcription_id: 2,
                        sequence_number: 2,
                    },
                ))
            });

        let outcome = ApplyPostCall::new(Arc::new(repo))
            .execute(&event)
            .await
            .expect("ok");

        assert!(matches!(outcome, PostCallOutcome::Completed(_)));
    }

    #[tokio::test]
    async fn an_unknown_call_is_reported_not_failed() {
        let mut repo = MockCallRepository::new();
        repo.expect_get_by_conversation_id().returning(|_| Ok(None));
        repo.expect_get_by_call_sid().returning(|_| Ok(None));

        let outcome = ApplyPostCall::new(Arc::new(repo))
            .execute(&transcription(Some("EL_9_none")))
            .await
            .expect("ok");

        assert_eq!(outcome, PostCallOutcome::UnknownCall);
    }

    #[tokio::test]
    async fn an_initiation_failure_fails_an_in_progress_call_but_not_a_completed_one() {
        let event = PostCallEvent::InitiationFailure {
            conversation_id: Some(ConversationId::parse("conv_1").expect("conv")),
            call_sid: None,
            reason: "busy".into(),
        };
        let mut repo = MockCallRepository::new();
        repo.expect_get_by_conversation_id()
            .returning(|_| Ok(Some(call(CallStatus::InProgress, Some("conv_1")))));
        repo.expect_set_status()
            .withf(|_, s, _, r| {
                *s == CallStatus::Failed && r.as_deref() == Some("call initiation failure: busy")
            })
            .times(1)
            .returning(|_, _, _, _| Ok(call(CallStatus::Failed, Some("conv_1"))));
        let outcome = ApplyPostCall::new(Arc::new(repo))
            .execute(&event)
            .await
            .expect("ok");
        assert!(matches!(outcome, PostCallOutcome::Failed(_)));

        let mut repo = MockCallRepository::new();
        repo.expect_get_by_conversation_id()
            .returning(|_| Ok(Some(call(CallStatus::Completed, Some("conv_1")))));
        repo.expect_set_status().times(0);
        let outcome = ApplyPostCall::new(Arc::new(repo))
            .execute(&event)
            .await
            .expect("ok");
        assert!(matches!(outcome, PostCallOutcome::Unchanged(_)));
    }
}
