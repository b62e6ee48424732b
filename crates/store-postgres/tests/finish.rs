//! `finish_call`: a post-call event (or a conversation-API answer) applied whole in one
//! transaction: status, outcome, conversation link and transcript reconciliation.

use std::collections::BTreeMap;
use std::time::Duration;

use calls_domain::{
    CallFinish, CallOutcome, CallRepository, CallSid, CallStatus, ConversationId, Ending,
    EventTurn, NewCall, NewTurn, RepositoryError, SpeakerType,
};
use calls_store_postgres::testing::TestDatabase;
use calls_store_postgres::{PgCallRepository, RetryPolicy, build_pool};
use time::OffsetDateTime;
use time::macros::datetime;

const START: OffsetDateTime = datetime!(2024-11-21 10:00:00 UTC);

fn sid(s: &str) -> CallSid {
    CallSid::parse(s).expect("sid")
}

fn conv(s: &str) -> ConversationId {
    ConversationId::parse(s).expect("conv")
}

async fn call(repo: &PgCallRepository, call_sid: &str, conversation: Option<&str>) {
    repo.create_call(&NewCall {
        call_sid: sid(call_sid),
        driver_id: Some(7),
        call_start_time: START,
    })
    .await
    .expect("created");
    if let Some(c) = conversation {
        repo.set_conversation_id(&sid(call_sid), &conv(c))
            .await
            .expect("linked");
    }
}

async fn webhook(repo: &PgCallRepository, call_sid: &str, speaker: &str, text: &str, secs: i64) {
    let ts = (START + time::Duration::seconds(secs))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("ts");
    repo.append_turn(&NewTurn::parse(call_sid, speaker, text, &ts).expect("turn"))
        .await
        .expect("append");
}

const EVENT: [(SpeakerType, &str, i64); 4] = [
    (SpeakerType::Agent, "Hi, this is dispatch.", 0),
    (SpeakerType::Driver, "Hello.", 3),
    (SpeakerType::Agent, "Your reefer is out of range.", 5),
    (SpeakerType::Driver, "I'll fix it by noon.", 9),
];

fn outcome() -> CallOutcome {
    CallOutcome {
        call_successful: Some("success".into()),
        summary: Some("Driver will fix the reefer.".into()),
        data_collection: BTreeMap::from([
            ("acknowledged".to_owned(), serde_json::json!(true)),
            ("fix_eta".to_owned(), serde_json::json!("noon")),
        ]),
        termination_reason: Some("end_call tool".into()),
        duration_secs: Some(42),
    }
}

fn completed(conversation: &str, event: &[(SpeakerType, &str, i64)]) -> CallFinish {
    CallFinish {
        conversation_id: Some(conv(conversation)),
        ending: Ending::Completed {
            end: START + time::Duration::seconds(42),
            outcome: outcome(),
            start: START,
            transcript: event
                .iter()
                .map(|(speaker, text, secs)| EventTurn {
                    speaker: *speaker,
                    message: (*text).to_owned(),
                    time_in_call_secs: *secs,
                })
                .collect(),
        },
    }
}

/// (id, seq, speaker, text) of the stored transcript.
async fn transcript(repo: &PgCallRepository, call_sid: &str) -> Vec<(i64, i32, String, String)> {
    repo.list_turns(&sid(call_sid))
        .await
        .expect("turns")
        .into_iter()
        .map(|t| {
            (
                t.id,
                t.sequence_number,
                t.speaker_type.as_str().to_owned(),
                t.message_text,
            )
        })
        .collect()
}

fn assert_gapless(turns: &[(i64, i32, String, String)]) {
    let numbers: Vec<i32> = turns.iter().map(|t| t.1).collect();
    let expected: Vec<i32> = (1..=turns.len() as i32).collect();
    assert_eq!(numbers, expected, "numbers are 1..N");
}

#[tokio::test]
async fn a_completed_finish_stores_status_end_time_and_outcome() {
    let db = TestDatabase::new().await;
    let repo = db.repository();
    call(&repo, "EL_7_a", Some("conv_a")).await;

    let done = repo
        .finish_call(&sid("EL_7_a"), &completed("conv_a", &[]))
        .await
        .expect("finished");

    assert!(done.status_changed);
    let read = repo
        .get_by_call_sid(&sid("EL_7_a"))
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(read.status, CallStatus::Completed);
    assert_eq!(read.call_end_time, Some(datetime!(2024-11-21 10:00:42 UTC)));
    assert_eq!(read.outcome, Some(outcome()));
}

