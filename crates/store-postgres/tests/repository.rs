//! The seed's model and helper tests, in Rust, against a real PostgreSQL.

use calls_domain::{
    AppendOutcome, CallRepository, CallSid, CallStatus, ConversationId, NewCall, NewTurn,
    RepositoryError, SpeakerType,
};
use calls_store_postgres::testing::TestDatabase;
use time::OffsetDateTime;
use time::macros::datetime;

fn sid(s: &str) -> CallSid {
    CallSid::parse(s).expect("valid call_sid")
}

fn conv(s: &str) -> ConversationId {
    ConversationId::parse(s).expect("valid conversation_id")
}

fn new_call(call_sid: &str, driver_id: i64) -> NewCall {
    NewCall {
        call_sid: sid(call_sid),
        driver_id: Some(driver_id),
        call_start_time: datetime!(2024-11-21 10:00:00.123456 UTC),
    }
}

fn turn(call_sid: &str, speaker: &str, message: &str, ts: &str) -> NewTurn {
    NewTurn::parse(call_sid, speaker, message, ts).expect("valid turn")
}

#[tokio::test]
async fn create_call_with_call_sid_starts_in_progress_without_conversation_id() {
    let db = TestDatabase::new().await;
    let repo = db.repository();

    let call = repo
        .create_call(&new_call("EL_123_1700000000", 123))
        .await
        .expect("created");

    assert_eq!(call.call_sid.as_str(), "EL_123_1700000000");
    assert_eq!(call.driver_id, Some(123));
    assert_eq!(call.conversation_id, None);
    assert_eq!(call.status, CallStatus::InProgress);
    assert_eq!(
        call.call_start_time,
        datetime!(2024-11-21 10:00:00.123456 UTC)
    );
    assert_eq!(call.call_end_time, None);
}

#[tokio::test]
async fn get_by_call_sid_returns_the_created_call() {
    let db = TestDatabase::new().await;
    let repo = db.repository();
    let call = repo
        .create_call(&new_call("EL_456_1700000001", 456))
        .await
        .expect("created");

    let found = repo
        .get_by_call_sid(&sid("EL_456_1700000001"))
        .await
        .expect("query");

    assert_eq!(found.as_ref().map(|c| c.id), Some(call.id));
    assert!(
        repo.get_by_call_sid(&sid("EL_nope"))
            .await
            .expect("query")
            .is_none()
    );
}

#[tokio::test]
async fn update_conversation_id_links_the_call_and_is_idempotent() {
    let db = TestDatabase::new().await;
    let repo = db.repository();
    repo.create_call(&new_call("EL_789_1700000002", 789))
        .await
        .expect("created");

    let updated = repo
        .set_conversation_id(&sid("EL_789_1700000002"), &conv("conv_abcdef123456"))
        .await
        .expect("updated");
    let again = repo
        .set_conversation_id(&sid("EL_789_1700000002"), &conv("conv_abcdef123456"))
        .await
        .expect("same value again");

    assert_eq!(updated.conversation_id, Some(conv("conv_abcdef123456")));
    assert_eq!(again.conversation_id, updated.conversation_id);
    let by_conv = repo
        .get_by_conversation_id(&conv("conv_abcdef123456"))
        .await
        .expect("query");
    assert_eq!(by_conv.map(|c| c.call_sid), Some(sid("EL_789_1700000002")));
}

#[tokio::test]
async fn a_second_conversation_id_or_a_taken_one_is_a_conflict() {
    let db = TestDatabase::new().await;
    let repo = db.repository();
    repo.create_call(&new_call("EL_1_a", 1))
        .await
        .expect("created");
    repo.create_call(&new_call("EL_2_b", 2))
        .await
        .expect("created");
    repo.set_conversation_id(&sid("EL_1_a"), &conv("conv_1"))
        .await
        .expect("set");

    let other = repo
        .set_conversation_id(&sid("EL_1_a"), &conv("conv_other"))
        .await;
    let taken = repo
        .set_conversation_id(&sid("EL_2_b"), &conv("conv_1"))
        .await;
    let unknown = repo
        .set_conversation_id(&sid("EL_3_c"), &conv("conv_3"))
        .await;

    assert!(
        matches!(other, Err(RepositoryError::Conflict(_))),
        "{other:?}"
    );
    assert!(
        matches!(taken, Err(RepositoryError::Conflict(_))),
        "{taken:?}"
    );
    assert!(
        matches!(unknown, Err(RepositoryError::NotFound)),
        "{unknown:?}"
    );
}

