//! The binary itself: required settings, one-shot subcommands, graceful shutdown.

use secrecy::ExposeSecret;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn binary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_calls-server"));
    cmd.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd
}

#[test]
fn serve_without_required_settings_fails_naming_them() {
    let output = binary().arg("serve").output().expect("runs");

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for name in [
        "DATABASE_URL",
        "WEBHOOK_SECRET",
        "API_TOKEN",
        "ELEVENLABS_API_KEY",
        "ELEVENLABS_AGENT_ID",
        "ELEVENLABS_AGENT_PHONE_NUMBER_ID",
    ] {
        assert!(stderr.contains(name), "stderr should name {name}: {stderr}");
    }
}

#[test]
fn the_default_subcommand_is_serve() {
    let output = binary().output().expect("runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("DATABASE_URL"));
}

#[test]
fn elevenlabs_tool_config_prints_only_json_on_stdout() {
    let output = binary()
        .arg("elevenlabs-tool-config")
        .env("PUBLIC_BASE_URL", "https://calls.example.com/")
        .env("WEBHOOK_SECRET", "wsec_must_not_be_printed")
        .output()
        .expect("runs");

    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("wsec_must_not_be_printed"));
    let tool: Value = serde_json::from_str(&stdout).expect("stdout is exactly one JSON document");
    let schema = &tool["api_schema"];
    assert_eq!(
        schema["url"],
        "https://calls.example.com/webhooks/elevenlabs/transcription"
    );
    assert_eq!(schema["method"], "POST");
    let props = &schema["request_body_schema"]["properties"];
    assert_eq!(props["call_sid"]["dynamic_variable"], "call_sid");
    for field in ["speaker", "message", "timestamp"] {
        assert!(props[field].is_object(), "{field}");
    }
    assert!(schema["request_headers"]["Authorization"].is_object());
}

#[test]
fn migrate_without_a_database_url_names_it() {
    let output = binary().arg("migrate").output().expect("runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("DATABASE_URL"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_then_exits() {
    let db = calls_store_postgres::testing::TestDatabase::new().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut child = binary()
        .arg("serve")
        .env("DATABASE_URL", db.config().url.expose_secret())
        .env("DATABASE_SCHEMA", db.schema().as_str())
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .env("TELEPHONY", "simulated")
        .env("WEBHOOK_SECRET", "wsec_shutdown")
        .env("API_TOKEN", "tok_shutdown")
        .env("WEBHOOK_CONVERSATION_WAIT_MS", "3000")
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawned");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "server did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    db.execute(
        "INSERT INTO calls (call_sid, call_start_time, status, created_at, updated_at) \
         VALUES ('EL_41_slow', now(), 'in_progress', now(), now())",
    )
    .await;
    // This turn waits ~3 s for a conversation_id that never comes: in flight at SIGTERM.
    let in_flight = tokio::spawn({
        let client = client.clone();
        let base = base.clone();
        async move {
            client
                .post(format!("{base}/webhooks/elevenlabs/transcription"))
                .header("Content-Type", "application/json")
                .bearer_auth("wsec_shutdown")
                .body(r#"{"call_sid":"EL_41_slow","speaker":"agent","message":"x","timestamp":"2024-11-21T10:30:00Z"}"#)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());

    let status = in_flight
        .await
        .expect("task")
        .expect("the in-flight request got an answer");
    assert_eq!(status, 400);
    let exit_deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(code) = child.try_wait().expect("wait") {
            assert!(code.success(), "exit status {code:?}");
            break;
        }
        assert!(
            Instant::now() < exit_deadline,
            "server did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