#[tokio::test]
async fn missing_turns_are_inserted_in_event_order_and_webhook_turns_keep_their_ids() {
    let db = TestDatabase::new().await;
    let repo = db.repository();
    call(&repo, "EL_7_b", Some("conv_b")).await;
    // The webhook delivered turns 2 and 4 only; an extra turn the event lacks sits between.
    webhook(&repo, "EL_7_b", "user", "Hello.", 3).await;
    webhook(&repo, "EL_7_b", "user", "Uh, one second.", 4).await;
    webhook(&repo, "EL_7_b", "user", "I'll fix it by noon.", 9).await;
    let before = transcript(&repo, "EL_7_b").await;

    let done = repo
        .finish_call(&sid("EL_7_b"), &completed("conv_b", &EVENT))
        .await
        .expect("finished");

    let after = transcript(&repo, "EL_7_b").await;
    assert_gapless(&after);
    let texts: Vec<&str> = after.iter().map(|t| t.3.as_str()).collect();
    assert_eq!(
        texts,
        [
            "Hi, this is dispatch.",
            "Hello.",
            "Uh, one second.",
            "Your reefer is out of range.",
            "I'll fix it by noon."
        ]
    );
    // Webhook turns keep their ids.
    for (id, _, _, text) in &before {
        assert!(after.iter().any(|t| t.0 == *id && &t.3 == text));
    }
    assert_eq!(done.turns_inserted, 2);
    let inserted = repo.list_turns(&sid("EL_7_b")).await.expect("turns");
    assert_eq!(
        inserted[3].timestamp,
        datetime!(2024-11-21 10:00:05 UTC),
        "inserted turns are timed start + time_in_call_secs"
    );
}

#[tokio::test]
async fn a_repeated_finish_changes_nothing() {
    let db = TestDatabase::new().await;
    let repo = db.repository();
    call(&repo, "EL_7_c", Some("conv_c")).await;
    webhook(&repo, "EL_7_c", "user", "Hello.", 3).await;
    repo.finish_call(&sid("EL_7_c"), &completed("conv_c", &EVENT))
        .await
        .expect("first");
    let call_before = repo.get_by_call_sid(&sid("EL_7_c")).await.expect("read");
    let before = transcript(&repo, "EL_7_c").await;

    let again = repo
        .finish_call(&sid("EL_7_c"), &completed("conv_c", &EVENT))
        .await
        .expect("again");

    assert!(again.is_unchanged());
    assert_eq!(transcript(&repo, "EL_7_c").await, before);
    assert_eq!(
        repo.get_by_call_sid(&sid("EL_7_c")).await.expect("read"),
        call_before,
        "not even updated_at moves"
    );
}

#[tokio::test]
async fn a_late_webhook_for_a_reconciled_turn_is_a_duplicate() {
    let db = TestDatabase::new().await;
    let repo = db.repository();
    call(&repo, "EL_7_d", Some("conv_d")).await;
    repo.finish_call(&sid("EL_7_d"), &completed("conv_d", &EVENT))
        .await
        .expect("finished");

    // The webhook's timestamp differs from the event's (start + secs).
    let late = NewTurn::parse("EL_7_d", "user", "Hello.", "2024-11-21T10:00:03.5Z").expect("turn");
    let outcome = repo.append_turn(&late).await.expect("append");

    assert!(matches!(outcome, calls_domain::AppendOutcome::Duplicate(s) if s.sequence_number == 2));
    assert_eq!(transcript(&repo, "EL_7_d").await.len(), 4);
}

#[tokio::test]
async fn the_finish_links_a_conversation_id_and_refuses_another_calls() {
    let db = TestDatabase::new().await;
    let repo = db.repository();
    call(&repo, "EL_7_e", None).await;
    call(&repo, "EL_7_f", Some("conv_taken")).await;

    repo.finish_call(&sid("EL_7_e"), &completed("conv_e", &EVENT[..1]))
        .await
        .expect("linked and finished");
    let read = repo.get_by_call_sid(&sid("EL_7_e")).await.expect("read");
    assert_eq!(
        read.and_then(|c| c.conversation_id).map(|c| c.to_string()),
        Some("conv_e".to_owned())
    );
    assert_eq!(transcript(&repo, "EL_7_e").await.len(), 1);

    // A Call with another conversation_id, or a conversation_id of another Call: nothing written.
    call(&repo, "EL_7_g", None).await;
    let err = repo
        .finish_call(&sid("EL_7_g"), &completed("conv_taken", &EVENT))
        .await
        .expect_err("conflict");
    assert!(matches!(err, RepositoryError::Conflict(_)));
    let g = repo
        .get_by_call_sid(&sid("EL_7_g"))
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(g.status, CallStatus::InProgress, "no half-applied event");
    assert_eq!(g.outcome, None);
    let err = repo
        .finish_call(&sid("EL_7_f"), &completed("conv_other", &EVENT))
        .await
        .expect_err("conflict");
    assert!(matches!(err, RepositoryError::Conflict(_)));
}

