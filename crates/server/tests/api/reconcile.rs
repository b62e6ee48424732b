//! Stale-call repair against a real PostgreSQL schema and a fake ElevenLabs conversation
//! API: every branch of SPEC's "Stale calls", the timer in `serve`, the advisory lock, and
//! the `calls-server reconcile` subcommand.

use secrecy::ExposeSecret;
use std::sync::Arc;
use std::time::Duration;

use calls_domain::service::{PassOutcome, ReconcileResult, ReconcileSettings, ReconcileStale};
use calls_domain::{CallRepository, CallSid, ConversationId, NewCall};
use calls_server::reconcile::run_pass;
use calls_server::startup::build_telephony;
use calls_server::timing::{CONVERSATION_REQUEST_INTERVAL, Pace};
use calls_store_postgres::{PgCallRepository, RetryPolicy, build_pool};
use serde_json::{Value, json};
use time::OffsetDateTime;
use wiremock::matchers::{header, method, path, path_regex};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::{TestApp, settings_for, spawn_app, spawn_app_with, turn_body};

const HALF_HOUR: Duration = Duration::from_secs(1800);

/// Start of the stale Calls: two hours ago, on a whole second.
fn two_hours_ago() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc() - time::Duration::hours(2);
    t.replace_nanosecond(0).unwrap_or(t)
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("formats")
}

impl TestApp {
    /// An `in_progress` Call that started at `start`, linked to `conversation_id` if given.
    async fn call_started_at(
        &self,
        call_sid: &str,
        conversation_id: Option<&str>,
        start: OffsetDateTime,
    ) {
        let sid = CallSid::parse(call_sid).expect("sid");
        self.repository
            .create_call(&NewCall {
                call_sid: sid.clone(),
                driver_id: Some(61),
                call_start_time: start,
            })
            .await
            .expect("created");
        if let Some(conv) = conversation_id {
            self.repository
                .set_conversation_id(&sid, &ConversationId::parse(conv).expect("conv"))
                .await
                .expect("linked");
        }
    }

    async fn answer_conversation(&self, conversation_id: &str, response: ResponseTemplate) {
        Mock::given(method("GET"))
            .and(path(format!("/v1/convai/conversations/{conversation_id}")))
            .and(header("xi-api-key", "xi_test_key"))
            .respond_with(response)
            .expect(1)
            .mount(&self.elevenlabs)
            .await;
    }

    async fn reconcile(&self) -> Vec<(String, ReconcileResult)> {
        match run_pass(&self.state.reconcile_stale, &self.state.metrics, HALF_HOUR)
            .await
            .expect("pass runs")
        {
            PassOutcome::Ran(lines) => lines
                .into_iter()
                .map(|l| (l.call_sid.to_string(), l.result))
                .collect(),
            PassOutcome::Skipped => panic!("pass skipped"),
        }
    }

    async fn call_view(&self, sid: &str) -> Value {
        self.get_authed(&format!("/calls/{sid}"))
            .await
            .json()
            .await
            .expect("json")
    }