#[tokio::test]
async fn get_conversation_id_from_call_sid_resolves_in_two_steps() {
    let db = TestDatabase::new().await;
    let repo = db.repository();
    repo.create_call(&new_call("EL_111_1700000003", 111))
        .await
        .expect("created");
    assert_eq!(
        repo.conversation_id_for(&sid("EL_111_1700000003"))
            .await
            .expect("q"),
        None
    );

    repo.set_conversation_id(&sid("EL_111_1700000003"), &conv("conv_xyz789"))
        .await
        .expect("set");

    assert_eq!(
        repo.conversation_id_for(&sid("EL_111_1700000003"))
            .await
            .expect("q"),
        Some(conv("conv_xyz789"))
    );
    assert!(matches!(
        repo.conversation_id_for(&sid("EL_unknown")).await,
        Err(RepositoryError::NotFound)
    ));
}

#[tokio::test]
async fn a_duplicate_call_sid_is_a_typed_conflict() {
    let db = TestDatabase::new().await;
    let repo = db.repository();
    repo.create_call(&new_call("EL_5_dup", 5))
        .await
        .expect("created");

    let again = repo.create_call(&new_call("EL_5_dup", 6)).await;

    assert!(
        matches!(again, Err(RepositoryError::Conflict(_))),
        "{again:?}"
    );
    assert_eq!(
        db.strings("SELECT count(*)::text AS value FROM calls")
            .await,
        ["1"]
    );
}

#[tokio::test]
async fn set_status_records_end_time_and_failure_reason() {
    let db = TestDatabase::new().await;
    let repo = db.repository();
    repo.create_call(&new_call("EL_7_s", 7))
        .await
        .expect("created");
    let end = datetime!(2024-11-21 10:05:00 UTC);

    let failed = repo
        .set_status(
            &sid("EL_7_s"),
            CallStatus::Failed,
            Some(end),
            Some("HTTP 500".into()),
        )
        .await
        .expect("updated");

    assert_eq!(failed.status, CallStatus::Failed);
    assert_eq!(failed.call_end_time, Some(end));
    assert_eq!(failed.failure_reason.as_deref(), Some("HTTP 500"));
    assert!(matches!(
        repo.set_status(&sid("EL_8_x"), CallStatus::Completed, None, None)
            .await,
        Err(RepositoryError::NotFound)
    ));
}

#[tokio::test]
async fn save_transcription_with_call_sid_gets_sequence_one_then_two() {
    let db = TestDatabase::new().await;
    let repo = db.repository();
    repo.create_call(&new_call("EL_222_1700000004", 222))
        .await
        .expect("created");
    repo.set_conversation_id(&sid("EL_222_1700000004"), &conv("conv_test123"))
        .await
        .expect("set");

    let first = repo
        .append_turn(&turn(
            "EL_222_1700000004",
            "agent",
            "Hello, this is a test message",
            "2024-11-21T10:30:00Z",
        ))
        .await
        .expect("stored");
    let second = repo
        .append_turn(&turn(
            "EL_222_1700000004",
            "user",
            "Hi",
            "2024-11-21T10:30:05Z",
        ))
        .await
        .expect("stored");

    let AppendOutcome::Created(first) = first else {
        panic!("expected a new row")
    };
    let AppendOutcome::Created(second) = second else {
        panic!("expected a new row")
    };
    assert_eq!(first.sequence_number, 1);
    assert_eq!(second.sequence_number, 2);
    let turns = repo
        .list_turns(&sid("EL_222_1700000004"))
        .await
        .expect("list");
    assert_eq!(turns.len(), 2);
    assert_eq!(turns[0].speaker_type, SpeakerType::Agent);
    assert_eq!(turns[1].speaker_type, SpeakerType::Driver);
    assert_eq!(turns[1].conversation_id, conv("conv_test123"));
}

#[tokio::test]
async fn a_duplicate_append_returns_the_same_ids_and_writes_one_row() {
    let db = TestDatabase::new().await;
    let repo = db.repository();
    repo.create_call(&new_call("EL_9_d", 9))
        .await
        .expect("created");
    repo.set_conversation_id(&sid("EL_9_d"), &conv("conv_d"))
        .await
        .expect("set");
    // The same instant written two ways is the same turn.
    let t1 = turn(
        "EL_9_d",
        "user",
        "Reefer is fixed",
        "2024-11-21T10:30:00.5Z",
    );
    let t2 = turn(
        "EL_9_d",
        "user",
        "Reefer is fixed",
        "2024-11-21T12:30:00.500+02:00",
    );

    let first = repo.append_turn(&t1).await.expect("stored");
    let second = repo.append_turn(&t2).await.expect("stored");

    assert!(matches!(first, AppendOutcome::Created(_)));
    assert_eq!(second, AppendOutcome::Duplicate(first.stored()));
    assert_eq!(
        db.strings("SELECT count(*)::text AS value FROM call_transcriptions")
            .await,
        ["1"]
    );
}