#[tokio::test]
async fn a_failed_finish_applies_to_an_in_progress_call_only() {
    let db = TestDatabase::new().await;
    let repo = db.repository();
    call(&repo, "EL_7_h", Some("conv_h")).await;
    let fail = CallFinish {
        conversation_id: None,
        ending: Ending::Failed {
            end: START,
            reason: "busy".into(),
        },
    };

    let done = repo
        .finish_call(&sid("EL_7_h"), &fail)
        .await
        .expect("failed");
    assert!(done.status_changed);
    assert_eq!(done.call.status, CallStatus::Failed);
    assert_eq!(done.call.failure_reason.as_deref(), Some("busy"));

    let again = repo
        .finish_call(&sid("EL_7_h"), &fail)
        .await
        .expect("again");
    assert!(again.is_unchanged());

    // A completed event still completes it: the provider's word is final.
    let done = repo
        .finish_call(&sid("EL_7_h"), &completed("conv_h", &[]))
        .await
        .expect("completed");
    assert_eq!(done.call.status, CallStatus::Completed);
    assert_eq!(done.call.failure_reason, None);
    let again = repo
        .finish_call(&sid("EL_7_h"), &fail)
        .await
        .expect("late failure");
    assert!(again.is_unchanged());
    assert_eq!(again.call.status, CallStatus::Completed);
}

#[tokio::test]
async fn an_unknown_call_is_not_found() {
    let db = TestDatabase::new().await;
    let repo = db.repository();
    let err = repo
        .finish_call(&sid("EL_nobody"), &completed("conv_x", &EVENT))
        .await
        .expect_err("unknown");
    assert!(matches!(err, RepositoryError::NotFound));
}

/// Webhook turns racing the reconciliation, from several connections: the numbers stay
/// 1..N and no turn is stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_racing_a_reconciliation_keep_numbers_gapless_without_duplicates() {
    let db = TestDatabase::new().await;
    let repo = db.repository();
    call(&repo, "EL_7_race", Some("conv_race")).await;
    let event: Vec<(SpeakerType, String, i64)> = (0..40)
        .map(|i| {
            let speaker = if i % 2 == 0 {
                SpeakerType::Agent
            } else {
                SpeakerType::Driver
            };
            (speaker, format!("turn {i}"), i)
        })
        .collect();
    let event_ref: Vec<(SpeakerType, &str, i64)> =
        event.iter().map(|(s, t, i)| (*s, t.as_str(), *i)).collect();
    let finish = completed("conv_race", &event_ref);

    let mut config = db.config().clone();
    config.pool_size = 4;
    let other = PgCallRepository::new(
        build_pool(&config).expect("pool"),
        RetryPolicy {
            max_attempts: 40,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            max_elapsed: Duration::from_secs(60),
        },
    );
    // Every odd turn arrives by webhook, concurrently with the reconciliation; the webhook
    // timestamps are the event's plus half a second, so only the text can match them.
    let mut tasks = Vec::new();
    for (i, (speaker, text, secs)) in event.iter().enumerate().filter(|(i, _)| i % 2 == 1) {
        let repo = other.clone();
        let speaker = if *speaker == SpeakerType::Agent {
            "agent"
        } else {
            "user"
        };
        let ts = (START + time::Duration::milliseconds(secs * 1000 + 500))
            .format(&time::format_description::well_known::Rfc3339)
            .expect("ts");
        let turn = NewTurn::parse("EL_7_race", speaker, text, &ts).expect("turn");
        tasks.push(tokio::spawn(async move {
            if i % 4 == 1 {
                tokio::task::yield_now().await;
            }
            repo.append_turn(&turn).await.expect("append")
        }));
    }
    let reconcile = {
        let repo = repo.clone();
        let finish = finish.clone();
        tokio::spawn(async move { repo.finish_call(&sid("EL_7_race"), &finish).await })
    };
    for task in tasks {
        task.await.expect("task");
    }
    reconcile.await.expect("task").expect("finished");
    // A post-call event that arrives after all webhooks settles the order.
    repo.finish_call(&sid("EL_7_race"), &finish)
        .await
        .expect("again");

    let after = transcript(&repo, "EL_7_race").await;
    assert_gapless(&after);
    let mut texts: Vec<&str> = after.iter().map(|t| t.3.as_str()).collect();
    texts.sort_unstable();
    texts.dedup();
    assert_eq!(texts.len(), after.len(), "no turn stored twice");
    assert_eq!(after.len(), 40, "every event turn exactly once");
}