    async fn transcript(&self, sid: &str) -> Vec<Value> {
        let body: Value = self
            .get_authed(&format!("/calls/{sid}/transcriptions"))
            .await
            .json()
            .await
            .expect("json");
        body["transcriptions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn reconciled(&self, result: &'static str) -> u64 {
        self.state
            .metrics
            .calls_reconciled
            .get_or_create(&calls_server::metrics::ResultLabel { result })
            .get()
    }
}

const SCRIPT: [(&str, &str, i64); 4] = [
    ("agent", "Hi, this is dispatch about your reefer.", 0),
    ("user", "Hello, I see the alarm.", 4),
    ("agent", "Can you fix it before the next stop?", 7),
    ("user", "Yes, by noon.", 11),
];

/// The conversation API's answer for a finished call that started at `start`.
fn done_conversation(conversation_id: &str, start: OffsetDateTime) -> Value {
    json!({
        "agent_id": "agent_test",
        "conversation_id": conversation_id,
        "status": "done",
        "transcript": SCRIPT.iter().map(|(role, message, secs)| {
            json!({"role": role, "message": message, "time_in_call_secs": secs})
        }).collect::<Vec<_>>(),
        "metadata": {"start_time_unix_secs": start.unix_timestamp(), "call_duration_secs": 95,
                     "termination_reason": "end_call tool was called."},
        "analysis": {
            "call_successful": "success",
            "transcript_summary": "The driver will fix the reefer by noon.",
            "data_collection_results": {
                "violation_acknowledged": {"data_collection_id": "violation_acknowledged", "value": true, "rationale": "said so"},
                "fix_eta": {"data_collection_id": "fix_eta", "value": "noon", "rationale": "by noon"}
            }
        }
    })
}

#[tokio::test]
async fn a_stale_call_whose_conversation_is_done_is_completed_with_outcome_and_full_transcript() {
    let app = spawn_app().await;
    let start = two_hours_ago();
    app.call_started_at("EL_61_done", Some("conv_61"), start)
        .await;
    // Turns 1 and 3 arrived by webhook; 2 and 4 were lost, and so was the post-call event.
    for index in [0, 2] {
        let (speaker, message, secs) = SCRIPT[index];
        let at = rfc3339(start + time::Duration::seconds(secs));
        let stored = app
            .post_transcription(&turn_body("EL_61_done", speaker, message, &at))
            .await;
        assert_eq!(stored.status().as_u16(), 201);
    }
    let webhook_ids: Vec<Value> = app
        .transcript("EL_61_done")
        .await
        .iter()
        .map(|t| t["id"].clone())
        .collect();
    app.answer_conversation(
        "conv_61",
        ResponseTemplate::new(200).set_body_json(done_conversation("conv_61", start)),
    )
    .await;

    let lines = app.reconcile().await;

    assert_eq!(
        lines,
        [(
            "EL_61_done".to_owned(),
            ReconcileResult::Completed { turns_inserted: 2 }
        )]
    );
    let call = app.call_view("EL_61_done").await;
    assert_eq!(call["status"], "completed");
    assert_eq!(
        call["call_end_time"],
        rfc3339(start + time::Duration::seconds(95))
    );
    assert_eq!(call["outcome"]["call_successful"], "success");
    assert_eq!(
        call["outcome"]["summary"],
        "The driver will fix the reefer by noon."
    );
    assert_eq!(
        call["outcome"]["data_collection"],
        json!({"violation_acknowledged": true, "fix_eta": "noon"})
    );
    assert_eq!(call["outcome"]["duration_secs"], 95);
    let turns = app.transcript("EL_61_done").await;
    let shape: Vec<(i64, &str, &str)> = turns
        .iter()
        .map(|t| {
            (
                t["sequence_number"].as_i64().unwrap_or_default(),
                t["speaker_type"].as_str().unwrap_or_default(),
                t["message_text"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            (1, "agent", SCRIPT[0].1),
            (2, "driver", SCRIPT[1].1),
            (3, "agent", SCRIPT[2].1),
            (4, "driver", SCRIPT[3].1),
        ]
    );
    assert_eq!(
        turns[0]["id"], webhook_ids[0],
        "webhook turns keep their ids"
    );
    assert_eq!(
        turns[2]["id"], webhook_ids[1],
        "webhook turns keep their ids"
    );
    assert_eq!(
        turns[1]["timestamp"],
        rfc3339(start + time::Duration::seconds(4)),
        "an inserted turn is timed from the conversation's start"
    );
    assert_eq!(app.reconciled("completed"), 1);
}

#[tokio::test]
async fn a_stale_call_whose_conversation_failed_is_failed_with_the_reason() {
    let app = spawn_app().await;
    app.call_started_at("EL_62_failed", Some("conv_62"), two_hours_ago())
        .await;
    app.answer_conversation(
        "conv_62",
        ResponseTemplate::new(200).set_body_json(json!({
            "conversation_id": "conv_62", "status": "failed", "failure_reason": "no-answer",
            "transcript": [], "metadata": {"start_time_unix_secs": 1_732_183_200, "call_duration_secs": 0}
        })),
    )
    .await;

    let lines = app.reconcile().await;

    assert_eq!(lines[0].1.label(), "failed");
    let call = app.call_view("EL_62_failed").await;
    assert_eq!(call["status"], "failed");
    assert_eq!(call["failure_reason"], "no-answer");
    assert!(call["call_end_time"].is_string());
    assert_eq!(app.reconciled("failed"), 1);
}

#[tokio::test]
async fn a_stale_call_unknown_to_elevenlabs_is_failed_naming_the_404() {
    let app = spawn_app().await;
    app.call_started_at("EL_63_gone", Some("conv_63"), two_hours_ago())
        .await;
    app.answer_conversation(
        "conv_63",
        ResponseTemplate::new(404).set_body_json(json!({"detail": {"status": "conversation_not_found", "message": "Conversation not found"}})),
    )
    .await;

    let lines = app.reconcile().await;

    assert_eq!(lines[0].1.label(), "not_found");
    let call = app.call_view("EL_63_gone").await;
    assert_eq!(call["status"], "failed");
    assert_eq!(
        call["failure_reason"],
        "conversation not found at ElevenLabs (HTTP 404)"
    );
    assert_eq!(app.reconciled("not_found"), 1);
}

#[tokio::test]
async fn a_server_error_at_elevenlabs_changes_nothing_but_the_log_and_the_metric() {
    let app = spawn_app().await;
    app.call_started_at("EL_64_later", Some("conv_64"), two_hours_ago())
        .await;
    let before = app.call_view("EL_64_later").await;
    app.answer_conversation("conv_64", ResponseTemplate::new(500))
        .await;

    let lines = app.reconcile().await;

    assert!(
        matches!(&lines[0].1, ReconcileResult::Error { error } if error.contains("500")),
        "{lines:?}"
    );
    assert_eq!(
        app.call_view("EL_64_later").await,
        before,
        "the Call is unchanged"
    );
    assert_eq!(app.reconciled("error"), 1);
}

#[tokio::test]
async fn a_conversation_still_in_progress_leaves_the_call_alone() {
    let app = spawn_app().await;
    app.call_started_at("EL_65_long", Some("conv_65"), two_hours_ago())
        .await;
    let before = app.call_view("EL_65_long").await;
    app.answer_conversation(
        "conv_65",
        ResponseTemplate::new(200)
            .set_body_json(json!({"conversation_id": "conv_65", "status": "in-progress"})),
    )
    .await;

    let lines = app.reconcile().await;

    assert_eq!(
        lines[0].1,
        ReconcileResult::Pending {
            status: "in-progress".into()
        }
    );
    assert_eq!(app.call_view("EL_65_long").await, before);
    assert_eq!(app.reconciled("pending"), 1);
}

#[tokio::test]
async fn a_stale_call_without_conversation_id_is_failed_without_asking_elevenlabs() {
    let app = spawn_app().await;
    app.call_started_at("EL_66_none", None, two_hours_ago())
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&app.elevenlabs)
        .await;

    app.reconcile().await;

    let call = app.call_view("EL_66_none").await;
    assert_eq!(call["status"], "failed");
    assert_eq!(call["failure_reason"], "no conversation_id");
}

#[tokio::test]
async fn a_young_call_and_finished_calls_are_not_touched() {
    let app = spawn_app().await;
    app.call_started_at("EL_67_young", Some("conv_67"), OffsetDateTime::now_utc())
        .await;
    app.call_started_at("EL_67_old_done", Some("conv_67_done"), two_hours_ago())
        .await;
    app.db
        .execute("UPDATE calls SET status = 'completed' WHERE call_sid = 'EL_67_old_done'")
        .await;
    let before = app.call_view("EL_67_young").await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(404))
        .expect(0)
        .mount(&app.elevenlabs)
        .await;

    let lines = app.reconcile().await;

    assert!(lines.is_empty(), "{lines:?}");
    assert_eq!(app.call_view("EL_67_young").await, before);
}

#[tokio::test]
async fn two_concurrent_passes_do_not_both_run() {
    let app = spawn_app().await;
    app.call_started_at("EL_68_once", Some("conv_68"), two_hours_ago())
        .await;
    // Slow enough that the second pass starts while the first holds the lock.
    Mock::given(method("GET"))
        .and(path("/v1/convai/conversations/conv_68"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"conversation_id": "conv_68", "status": "processing"}))
                .set_delay(Duration::from_millis(800)),
        )
        .expect(1)
        .mount(&app.elevenlabs)
        .await;
    // A second instance: its own pool and client, the same database and ElevenLabs.
    let settings = settings_for(app.db.config().clone(), &app.elevenlabs.uri());
    let other = ReconcileStale::new(
        Arc::new(PgCallRepository::new(
            build_pool(app.db.config()).expect("pool"),
            RetryPolicy::default(),
        )),
        build_telephony(&settings).expect("telephony"),
        Arc::new(Pace::new(CONVERSATION_REQUEST_INTERVAL)),
        ReconcileSettings::default(),
    );

    let (here, there) = tokio::join!(
        app.state.reconcile_stale.execute(HALF_HOUR),
        other.execute(HALF_HOUR)
    );

    let mut outcomes = [here.expect("ran"), there.expect("ran")];
    outcomes.sort_by_key(|o| matches!(o, PassOutcome::Skipped));
    assert!(
        matches!(&outcomes[0], PassOutcome::Ran(lines) if lines.len() == 1),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[1], PassOutcome::Skipped, "{outcomes:?}");
}

