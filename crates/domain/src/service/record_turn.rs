//! Record one transcription turn that ElevenLabs posts for our call_sid.

use std::sync::Arc;
use std::time::Duration;

use crate::models::{CallSid, CallStatus, NewTurn};
use crate::ports::{AppendOutcome, BoxError, CallRepository, RepositoryError, Timer};

/// What went wrong, as a reason; the HTTP layer chooses the wording.
#[derive(Debug, thiserror::Error)]
pub enum RecordTurnError {
    /// Unknown call_sid, a failed Call, or one still without conversation_id after the wait.
    #[error("no Call can take a turn for call_sid {call_sid}: {reason}")]
    CallNotFound {
        call_sid: CallSid,
        reason: NotFoundReason,
    },
    #[error("database unavailable")]
    Unavailable(#[source] BoxError),
    #[error("unexpected error while recording a turn")]
    Unexpected(#[source] BoxError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotFoundReason {
    #[error("no Call has this call_sid")]
    UnknownCallSid,
    #[error("the Call failed")]
    CallFailed,
    #[error("the Call has no conversation_id yet")]
    NoConversationIdYet,
    #[error("the Call completed without a conversation_id")]
    CallCompletedWithoutConversation,
}

/// ElevenLabs may post the first turn before its answer to our outbound-call request
/// (which carries the conversation_id) has reached us, so a turn for an `in_progress`
/// Call without conversation_id waits for it, up to `conversation_wait`.
pub struct RecordTurn {
    repository: Arc<dyn CallRepository>,
    timer: Arc<dyn Timer>,
    conversation_wait: Duration,
}

/// First poll soon (the answer is usually milliseconds away), then back off.
const FIRST_POLL: Duration = Duration::from_millis(25);
const MAX_POLL: Duration = Duration::from_millis(250);

impl RecordTurn {
    pub fn new(
        repository: Arc<dyn CallRepository>,
        timer: Arc<dyn Timer>,
        conversation_wait: Duration,
    ) -> Self {
        Self {
            repository,
            timer,
            conversation_wait,
        }
    }

    #[tracing::instrument(name = "record_turn", skip_all, fields(call_sid = %turn.call_sid))]
    pub async fn execute(&self, turn: &NewTurn) -> Result<AppendOutcome, RecordTurnError> {
        // The time slept, not the time passed: the appends in between are bounded by the
        // database's timeouts, and counting sleeps needs no clock.
        let mut waited = Duration::ZERO;
        let mut poll = FIRST_POLL;
        loop {
            match self.repository.append_turn(turn).await {
                Ok(outcome) => return Ok(outcome),
                Err(RepositoryError::NotFound) => {
                    return Err(self.not_found(turn, NotFoundReason::UnknownCallSid));
                }
                Err(RepositoryError::Incomplete { status }) => {
                    let reason = match status {
                        CallStatus::Failed => NotFoundReason::CallFailed,
                        CallStatus::Completed => NotFoundReason::CallCompletedWithoutConversation,
                        CallStatus::InProgress => NotFoundReason::NoConversationIdYet,
                    };
                    if status != CallStatus::InProgress || waited >= self.conversation_wait {
                        return Err(self.not_found(turn, reason));
                    }
                    tracing::debug!("call has no conversation_id yet; waiting for it");
                    let pause = poll.min(self.conversation_wait - waited);
                    self.timer.sleep(pause).await;
                    waited += pause;
                    poll = (poll * 2).min(MAX_POLL);
                }
                Err(RepositoryError::Unavailable(e)) => {
                    return Err(RecordTurnError::Unavailable(e));
                }
                Err(e @ (RepositoryError::Conflict(_) | RepositoryError::Unexpected(_))) => {
                    return Err(RecordTurnError::Unexpected(Box::new(e)));
                }
            }
        }
    }

    fn not_found(&self, turn: &NewTurn, reason: NotFoundReason) -> RecordTurnError {
        tracing::warn!(?reason, "turn refused: call record not found or incomplete");
        RecordTurnError::CallNotFound {
            call_sid: turn.call_sid.clone(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{MockCallRepository, StoredTurn};

    fn turn() -> NewTurn {
        NewTurn::parse("EL_555_1700000005", "user", "Hello", "2024-11-21T10:30:00Z")
            .expect("valid turn")
    }

    /// tokio's timer, so that `start_paused` tests run in virtual time.
    struct TokioTimer;

    #[async_trait::async_trait]
    impl Timer for TokioTimer {
        async fn sleep(&self, duration: Duration) {
            tokio::time::sleep(duration).await;
        }
    }

    fn use_case(repo: MockCallRepository, wait_ms: u64) -> RecordTurn {
        RecordTurn::new(
            Arc::new(repo),
            Arc::new(TokioTimer),
            Duration::from_millis(wait_ms),
        )
    }

    const STORED: StoredTurn = StoredTurn {
        transcription_id: 7,
        sequence_number: 1,
    };

    #[tokio::test]
    async fn a_parsed_turn_reaches_the_repository_with_the_driver_speaker() {
        let mut repo = MockCallRepository::new();
        repo.expect_append_turn()
            .withf(|t| {
                t.call_sid.as_str() == "EL_555_1700000005"
                    && t.speaker == crate::SpeakerType::Driver
                    && t.message == "Hello"
            })
            .times(1)
            .returning(|_| Ok(AppendOutcome::Created(STORED)));
        let outcome = use_case(repo, 0).execute(&turn()).await.expect("stored");
        assert_eq!(outcome, AppendOutcome::Created(STORED));
    }

    #[tokio::test]
    async fn a_duplicate_is_passed_through() {
        let mut repo = MockCallRepository::new();
        repo.expect_append_turn()
            .returning(|_| Ok(AppendOutcome::Duplicate(STORED)));
        let outcome = use_case(repo, 0).execute(&turn()).await.expect("stored");
        assert_eq!(outcome, AppendOutcome::Duplicate(STORED));
    }

    #[tokio::test]
    async fn an_unknown_call_sid_is_not_found_without_waiting() {
        let mut repo = MockCallRepository::new();
        repo.expect_append_turn()
            .times(1)
            .returning(|_| Err(RepositoryError::NotFound));
        let err = use_case(repo, 5_000)
            .execute(&turn())
            .await
            .expect_err("not found");
        assert!(matches!(
            err,
            RecordTurnError::CallNotFound {
                reason: NotFoundReason::UnknownCallSid,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "no Call can take a turn for call_sid EL_555_1700000005: no Call has this call_sid"
        );
    }

    #[tokio::test]
    async fn a_failed_call_is_refused_at_once() {
        let mut repo = MockCallRepository::new();
        repo.expect_append_turn().times(1).returning(|_| {
            Err(RepositoryError::Incomplete {
                status: CallStatus::Failed,
            })
        });
        let err = use_case(repo, 5_000)
            .execute(&turn())
            .await
            .expect_err("refused");
        assert!(matches!(
            err,
            RecordTurnError::CallNotFound {
                reason: NotFoundReason::CallFailed,
                ..
            }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn an_in_progress_call_waits_for_its_conversation_id() {
        let mut repo = MockCallRepository::new();
        let mut seq = mockall::Sequence::new();
        repo.expect_append_turn()
            .times(3)
            .in_sequence(&mut seq)
            .returning(|_| {
                Err(RepositoryError::Incomplete {
                    status: CallStatus::InProgress,
                })
            });
        repo.expect_append_turn()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(AppendOutcome::Created(STORED)));
        let outcome = use_case(repo, 5_000)
            .execute(&turn())
            .await
            .expect("stored");
        assert_eq!(outcome, AppendOutcome::Created(STORED));
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_is_bounded() {
        let mut repo = MockCallRepository::new();
        repo.expect_append_turn().returning(|_| {
            Err(RepositoryError::Incomplete {
                status: CallStatus::InProgress,
            })
        });
        let started = tokio::time::Instant::now();
        let err = use_case(repo, 1_000)
            .execute(&turn())
            .await
            .expect_err("gave up");
        assert!(matches!(
            err,
            RecordTurnError::CallNotFound {
                reason: NotFoundReason::NoConversationIdYet,
                ..
            }
        ));
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(1_000), "waited {waited:?}");
        assert!(waited < Duration::from_millis(1_300), "waited {waited:?}");
    }

    #[tokio::test]
    async fn an_unavailable_database_is_reported_as_such() {
        let mut repo = MockCallRepository::new();
        repo.expect_append_turn()
            .returning(|_| Err(RepositoryError::Unavailable("connection refused".into())));
        let err = use_case(repo, 0)
            .execute(&turn())
            .await
            .expect_err("unavailable");
        assert!(matches!(err, RecordTurnError::Unavailable(_)));
    }
}
