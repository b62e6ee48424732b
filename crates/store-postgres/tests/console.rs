//! The console's store side: sessions, and the change feed behind live pages.

use std::time::Duration;

use calls_domain::ports::{ConsoleSessions, SessionHash};
use calls_domain::{CallRepository, CallSid, ConversationId, NewCall, NewTurn, SpeakerType};
use calls_store_postgres::testing::TestDatabase;
use calls_store_postgres::{
    CallChange, ChangeFeed, ChangeNotifier, PgConsoleSessions, RetryPolicy,
};
use time::OffsetDateTime;
use tokio::sync::broadcast;

fn sessions(db: &TestDatabase) -> PgConsoleSessions {
    PgConsoleSessions::new(db.pool().clone(), RetryPolicy::default())
}

#[tokio::test]
async fn a_session_is_active_until_it_expires_or_is_deleted() {
    let db = TestDatabase::new().await;
    let store = sessions(&db);
    let now = OffsetDateTime::now_utc();
    let hash = SessionHash([7; 32]);
    store
        .create(&hash, now + time::Duration::hours(1))
        .await
        .expect("created");

    assert!(store.is_active(&hash, now).await.expect("read"));
    assert!(
        !store
            .is_active(&hash, now + time::Duration::hours(2))
            .await
            .expect("read"),
        "expired"
    );
    assert!(
        !store
            .is_active(&SessionHash([8; 32]), now)
            .await
            .expect("read"),
        "unknown"
    );

    store.delete(&hash).await.expect("deleted");
    assert!(!store.is_active(&hash, now).await.expect("read"));
}

#[tokio::test]
async fn purging_removes_only_expired_sessions_and_only_hashes_are_stored() {
    let db = TestDatabase::new().await;
    let store = sessions(&db);
    let now = OffsetDateTime::now_utc();
    store
        .create(&SessionHash([1; 32]), now - time::Duration::seconds(1))
        .await
        .expect("created");
    store
        .create(&SessionHash([2; 32]), now + time::Duration::hours(1))
        .await
        .expect("created");

    assert_eq!(store.purge_expired(now).await.expect("purged"), 1);
    assert_eq!(
        db.strings("SELECT encode(id_hash, 'hex') AS value FROM console_sessions")
            .await,
        [hex32(2)]
    );
    let duplicate = store
        .create(&SessionHash([2; 32]), now + time::Duration::hours(1))
        .await;
    assert!(matches!(
        duplicate,
        Err(calls_domain::RepositoryError::Conflict(_))
    ));
}

fn hex32(byte: u8) -> String {
    format!("{byte:02x}").repeat(32)
}

async fn next_change(rx: &mut broadcast::Receiver<CallChange>) -> CallChange {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a change within 5 s")
        .expect("feed open")
}

/// The first message after (re)connecting is `Resync`.
async fn listening(db: &TestDatabase) -> (ChangeFeed, broadcast::Receiver<CallChange>) {
    let feed = ChangeFeed::spawn(db.config().url.clone(), db.schema().clone());
    let mut rx = feed.subscribe();
    assert_eq!(next_change(&mut rx).await, CallChange::Resync);
    (feed, rx)
}

#[tokio::test]
async fn call_changes_and_announced_turns_reach_the_feed_which_survives_a_lost_connection() {
    let db = TestDatabase::new().await;
    let repo = db.repository();
    let (_feed, mut rx) = listening(&db).await;
    let notifier = ChangeNotifier::spawn(db.config().url.clone(), db.schema().clone());
    let sid = CallSid::parse("EL_1_feed").expect("sid");
    repo.create_call(&NewCall {
        call_sid: sid.clone(),
        driver_id: Some(1),
        call_start_time: OffsetDateTime::now_utc(),
    })
    .await
    .expect("created");

    // The trigger: a Call's state changed.
    repo.set_conversation_id(&sid, &ConversationId::parse("conv_feed").expect("conv"))
        .await
        .expect("linked");
    assert_eq!(
        next_change(&mut rx).await,
        CallChange::Call {
            call_sid: "EL_1_feed".into()
        }
    );

    // A stored turn is not announced by its own transaction (no NOTIFY on the hot path)...
    let turn = NewTurn {
        call_sid: sid.clone(),
        speaker: SpeakerType::Agent,
        message: "Hello".into(),
        timestamp: OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .expect("valid"),
    };
    repo.append_turn(&turn).await.expect("appended");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err(),
        "the append itself notifies nobody"
    );
    // ...but by the notifier, after it.
    notifier.turn_stored("EL_1_feed");
    assert_eq!(
        next_change(&mut rx).await,
        CallChange::Turn {
            call_sid: "EL_1_feed".into()
        }
    );

    // Like a database restart: every connection of this schema is killed.
    assert!(db.terminate_connections().await >= 2);
    assert_eq!(
        next_change(&mut rx).await,
        CallChange::Resync,
        "reconnected"
    );
    notifier.turn_stored("EL_1_feed");
    assert_eq!(
        next_change(&mut rx).await,
        CallChange::Turn {
            call_sid: "EL_1_feed".into()
        },
        "the notifier reconnected too"
    );
}

#[tokio::test]
async fn another_schema_is_not_heard() {
    let db = TestDatabase::new().await;
    let other = TestDatabase::new().await;
    let (_feed, mut rx) = listening(&db).await;
    other
        .execute(
            "INSERT INTO calls (call_sid, call_start_time, status, created_at, updated_at) \
             VALUES ('EL_9_x', now(), 'in_progress', now(), now()); \
             UPDATE calls SET status = 'failed'",
        )
        .await;
    db.execute(
        "INSERT INTO calls (call_sid, call_start_time, status, created_at, updated_at) \
         VALUES ('EL_8_x', now(), 'in_progress', now(), now()); \
         UPDATE calls SET status = 'failed'",
    )
    .await;
    assert_eq!(
        next_change(&mut rx).await,
        CallChange::Call {
            call_sid: "EL_8_x".into()
        }
    );
}

/// Call changes NOTIFY from their own transaction, which queues them at commit; a burst of
/// them from several instances must wait, not fail on the pool's short lock_timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_call_changes_from_several_instances_all_commit() {
    let db = TestDatabase::new().await;
    let repos: Vec<_> = (0..4)
        .map(|_| {
            let mut config = db.config().clone();
            config.pool_size = 16;
            calls_store_postgres::PgCallRepository::new(
                calls_store_postgres::build_pool(&config).expect("pool"),
                RetryPolicy::default(),
            )
        })
        .collect();
    for n in 0..64 {
        repos[0]
            .create_call(&NewCall {
                call_sid: CallSid::parse(format!("EL_{n}_burst")).expect("sid"),
                driver_id: Some(n),
                call_start_time: OffsetDateTime::now_utc(),
            })
            .await
            .expect("created");
    }
    let (_feed, mut rx) = listening(&db).await;

    let mut tasks = Vec::new();
    for n in 0..64 {
        let repo = repos[n % repos.len()].clone();
        tasks.push(tokio::spawn(async move {
            repo.set_conversation_id(
                &CallSid::parse(format!("EL_{n}_burst")).expect("sid"),
                &ConversationId::parse(format!("conv_burst_{n}")).expect("conv"),
            )
            .await
        }));
    }
    for task in tasks {
        task.await.expect("joined").expect("linked");
    }
    let mut heard = std::collections::BTreeSet::new();
    while heard.len() < 64 {
        match next_change(&mut rx).await {
            CallChange::Call { call_sid } => {
                heard.insert(call_sid);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
