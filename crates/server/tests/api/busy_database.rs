//! A database that is up but cannot serve in time: a Call row locked by a stuck
//! transaction, and a pool full of requests waiting for it. The waiting requests get a fast
//! 500 with the envelope; readiness and other calls' requests keep answering.

use std::time::{Duration, Instant};

use diesel_async::SimpleAsyncConnection;
use serde_json::{Value, json};

use crate::helpers::{spawn_app_with, turn_body};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_locked_call_row_gives_a_fast_500_and_other_routes_stay_responsive() {
    let app = spawn_app_with(|s| {
        s.database.pool_size = 2;
        s.database.wait_timeout = Duration::from_millis(500);
        s.database.lock_timeout = Duration::from_millis(700);
    })
    .await;
    app.create_call("EL_50_locked", Some("conv_locked")).await;
    app.create_call("EL_51_free", Some("conv_free")).await;
    // A stuck client: holds the Call's row lock and never commits.
    let mut holder = app.db.new_connection().await;
    holder
        .batch_execute("BEGIN; SELECT 1 FROM calls WHERE call_sid = 'EL_50_locked' FOR UPDATE")
        .await
        .expect("locked");

    // Four turns for the locked call: two wait for the lock, two for a connection.
    let started = Instant::now();
    let waiting: Vec<_> = (0..4)
        .map(|i| {
            let client = app.client.clone();
            let url = app.url("/webhooks/elevenlabs/transcription");
            let body = turn_body(
                "EL_50_locked",
                "agent",
                &format!("turn {i}"),
                "2024-11-21T10:30:00Z",
            );
            tokio::spawn(async move {
                let response = client
                    .post(url)
                    .bearer_auth(crate::helpers::WEBHOOK_SECRET)
                    .json(&body)
                    .send()
                    .await
                    .expect("sent");
                let status = response.status().as_u16();
                let body: Value = response.json().await.expect("json");
                (status, body, started.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ready_started = Instant::now();
    let ready = app.get("/readyz").await;
    let ready_took = ready_started.elapsed();
    let other_started = Instant::now();
    let other = app.get_authed("/calls/EL_51_free").await;
    let other_took = other_started.elapsed();

    assert_eq!(ready.status().as_u16(), 200, "the database answers");
    assert!(
        ready_took < Duration::from_secs(1),
        "readiness took {ready_took:?}"
    );
    let other_status = other.status().as_u16();
    assert!(other_status == 200 || other_status == 500, "{other_status}");
    assert!(
        other_took < Duration::from_secs(2),
        "a read took {other_took:?}"
    );
    for task in waiting {
        let (status, body, took) = task.await.expect("task");
        assert_eq!(status, 500, "{body}");
        assert_eq!(
            body,
            json!({"status":"error","message":"Database connection error. Please retry.","details":"Database temporarily unavailable"})
        );
        // About one lock or pool wait each, not a retry loop (and not 40 s behind the lock).
        assert!(took < Duration::from_secs(3), "answered after {took:?}");
    }
    assert_eq!(app.turn_count().await, 0);

    holder.batch_execute("ROLLBACK").await.expect("released");
    let after = app
        .post_transcription(&turn_body(
            "EL_50_locked",
            "agent",
            "after",
            "2024-11-21T10:30:01Z",
        ))
        .await;
    assert_eq!(after.status().as_u16(), 201);
}