#[tokio::test]
async fn the_timer_in_serve_retries_at_the_next_tick_after_an_elevenlabs_failure() {
    let app = spawn_app_with(|s| s.reconcile_interval = Some(Duration::from_secs(1))).await;
    let start = two_hours_ago();
    app.call_started_at("EL_69_timer", Some("conv_69"), start)
        .await;
    // The first tick meets an outage; the second gets the answer.
    Mock::given(method("GET"))
        .and(path_regex("^/v1/convai/conversations/conv_69$"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&app.elevenlabs)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/convai/conversations/conv_69"))
        .respond_with(ResponseTemplate::new(200).set_body_json(done_conversation("conv_69", start)))
        .mount(&app.elevenlabs)
        .await;

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while app.call_view("EL_69_timer").await["status"] != "completed" {
        assert!(
            std::time::Instant::now() < deadline,
            "not completed by the timer within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    assert_eq!(app.reconciled("error"), 1, "the first tick failed");
    assert_eq!(app.reconciled("completed"), 1, "a later tick completed it");
    assert_eq!(app.transcript("EL_69_timer").await.len(), 4);
}

#[tokio::test]
async fn the_reconcile_subcommand_prints_one_line_per_call() {
    let app = spawn_app().await;
    let start = two_hours_ago();
    app.call_started_at("EL_71_cli", Some("conv_71"), start)
        .await;
    app.call_started_at(
        "EL_72_cli",
        Some("conv_72"),
        start + time::Duration::seconds(1),
    )
    .await;
    app.call_started_at("EL_73_cli", None, start + time::Duration::seconds(2))
        .await;
    app.call_started_at("EL_74_cli", Some("conv_74"), OffsetDateTime::now_utc())
        .await;
    app.answer_conversation(
        "conv_71",
        ResponseTemplate::new(200).set_body_json(done_conversation("conv_71", start)),
    )
    .await;
    app.answer_conversation("conv_72", ResponseTemplate::new(404))
        .await;

    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_calls-server"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DATABASE_URL", app.db.config().url.expose_secret())
        .env("DATABASE_SCHEMA", app.db.schema().as_str())
        .env("ELEVENLABS_BASE_URL", app.elevenlabs.uri())
        .env("ELEVENLABS_API_KEY", "xi_test_key")
        .env("ELEVENLABS_AGENT_ID", "agent_test")
        .env("ELEVENLABS_AGENT_PHONE_NUMBER_ID", "phnum_test")
        .args(["reconcile", "--older-than", "600"]);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("joined")
        .expect("runs");

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "stderr: {stderr}");
    assert_eq!(
        stdout,
        "EL_71_cli\tcompleted\t4 turns restored\n\
         EL_72_cli\tnot_found\tconversation not found at ElevenLabs (HTTP 404)\n\
         EL_73_cli\tfailed\tno conversation_id\n",
        "stderr: {stderr}"
    );
    assert!(stderr.contains("reconciled 3 stale call(s)"), "{stderr}");
    assert_eq!(app.call_view("EL_71_cli").await["status"], "completed");
    assert_eq!(app.call_view("EL_74_cli").await["status"], "in_progress");
}
