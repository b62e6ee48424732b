//! The stale-call reconciler's store side: which Calls are stale and due for a check, and
//! the lease row that keeps reconciliation to one instance at a time.

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
async fn the_lease_is_a_row_with_an_expiry_and_holds_no_connection_or_session_lock() {
    let db = TestDatabase::new().await;
    let repo = db.repository();
    let lease = repo
        .try_lock_reconciler()
        .await
        .expect("asked")
        .expect("free");

    let stats = repo.pool().stats();
    let rows = db
        .strings("SELECT (expires_at > now())::text AS value FROM leases")
        .await;
    // What this schema's connections hold: no advisory lock survives the statement.
    let advisory = db
        .strings(&format!(
            "SELECT count(*)::text AS value FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND a.application_name = 'calls-server/{}'",
            db.schema().as_str()
        ))
        .await;

    assert_eq!(rows, ["true"], "one lease row, not yet expired");
    assert_eq!(
        stats.in_use, 0,
        "every pooled connection is back in the pool"
    );
    assert_eq!(advisory, ["0"]);
    lease.release().await;
    assert!(
        db.strings("SELECT holder AS value FROM leases")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn an_expired_lease_of_a_dead_holder_is_taken_over() {
    let db = TestDatabase::new().await;
    db.execute(
        "INSERT INTO leases (name, holder, expires_at) \
         VALUES ('reconcile-stale-calls', 'dead-instance', now() - interval '1 second')",
    )
    .await;

    let lease = db.repository().try_lock_reconciler().await.expect("asked");

    assert!(lease.is_some(), "expired: taken over");
    assert_ne!(
        db.strings("SELECT holder AS value FROM leases").await,
        ["dead-instance"]
    );
}

#[tokio::test]
async fn a_live_lease_of_another_holder_is_not_taken() {
    let db = TestDatabase::new().await;
    db.execute(
        "INSERT INTO leases (name, holder, expires_at) \
         VALUES ('reconcile-stale-calls', 'other-instance', now() + interval '1 minute')",
    )
    .await;

    assert!(
        db.repository()
            .try_lock_reconciler()
            .await
            .expect("asked")
            .is_none()
    );
}

#[tokio::test]
async fn deferred_calls_wait_and_never_checked_ones_come_first_so_every_stale_call_gets_its_turn() {
    let db = TestDatabase::new().await;
    let repo = db.repository();
    // 150 old Calls whose conversations stay unfinished, and 5 newer ones.
    for i in 0..150 {
        call_at(
            &repo,
            &format!("EL_{i}_stuck"),
            datetime!(2024-11-21 08:00:00 UTC) + time::Duration::seconds(i),
        )
        .await;
    }
    for i in 0..5 {
        call_at(
            &repo,
            &format!("EL_{i}_newer"),
            datetime!(2024-11-21 11:00:00 UTC),
        )
        .await;
    }
    let later = OffsetDateTime::now_utc() + time::Duration::hours(1);

    // Pass 1: the 100 oldest, each then deferred (still processing at the provider).
    let first = repo.stale_calls(CUTOFF, 100).await.expect("listed");
    for call in &first {
        repo.defer_reconcile(&call.call_sid, later)
            .await
            .expect("deferred");
    }
    // Pass 2: the rest, the newer five included, although older Calls are still stale.
    let second = repo.stale_calls(CUTOFF, 100).await.expect("listed");
    // Once a deferral has come due, that Call is due again; never-checked ones go first.
    db.execute("UPDATE call_reconcile_checks SET next_check_at = now() - interval '1 second' WHERE call_id = (SELECT id FROM calls WHERE call_sid = 'EL_0_stuck')").await;
    call_at(&repo, "EL_9_fresh", datetime!(2024-11-21 11:30:00 UTC)).await;
    for call in &second {
        repo.defer_reconcile(&call.call_sid, later)
            .await
            .expect("deferred");
    }
    let third = repo.stale_calls(CUTOFF, 100).await.expect("listed");

    assert_eq!(first.len(), 100);
    assert_eq!(first[0].call_sid.as_str(), "EL_0_stuck");
    assert_eq!(second.len(), 55);
    assert!(sids(&second).contains(&"EL_4_newer"));
    assert_eq!(sids(&third), ["EL_9_fresh", "EL_0_stuck"]);
    assert_eq!(
        db.strings("SELECT checks::text AS value FROM call_reconcile_checks k JOIN calls c ON c.id = k.call_id WHERE c.call_sid = 'EL_0_stuck'").await,
        ["1"]
    );
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