#[tokio::test]
async fn appending_to_an_unknown_or_incomplete_call_is_a_typed_error() {
    let db = TestDatabase::new().await;
    let repo = db.repository();
    repo.create_call(&new_call("EL_10_i", 10))
        .await
        .expect("created");

    let unknown = repo
        .append_turn(&turn(
            "EL_INVALID_999999",
            "agent",
            "x",
            "2024-11-21T10:30:00Z",
        ))
        .await;
    let incomplete = repo
        .append_turn(&turn("EL_10_i", "agent", "x", "2024-11-21T10:30:00Z"))
        .await;

    assert!(
        matches!(unknown, Err(RepositoryError::NotFound)),
        "{unknown:?}"
    );
    assert!(
        matches!(
            incomplete,
            Err(RepositoryError::Incomplete {
                status: CallStatus::InProgress
            })
        ),
        "{incomplete:?}"
    );
    assert_eq!(
        db.strings("SELECT count(*)::text AS value FROM call_transcriptions")
            .await,
        ["0"]
    );
}

#[tokio::test]
async fn list_turns_of_unknown_call_is_not_found_and_of_a_call_without_conversation_is_empty() {
    let db = TestDatabase::new().await;
    let repo = db.repository();
    repo.create_call(&new_call("EL_11_l", 11))
        .await
        .expect("created");

    assert!(matches!(
        repo.list_turns(&sid("EL_x")).await,
        Err(RepositoryError::NotFound)
    ));
    assert!(
        repo.list_turns(&sid("EL_11_l"))
            .await
            .expect("list")
            .is_empty()
    );
}

#[tokio::test]
async fn timestamps_are_stored_in_utc_with_microseconds() {
    let db = TestDatabase::new().await;
    let repo = db.repository();
    repo.create_call(&new_call("EL_12_t", 12))
        .await
        .expect("created");
    repo.set_conversation_id(&sid("EL_12_t"), &conv("conv_t"))
        .await
        .expect("set");

    repo.append_turn(&turn(
        "EL_12_t",
        "agent",
        "a",
        "2024-11-21T05:30:00.123456789-05:00",
    ))
    .await
    .expect("stored");

    let turns = repo.list_turns(&sid("EL_12_t")).await.expect("list");
    assert_eq!(
        turns[0].timestamp,
        datetime!(2024-11-21 10:30:00.123456 UTC)
    );
    assert_eq!(turns[0].timestamp.offset(), time::UtcOffset::UTC);
    assert!(turns[0].created_at <= OffsetDateTime::now_utc());
}

#[tokio::test]
async fn a_database_that_cannot_be_reached_is_unavailable_after_bounded_retries() {
    use calls_store_postgres::{DbConfig, PgCallRepository, RetryPolicy, SchemaName, build_pool};
    // Port 1 on loopback: connection refused at once.
    let mut config = DbConfig::new(
        "postgres://postgres@127.0.0.1:1/postgres",
        SchemaName::default(),
    );
    config.connect_timeout = std::time::Duration::from_millis(500);
    let repo = PgCallRepository::new(build_pool(&config).expect("pool"), RetryPolicy::default());

    let result = repo
        .append_turn(&turn("EL_1_x", "agent", "x", "2024-11-21T10:30:00Z"))
        .await;

    assert!(
        matches!(result, Err(RepositoryError::Unavailable(_))),
        "{result:?}"
    );
    assert!(matches!(
        repo.ping().await,
        Err(RepositoryError::Unavailable(_))
    ));
    assert_eq!(repo.retries().get(), 3, "4 attempts, 3 retries");
}

#[tokio::test]
async fn killed_connections_are_replaced_and_the_operation_succeeds() {
    let db = TestDatabase::new().await;
    let repo = db.repository();
    repo.create_call(&new_call("EL_13_k", 13))
        .await
        .expect("created");
    repo.set_conversation_id(&sid("EL_13_k"), &conv("conv_k"))
        .await
        .expect("set");
    // Warm the pool, then kill every connection it holds (as an admin or failover would).
    repo.append_turn(&turn("EL_13_k", "agent", "before", "2024-11-21T10:30:00Z"))
        .await
        .expect("ok");
    let killed = db.terminate_connections().await;
    assert!(killed > 0, "there were pooled connections to kill");

    let after = repo
        .append_turn(&turn("EL_13_k", "user", "after", "2024-11-21T10:30:01Z"))
        .await
        .expect("retried on a fresh connection");

    assert_eq!(after.stored().sequence_number, 2);
}

#[tokio::test]
async fn a_failed_call_takes_no_turns_even_with_a_conversation_id() {
    let db = TestDatabase::new().await;
    let repo = db.repository();
    repo.create_call(&new_call("EL_14_f", 14))
        .await
        .expect("created");
    repo.set_conversation_id(&sid("EL_14_f"), &conv("conv_f"))
        .await
        .expect("set");
    repo.set_status(
        &sid("EL_14_f"),
        CallStatus::Failed,
        None,
        Some("busy".into()),
    )
    .await
    .expect("failed");

    let result = repo
        .append_turn(&turn("EL_14_f", "agent", "x", "2024-11-21T10:30:00Z"))
        .await;

    assert!(
        matches!(
            result,
            Err(RepositoryError::Incomplete {
                status: CallStatus::Failed
            })
        ),
        "{result:?}"
    );
}
