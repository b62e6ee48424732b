//! Sequence numbers stay gapless 1..N under concurrent appends from separate connections.

use std::collections::BTreeSet;
use std::time::Duration;

use calls_domain::{CallRepository, CallSid, ConversationId, NewCall, NewTurn};
use calls_store_postgres::testing::TestDatabase;
use calls_store_postgres::{PgCallRepository, RetryPolicy, build_pool};
use time::OffsetDateTime;

async fn call_with_conversation(repo: &PgCallRepository, call_sid: &str, conversation: &str) {
    let sid = CallSid::parse(call_sid).expect("sid");
    repo.create_call(&NewCall {
        call_sid: sid.clone(),
        driver_id: Some(1),
        call_start_time: OffsetDateTime::now_utc(),
    })
    .await
    .expect("created");
    repo.set_conversation_id(&sid, &ConversationId::parse(conversation).expect("conv"))
        .await
        .expect("linked");
}

/// Each "instance" gets its own pool, like separate server processes would.
fn separate_repository(db: &TestDatabase, pool_size: usize) -> PgCallRepository {
    let mut config = db.config().clone();
    config.pool_size = pool_size;
    // Patient retries: tests running in parallel may briefly exhaust max_connections,
    // which the repository treats as transient.
    let retry = RetryPolicy {
        max_attempts: 40,
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(500),
        max_elapsed: Duration::from_secs(60),
    };
    PgCallRepository::new(build_pool(&config).expect("pool"), retry)
}

/// `n` appends at once, spread over `instances` pools (one connection each per append).
async fn append_concurrently(repos: &[PgCallRepository], call_sid: &str, n: usize) -> Vec<i32> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let repo = repos[i % repos.len()].clone();
        let turn = NewTurn::parse(
            call_sid,
            "agent",
            &format!("turn {i}"),
            "2024-11-21T10:30:00Z",
        )
        .expect("turn");
        tasks.push(tokio::spawn(async move {
            repo.append_turn(&turn)
                .await
                .expect("append")
                .stored()
                .sequence_number
        }));
    }
    let mut numbers = Vec::new();
    for task in tasks {
        numbers.push(task.await.expect("task"));
    }
    numbers.sort_unstable();
    numbers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_appends_get_exactly_one_to_sixty_four() {
    let db = TestDatabase::new().await;
    call_with_conversation(&db.repository(), "EL_1_seq", "conv_seq").await;

    // 64 connections: one per append.
    let repos: Vec<_> = (0..64).map(|_| separate_repository(&db, 1)).collect();
    let numbers = append_concurrently(&repos, "EL_1_seq", 64).await;

    assert_eq!(numbers, (1..=64).collect::<Vec<i32>>());
    let stored = db
        .strings("SELECT sequence_number::text AS value FROM call_transcriptions ORDER BY sequence_number")
        .await;
    assert_eq!(stored.len(), 64);
    let distinct: BTreeSet<_> = stored.iter().collect();
    assert_eq!(distinct.len(), 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_calls_appended_concurrently_each_get_their_own_gapless_sequence() {
    let db = TestDatabase::new().await;
    let repo = db.repository();
    for c in 0..8 {
        call_with_conversation(&repo, &format!("EL_{c}_multi"), &format!("conv_multi_{c}")).await;
    }

    // Eight "instances" of eight connections each, shared by all calls.
    let repos: Vec<_> = (0..8).map(|_| separate_repository(&db, 8)).collect();
    let mut calls = Vec::new();
    for c in 0..8 {
        let sid = format!("EL_{c}_multi");
        let repos = &repos;
        calls.push(async move { append_concurrently(repos, &sid, 64).await });
    }
    let results = futures_util::future::join_all(calls).await;

    for numbers in results {
        assert_eq!(numbers, (1..=64).collect::<Vec<i32>>());
    }
    assert_eq!(
        db.strings("SELECT count(*)::text AS value FROM call_transcriptions")
            .await,
        ["512"]
    );
    let per_call = db
        .strings(
            "SELECT (count(*) = max(sequence_number) AND min(sequence_number) = 1)::text AS value \
             FROM call_transcriptions GROUP BY conversation_id",
        )
        .await;
    assert_eq!(per_call, vec!["true"; 8]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_of_one_turn_store_one_row() {
    let db = TestDatabase::new().await;
    call_with_conversation(&db.repository(), "EL_2_dup", "conv_dup").await;

    let mut tasks = Vec::new();
    for _ in 0..16 {
        let repo = separate_repository(&db, 1);
        let turn =
            NewTurn::parse("EL_2_dup", "user", "same", "2024-11-21T10:30:00Z").expect("turn");
        tasks.push(tokio::spawn(async move {
            repo.append_turn(&turn).await.expect("append").stored()
        }));
    }
    let mut ids = BTreeSet::new();
    for task in tasks {
        let stored = task.await.expect("task");
        ids.insert((stored.transcription_id, stored.sequence_number));
    }

    assert_eq!(ids.len(), 1);
    assert_eq!(
        db.strings("SELECT count(*)::text AS value FROM call_transcriptions")
            .await,
        ["1"]
    );
}
