//! Nothing waits on the database longer than its timeouts: a row lock that is never
//! released, a statement that never ends and a pool that stays full each give
//! `Unavailable` within about one timeout (not retried), and readiness still answers.

use std::time::{Duration, Instant};

use calls_domain::{CallRepository, CallSid, ConversationId, NewCall, NewTurn, RepositoryError};
use calls_store_postgres::testing::{TestDatabase, strings_on};
use calls_store_postgres::{DbConfig, PgCallRepository, RetryPolicy, build_pool};
use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};
use time::OffsetDateTime;

/// Longer than any bound asserted below: without the timeouts the operations would wait
/// here instead of failing.
const HANG: Duration = Duration::from_secs(10);

fn sid(s: &str) -> CallSid {
    CallSid::parse(s).expect("valid call_sid")
}

fn turn(call_sid: &str, message: &str) -> NewTurn {
    NewTurn::parse(call_sid, "agent", message, "2024-11-21T10:30:00Z").expect("valid turn")
}

fn repository(config: &DbConfig) -> PgCallRepository {
    PgCallRepository::new(build_pool(config).expect("pool"), RetryPolicy::default())
}

async fn linked_call(repo: &PgCallRepository, call_sid: &str, conversation_id: &str) {
    repo.create_call(&NewCall {
        call_sid: sid(call_sid),
        driver_id: Some(1),
        call_start_time: OffsetDateTime::now_utc(),
    })
    .await
    .expect("created");
    repo.set_conversation_id(
        &sid(call_sid),
        &ConversationId::parse(conversation_id).expect("conv"),
    )
    .await
    .expect("linked");
}

/// A connection of its own (no timeouts) that locks the Call's row and keeps the
/// transaction open, as a stuck client or a long manual session would.
async fn lock_call_row(db: &TestDatabase, call_sid: &str) -> AsyncPgConnection {
    let mut conn = db.new_connection().await;
    conn.batch_execute(&format!(
        "BEGIN; SELECT 1 FROM calls WHERE call_sid = '{call_sid}' FOR UPDATE"
    ))
    .await
    .expect("row locked");
    conn
}

#[tokio::test]
async fn pooled_connections_carry_the_statement_and_lock_timeouts() {
    let db = TestDatabase::new().await;
    let mut config = db.config().clone();
    config.statement_timeout = Duration::from_millis(1500);
    config.lock_timeout = Duration::from_millis(250);
    let pool = build_pool(&config).expect("pool");
    const SETTINGS: &str = "SELECT current_setting('statement_timeout') || ' ' || current_setting('lock_timeout') AS value";

    let defaults = db.strings(SETTINGS).await;
    let configured = strings_on(&pool, SETTINGS).await;

    assert_eq!(defaults, ["5s 500ms"], "the defaults");
    assert_eq!(configured, ["1500ms 250ms"]);
}

// Multi-threaded: the lock holder's connection task must keep running while
// `TestDatabase`'s drop blocks on dropping the schema, even when an assertion fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_lock_that_is_never_released_fails_the_append_within_the_lock_timeout() {
    let db = TestDatabase::new().await;
    let mut config = db.config().clone();
    config.lock_timeout = Duration::from_millis(300);
    let repo = repository(&config);
    linked_call(&repo, "EL_2_lock", "conv_lock").await;
    let mut holder = lock_call_row(&db, "EL_2_lock").await;

    let started = Instant::now();
    let result = tokio::time::timeout(HANG, repo.append_turn(&turn("EL_2_lock", "stuck")))
        .await
        .expect("the append gave up instead of waiting for the lock");
    let took = started.elapsed();

    assert!(
        matches!(result, Err(RepositoryError::Unavailable(_))),
        "{result:?}"
    );
    // One lock wait, not one per retry (4 × 300 ms plus backoff).
    assert!(took < Duration::from_millis(1_000), "took {took:?}");
    holder.batch_execute("ROLLBACK").await.expect("released");
    let after = repo
        .append_turn(&turn("EL_2_lock", "after"))
        .await
        .expect("stored once the lock is gone");
    assert_eq!(after.stored().sequence_number, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_that_runs_too_long_is_cut_by_the_statement_timeout() {
    let db = TestDatabase::new().await;
    let mut config = db.config().clone();
    // The lock wait itself is the long statement here; only the statement timeout ends it.
    config.lock_timeout = HANG * 2;
    config.statement_timeout = Duration::from_millis(300);
    let repo = repository(&config);
    linked_call(&repo, "EL_3_slow", "conv_slow").await;
    let mut holder = lock_call_row(&db, "EL_3_slow").await;

    let started = Instant::now();
    let result = tokio::time::timeout(HANG, repo.append_turn(&turn("EL_3_slow", "slow")))
        .await
        .expect("the statement was cancelled");
    holder.batch_execute("ROLLBACK").await.expect("released");

    assert!(
        matches!(result, Err(RepositoryError::Unavailable(_))),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(1_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_gives_unavailable_after_the_wait_and_readiness_still_answers() {
    let db = TestDatabase::new().await;
    let mut config = db.config().clone();
    config.pool_size = 1;
    config.wait_timeout = Duration::from_millis(300);
    config.lock_timeout = Duration::from_secs(3);
    let repo = repository(&config);
    linked_call(&repo, "EL_4_stuck", "conv_stuck").await;
    linked_call(&repo, "EL_4_other", "conv_other").await;
    let mut holder = lock_call_row(&db, "EL_4_stuck").await;
    // Takes the pool's only connection and waits for the lock (up to 3 s).
    let blocked = {
        let repo = repo.clone();
        tokio::spawn(async move { repo.append_turn(&turn("EL_4_stuck", "waits")).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    let other = tokio::time::timeout(HANG, repo.get_by_call_sid(&sid("EL_4_other")))
        .await
        .expect("gave up waiting for a connection");
    let other_took = started.elapsed();
    let started = Instant::now();
    let ready = tokio::time::timeout(HANG, repo.ping())
        .await
        .expect("readiness answered");
    let ready_took = started.elapsed();
    let blocked = blocked.await.expect("task");
    holder.batch_execute("ROLLBACK").await.expect("released");

    assert!(
        matches!(other, Err(RepositoryError::Unavailable(_))),
        "{other:?}"
    );
    // One pool wait, not four.
    assert!(
        other_took < Duration::from_millis(1_000),
        "took {other_took:?}"
    );
    assert!(ready.is_ok(), "{ready:?}");
    assert!(
        ready_took < Duration::from_millis(1_000),
        "took {ready_took:?}"
    );
    assert!(matches!(blocked, Err(RepositoryError::Unavailable(_))));
}
