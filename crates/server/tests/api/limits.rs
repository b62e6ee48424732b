//! Bounds that hold whatever clients do (docs/operations.md, "Limits"): the memory that
//! request bodies hold, the requests waiting for one Call, and the requests in flight.
//! Past each one the answer is 503 with `Retry-After` and the envelope.

use std::time::{Duration, Instant};

use diesel_async::SimpleAsyncConnection;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::helpers::{TestApp, WEBHOOK_SECRET, now, spawn_app_with, turn_body};

/// A connection that sent a request head announcing `length` body bytes and `sent` of
/// them, and then stalls (kept open while the value lives).
async fn stalled(app: &TestApp, path: &str, extra: &str, length: usize, sent: usize) -> TcpStream {
    let addr = app.address.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}Content-Length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(&vec![b' '; sent]).await.expect("part");
    stream
}

/// Any 64-hex `v0` with a current `t`: no secret needed to get this far.
fn forged_signature() -> String {
    format!(
        "ElevenLabs-Signature: t={},v0={}\r\n",
        now(),
        "ab".repeat(32)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bodies_beyond_the_memory_budget_get_503_and_the_budget_comes_back() {
    let app = spawn_app_with(|s| s.limits.body_memory_budget = 256 * 1024).await;
    let budget = app.state.limits.body_budget_available();
    // Anonymous, forged post-call requests that stall before their last byte.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            stalled(
                &app,
                "/webhooks/elevenlabs/post-call",
                &forged_signature(),
                120 * 1024,
                1024,
            )
            .await,
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        app.state.limits.body_budget_available() < 20 * 1024,
        "the two stalled bodies hold their declared size"
    );
    let started = Instant::now();
    let refused = app
        .client
        .post(app.url("/webhooks/elevenlabs/post-call"))
        .header(
            "ElevenLabs-Signature",
            format!("t={},v0={}", now(), "cd".repeat(32)),
        )
        .header("Content-Type", "application/json")
        .body(vec![b' '; 100 * 1024])
        .send()
        .await
        .expect("sent");
    assert_eq!(refused.status().as_u16(), 503);
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: serde_json::Value = refused.json().await.expect("envelope");
    assert_eq!(body["status"], "error");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "refused after a short wait"
    );

    // Small requests that fit still get through while the budget is nearly used.
    app.create_call("EL_1_fits", Some("conv_fits")).await;
    let fits = app
        .post_transcription(&turn_body(
            "EL_1_fits",
            "agent",
            "hi",
            "2024-11-21T10:30:00Z",
        ))
        .await;
    assert_eq!(fits.status().as_u16(), 201);

    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.state.limits.body_budget_available() != budget {
        assert!(
            Instant::now() < deadline,
            "the budget comes back when clients go"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_for_a_locked_call_hold_two_connections_and_beyond_the_queue_get_503_at_once() {
    let app = spawn_app_with(|s| {
        s.database.pool_size = 3;
        s.limits.max_waiting_per_call = 2;
        s.database.lock_timeout = Duration::from_millis(1500);
    })
    .await;
    app.create_call("EL_60_locked", Some("conv_locked60")).await;
    app.create_call("EL_61_free", Some("conv_free61")).await;
    let mut holder = app.db.new_connection().await;
    holder
        .batch_execute("BEGIN; SELECT 1 FROM calls WHERE call_sid = 'EL_60_locked' FOR UPDATE")
        .await
        .expect("locked");

    let started = Instant::now();
    let senders: Vec<_> = (0..8)
        .map(|i| {
            let client = app.client.clone();
            let url = app.url("/webhooks/elevenlabs/transcription");
            let body = turn_body(
                "EL_60_locked",
                "agent",
                &format!("turn {i}"),
                "2024-11-21T10:30:00Z",
            );
            tokio::spawn(async move {
                let response = client
                    .post(url)
                    .bearer_auth(WEBHOOK_SECRET)
                    .json(&body)
                    .send()
                    .await
                    .expect("sent");
                let retry_after = response.headers().get("retry-after").is_some();
                (response.status().as_u16(), retry_after, started.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let other = app
        .post_transcription(&turn_body(
            "EL_61_free",
            "agent",
            "hello",
            "2024-11-21T10:30:00Z",
        ))
        .await;
    assert_eq!(
        other.status().as_u16(),
        201,
        "another call is served meanwhile"
    );

    let mut shed = 0;
    for sender in senders {
        let (status, retry_after, took) = sender.await.expect("joined");
        if status == 503 {
            assert!(retry_after, "503 carries Retry-After");
            if took < Duration::from_millis(1000) {
                shed += 1;
            }
        } else {
            assert_eq!(status, 500, "the two stored at a time time out on the lock");
        }
    }
    assert_eq!(shed, 4, "beyond 2 active + 2 queued, turned away at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_max_in_flight_requests_new_ones_get_503_and_probes_still_answer() {
    let app = spawn_app_with(|s| s.limits.max_in_flight = 2).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            stalled(
                &app,
                "/webhooks/elevenlabs/transcription",
                &format!("Authorization: Bearer {WEBHOOK_SECRET}\r\n"),
                200,
                10,
            )
            .await,
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = app.get_authed("/calls").await;
    assert_eq!(refused.status().as_u16(), 503);
    assert!(refused.headers().get("retry-after").is_some());
    for probe in ["/healthz", "/readyz"] {
        let started = Instant::now();
        assert_eq!(app.get(probe).await.status().as_u16(), 200, "{probe}");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{probe} answers at once"
        );
    }
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.get_authed("/calls").await.status().as_u16(), 200);
}
