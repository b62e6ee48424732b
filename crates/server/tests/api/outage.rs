//! The database goes away and comes back: a TCP proxy in front of PostgreSQL that can
//! refuse and cut connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::AbortHandle;

use crate::helpers::{spawn_app_with, turn_body};

struct Proxy {
    port: u16,
    down: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Proxy {
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let down = Arc::new(AtomicBool::new(false));
        let live = Arc::new(Mutex::new(Vec::new()));
        let (d, l) = (down.clone(), live.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if d.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                l.lock().await.push(task.abort_handle());
            }
        });
        Self { port, down, live }
    }

    async fn go_down(&self) {
        self.down.store(true, Ordering::SeqCst);
        for task in self.live.lock().await.drain(..) {
            task.abort();
        }
    }

    fn come_back(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

/// `postgres://user@host:port/db?x` → (`host:port`, url with `127.0.0.1:<proxy>`).
fn split_host(url: &str) -> (String, impl Fn(u16) -> String) {
    let (scheme, rest) = url.split_once("://").expect("scheme");
    let (userinfo, hostpart) = match rest.split_once('@') {
        Some((u, h)) => (format!("{u}@"), h.to_owned()),
        None => (String::new(), rest.to_owned()),
    };
    let (hostport, tail) = match hostpart.find(['/', '?']) {
        Some(i) => (hostpart[..i].to_owned(), hostpart[i..].to_owned()),
        None => (hostpart.clone(), String::new()),
    };
    let target = if hostport.contains(':') {
        hostport
    } else {
        format!("{hostport}:5432")
    };
    let scheme = scheme.to_owned();
    (target, move |port| {
        format!("{scheme}://{userinfo}127.0.0.1:{port}{tail}")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_gives_500_and_not_ready_then_recovers_without_restart() {
    let real_url = calls_store_postgres::testing::test_database_url();
    let (target, via_proxy) = split_host(&real_url);
    let proxy = Proxy::start(target).await;
    let app = spawn_app_with(|s| s.database.url = via_proxy(proxy.port).into()).await;
    app.create_call("EL_31_outage", Some("conv_outage")).await;
    let before = app
        .post_transcription(&turn_body(
            "EL_31_outage",
            "agent",
            "before",
            "2024-11-21T10:30:00Z",
        ))
        .await;
    assert_eq!(before.status().as_u16(), 201);

    proxy.go_down().await;
    let during = app
        .post_transcription(&turn_body(
            "EL_31_outage",
            "agent",
            "during",
            "2024-11-21T10:30:01Z",
        ))
        .await;
    let ready_during = app.get("/readyz").await;

    assert_eq!(during.status().as_u16(), 500);
    let body: Value = during.json().await.expect("json");
    assert_eq!(
        body,
        json!({"status":"error","message":"Database connection error. Please retry.","details":"Database temporarily unavailable"})
    );
    assert_eq!(ready_during.status().as_u16(), 503);
    assert_eq!(
        app.turn_count().await,
        1,
        "nothing written during the outage"
    );

    proxy.come_back();
    let after = app
        .post_transcription(&turn_body(
            "EL_31_outage",
            "agent",
            "after",
            "2024-11-21T10:30:02Z",
        ))
        .await;
    let ready_after = app.get("/readyz").await;

    assert_eq!(after.status().as_u16(), 201);
    let body: Value = after.json().await.expect("json");
    assert_eq!(body["sequence_number"], 2);
    assert_eq!(ready_after.status().as_u16(), 200);
}

#[tokio::test]
async fn a_database_on_a_closed_port_is_500_and_not_ready() {
    let app =
        spawn_app_with(|s| s.database.url = "postgres://postgres@127.0.0.1:1/postgres".into())
            .await;

    let response = app
        .post_transcription(&turn_body(
            "EL_32_closed",
            "agent",
            "x",
            "2024-11-21T10:30:00Z",
        ))
        .await;
    let ready = app.get("/readyz").await;
    let health = app.get("/healthz").await;

    assert_eq!(response.status().as_u16(), 500);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["message"], "Database connection error. Please retry.");
    assert_eq!(ready.status().as_u16(), 503);
    assert_eq!(health.status().as_u16(), 200, "the process itself is fine");
}
