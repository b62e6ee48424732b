//! The stale-call reconciler's store side: which Calls are stale, and the advisory lock
//! that keeps reconciliation to one instance at a time.

use std::time::Duration;

use calls_domain::{CallRepository, CallSid, NewCall};
use calls_store_postgres::testing::TestDatabase;
use calls_store_postgres::{PgCallRepository, RetryPolicy, build_pool};
use time::OffsetDateTime;
use time::macros::datetime;

const CUTOFF: OffsetDateTime = datetime!(2024-11-21 12:00:00 UTC);

async fn call_at(repo: &PgCallRepository, call_sid: &str, start: OffsetDateTime) {
    repo.create_call(&NewCall {
        call_sid: CallSid::parse(call_sid).expect("sid"),
        driver_id: Some(7),
        call_start_time: start,
    })
    .await
    .expect("created");
}

fn sids(calls: &[calls_domain::Call]) -> Vec<&str> {
    calls.iter().map(|c| c.call_sid.as_str()).collect()
}

#[tokio::test]
async fn stale_calls_are_the_in_progress_ones_started_before_the_cutoff_oldest_first() {
    let db = TestDatabase::new().await;
    let repo = db.repository();
    call_at(&repo, "EL_3_old", datetime!(2024-11-21 11:00:00 UTC)).await;
    call_at(&repo, "EL_1_oldest", datetime!(2024-11-21 09:00:00 UTC)).await;
    call_at(&repo, "EL_2_older", datetime!(2024-11-21 10:00:00 UTC)).await;
    // Same start as EL_2_older: id breaks the tie.
    call_at(&repo, "EL_2_tie", datetime!(2024-11-21 10:00:00 UTC)).await;
    call_at(&repo, "EL_4_young", datetime!(2024-11-21 12:30:00 UTC)).await;
    call_at(&repo, "EL_5_at_cutoff", CUTOFF).await;
    call_at(&repo, "EL_6_done", datetime!(2024-11-21 08:00:00 UTC)).await;
    call_at(&repo, "EL_7_failed", datetime!(2024-11-21 08:00:00 UTC)).await;
    db.execute(
        "UPDATE calls SET status = 'completed' WHERE call_sid = 'EL_6_done';
         UPDATE calls SET status = 'failed' WHERE call_sid = 'EL_7_failed';",
    )
    .await;

    let all = repo.stale_calls(CUTOFF, 100).await.expect("listed");
    let first_two = repo.stale_calls(CUTOFF, 2).await.expect("listed");

    assert_eq!(
        sids(&all),
        ["EL_1_oldest", "EL_2_older", "EL_2_tie", "EL_3_old"]
    );
    assert_eq!(sids(&first_two), ["EL_1_oldest", "EL_2_older"]);
}

#[tokio::test]
async fn only_one_lease_at_a_time_and_a_released_lease_can_be_taken_again() {
    let db = TestDatabase::new().await;
    // Two repositories with pools of their own, like two instances of the service.
    let a = db.repository();
    let b = PgCallRepository::new(
        build_pool(db.config()).expect("pool"),
        RetryPolicy::default(),
    );

    let lease = a
        .try_lock_reconciler()
        .await
        .expect("asked")
        .expect("free at first");
    assert!(
        b.try_lock_reconciler().await.expect("asked").is_none(),
        "another instance holds it"
    );
    assert!(
        a.try_lock_reconciler().await.expect("asked").is_none(),
        "another connection of the same instance does not get it either"
    );

    lease.release().await;
    let again = b.try_lock_reconciler().await.expect("asked");

    assert!(again.is_some(), "released at once");
}

#[tokio::test]
async fn a_dropped_lease_releases_the_lock_when_its_connection_closes() {
    let db = TestDatabase::new().await;
    let a = db.repository();
    let b = PgCallRepository::new(
        build_pool(db.config()).expect("pool"),
        RetryPolicy::default(),
    );
    let lease = a.try_lock_reconciler().await.expect("asked").expect("free");

    // As if the holder died mid-pass: the lease goes without an orderly release.
    drop(lease);

    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if b.try_lock_reconciler().await.expect("asked").is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "lock still held 5 s after its connection was dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_locked_connection_leaves_the_pool() {
    let db = TestDatabase::new().await;
    let repo = db.repository();
    let before = repo.pool().stats();
    let lease = repo
        .try_lock_reconciler()
        .await
        .expect("asked")
        .expect("free");

    // Every pooled connection is usable by requests; none of them holds the lock.
    let stats = repo.pool().stats();
    let locks_in_pool = db
        .strings(
            "SELECT count(*)::text AS value FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
        )
        .await;

    assert_eq!(before.size, 0, "the pool opens connections lazily");
    assert_eq!(
        stats.size, 0,
        "the locked connection was taken out of the pool"
    );
    assert_eq!(locks_in_pool, ["0"]);
    lease.release().await;
}

#[tokio::test]
async fn schemas_sharing_a_database_do_not_block_each_other() {
    let one = TestDatabase::new().await;
    let two = TestDatabase::new().await;

    let lease_one = one.repository().try_lock_reconciler().await.expect("asked");
    let lease_two = two.repository().try_lock_reconciler().await.expect("asked");

    assert!(lease_one.is_some());
    assert!(lease_two.is_some());
}
