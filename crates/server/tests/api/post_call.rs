use serde_json::{Value, json};

use crate::helpers::{TestApp, WEBHOOK_SECRET, assert_envelope, now, sign, spawn_app};

fn transcription_event(conversation_id: &str, call_sid: Option<&str>) -> Value {
    let mut data = json!({
        "agent_id": "agent_test",
        "conversation_id": conversation_id,
        "status": "done",
        "transcript": [{"role": "agent", "message": "Hi", "time_in_call_secs": 0}],
        "metadata": {"start_time_unix_secs": 1_732_183_200, "call_duration_secs": 95}
    });
    if let Some(sid) = call_sid {
        data["conversation_initiation_client_data"] =
            json!({"dynamic_variables": {"call_sid": sid}});
    }
    json!({"type": "post_call_transcription", "event_timestamp": 1_732_183_300, "data": data})
}

impl TestApp {
    async fn post_call_event(&self, event: &Value) -> reqwest::Response {
        let body = serde_json::to_vec(event).expect("json");
        self.client
            .post(self.url("/webhooks/elevenlabs/post-call"))
            .header("Content-Type", "application/json")
            .header("ElevenLabs-Signature", sign(&body, now()))
            .body(body)
            .send()
            .await
            .expect("sent")
    }

    async fn call_json(&self, sid: &str) -> Value {
        self.get_authed(&format!("/calls/{sid}"))
            .await
            .json()
            .await
            .expect("json")
    }
}

#[tokio::test]
async fn post_call_transcription_completes_the_call_and_a_repeat_changes_nothing() {
    let app = spawn_app().await;
    app.create_call("EL_51_done", Some("conv_done")).await;

    let first = app
        .post_call_event(&transcription_event("conv_done", None))
        .await;
    assert_eq!(first.status().as_u16(), 200);
    let after_first = app.call_json("EL_51_done").await;
    let second = app
        .post_call_event(&transcription_event("conv_done", None))
        .await;
    let after_second = app.call_json("EL_51_done").await;

    assert_eq!(after_first["status"], "completed");
    assert_eq!(after_first["call_end_time"], "2024-11-21T10:01:35Z");
    assert_eq!(second.status().as_u16(), 200);
    assert_eq!(
        after_second, after_first,
        "a repeated delivery changes nothing"
    );
}

#[tokio::test]
async fn a_call_that_timed_out_on_our_side_is_found_by_call_sid_and_completed() {
    let app = spawn_app().await;
    app.create_call("EL_52_late", None).await;
    app.db
        .execute("UPDATE calls SET status = 'failed', failure_reason = 'timeout' WHERE call_sid = 'EL_52_late'")
        .await;

    let response = app
        .post_call_event(&transcription_event("conv_late_52", Some("EL_52_late")))
        .await;

    assert_eq!(response.status().as_u16(), 200);
    let call = app.call_json("EL_52_late").await;
    assert_eq!(call["status"], "completed");
    assert_eq!(call["conversation_id"], "conv_late_52");
    assert_eq!(call["failure_reason"], Value::Null);
}

#[tokio::test]
async fn call_initiation_failure_fails_the_call() {
    let app = spawn_app().await;
    app.create_call("EL_53_busy", Some("conv_busy")).await;
    let event = json!({"type": "call_initiation_failure", "event_timestamp": "1732183300",
        "data": {"agent_id": "agent_test", "conversation_id": "conv_busy", "failure_reason": "busy", "metadata": {"type": "twilio", "body": {}}}});

    let response = app.post_call_event(&event).await;

    assert_eq!(response.status().as_u16(), 200);
    let call = app.call_json("EL_53_busy").await;
    assert_eq!(call["status"], "failed");
    assert_eq!(call["failure_reason"], "busy");
}

#[tokio::test]
async fn an_unknown_call_or_other_event_type_is_acknowledged() {
    let app = spawn_app().await;

    let unknown = app
        .post_call_event(&transcription_event("conv_nobody", Some("EL_nobody")))
        .await;
    let audio = app
        .post_call_event(&json!({"type": "post_call_audio", "event_timestamp": 1, "data": {"agent_id": "a", "conversation_id": "c", "full_audio": "AAAA"}}))
        .await;

    assert_eq!(unknown.status().as_u16(), 200);
    assert_eq!(audio.status().as_u16(), 200);
}

#[tokio::test]
async fn the_post_call_webhook_accepts_the_signature_only() {
    let app = spawn_app().await;
    app.create_call("EL_54_auth", Some("conv_auth")).await;
    let body = serde_json::to_vec(&transcription_event("conv_auth", None)).expect("json");

    let bearer = app
        .client
        .post(app.url("/webhooks/elevenlabs/post-call"))
        .header("Content-Type", "application/json")
        .bearer_auth(WEBHOOK_SECRET)
        .body(body.clone())
        .send()
        .await
        .expect("sent");
    let stale = app
        .client
        .post(app.url("/webhooks/elevenlabs/post-call"))
        .header("Content-Type", "application/json")
        .header("ElevenLabs-Signature", sign(&body, now() - 3600))
        .body(body)
        .send()
        .await
        .expect("sent");

    assert_envelope(bearer, 401).await;
    assert_envelope(stale, 401).await;
    assert_eq!(app.call_json("EL_54_auth").await["status"], "in_progress");
}

#[tokio::test]
async fn a_malformed_event_is_400() {
    let app = spawn_app().await;
    for event in [
        json!({"data": {}}),
        json!({"type": "post_call_transcription"}),
        json!({"type": "post_call_transcription", "data": {"agent_id": "x"}}),
    ] {
        let response = app.post_call_event(&event).await;
        assert_envelope(response, 400).await;
    }
}

#[tokio::test]
async fn a_call_whose_turns_were_refused_gets_the_event_transcript() {
    let app = spawn_app().await;
    app.create_call("EL_55_lost", None).await;
    app.db
        .execute("UPDATE calls SET status = 'failed', failure_reason = 'timeout' WHERE call_sid = 'EL_55_lost'")
        .await;
    let mut event = transcription_event("conv_lost_55", Some("EL_55_lost"));
    event["data"]["transcript"] = json!([
        {"role": "agent", "message": "Hi, this is dispatch.", "time_in_call_secs": 0},
        {"role": "agent", "message": null, "time_in_call_secs": 1, "tool_calls": []},
        {"role": "user", "message": "Hi.", "time_in_call_secs": 4}
    ]);

    let first = app.post_call_event(&event).await;
    let repeat = app.post_call_event(&event).await;

    assert_eq!(first.status().as_u16(), 200);
    assert_eq!(repeat.status().as_u16(), 200);
    let transcript: Value = app
        .get_authed("/calls/EL_55_lost/transcriptions")
        .await
        .json()
        .await
        .expect("json");
    let turns: Vec<_> = transcript["transcriptions"]
        .as_array()
        .expect("array")
        .iter()
        .map(|t| {
            (
                t["sequence_number"].clone(),
                t["speaker_type"].clone(),
                t["timestamp"].clone(),
            )
        })
        .collect();
    assert_eq!(
        turns,
        [
            (json!(1), json!("agent"), json!("2024-11-21T10:00:00Z")),
            (json!(2), json!("driver"), json!("2024-11-21T10:00:04Z")),
        ]
    );
}

#[tokio::test]
async fn the_outcome_is_kept_and_read_back_with_the_call() {
    let app = spawn_app().await;
    app.create_call("EL_56_outcome", Some("conv_outcome")).await;
    assert_eq!(app.call_json("EL_56_outcome").await["outcome"], Value::Null);
    let mut event = transcription_event("conv_outcome", None);
    event["data"]["metadata"]["termination_reason"] = json!("end_call tool was called.");
    event["data"]["analysis"] = json!({
        "call_successful": "success",
        "transcript_summary": "The driver will fix the reefer by noon.",
        "data_collection_results": {
            "violation_acknowledged": {"data_collection_id": "violation_acknowledged", "value": true, "rationale": "Driver said yes."},
            "fix_eta": {"data_collection_id": "fix_eta", "value": "noon", "rationale": "…"},
            "reason_given": "bare value"
        }
    });

    let response = app.post_call_event(&event).await;

    assert_eq!(response.status().as_u16(), 200);
    let call = app.call_json("EL_56_outcome").await;
    assert_eq!(
        call["outcome"],
        json!({
            "call_successful": "success",
            "summary": "The driver will fix the reefer by noon.",
            "data_collection": {"violation_acknowledged": true, "fix_eta": "noon", "reason_given": "bare value"},
            "termination_reason": "end_call tool was called.",
            "duration_secs": 95
        })
    );
}

#[tokio::test]
async fn lost_webhook_turns_are_restored_in_order_and_webhook_turns_keep_their_ids() {
    let app = spawn_app().await;
    app.create_call("EL_57_gap", Some("conv_gap")).await;
    // The webhook delivered the second turn only.
    let stored = app
        .post_transcription(&crate::helpers::turn_body(
            "EL_57_gap",
            "user",
            "Hello.",
            "2024-11-21T10:00:03.200Z",
        ))
        .await;
    assert_eq!(stored.status().as_u16(), 201);
    let stored: Value = stored.json().await.expect("json");
    let mut event = transcription_event("conv_gap", None);
    event["data"]["transcript"] = json!([
        {"role": "agent", "message": "Hi, this is dispatch.", "time_in_call_secs": 0},
        {"role": "user", "message": "Hello.", "time_in_call_secs": 3},
        {"role": "agent", "message": "Your reefer is out of range.", "time_in_call_secs": 5}
    ]);

    assert_eq!(app.post_call_event(&event).await.status().as_u16(), 200);
    let transcript: Value = app
        .get_authed("/calls/EL_57_gap/transcriptions")
        .await
        .json()
        .await
        .expect("json");
    let turns = transcript["transcriptions"].as_array().expect("array");
    let texts: Vec<_> = turns.iter().map(|t| t["message_text"].clone()).collect();
    assert_eq!(
        texts,
        [
            json!("Hi, this is dispatch."),
            json!("Hello."),
            json!("Your reefer is out of range.")
        ]
    );
    let numbers: Vec<_> = turns.iter().map(|t| t["sequence_number"].clone()).collect();
    assert_eq!(numbers, [json!(1), json!(2), json!(3)]);
    assert_eq!(turns[1]["id"], stored["transcription_id"]);

    // A late webhook delivery of a turn the event restored is a duplicate, not a 4th turn.
    let late = app
        .post_transcription(&crate::helpers::turn_body(
            "EL_57_gap",
            "agent",
            "Your reefer is out of range.",
            "2024-11-21T10:00:05.900Z",
        ))
        .await;
    assert_eq!(late.status().as_u16(), 200);
    let late: Value = late.json().await.expect("json");
    assert_eq!(late["sequence_number"], 3);
}

#[tokio::test]
async fn a_nul_character_or_an_impossible_time_is_400_and_nothing_is_applied() {
    let app = spawn_app().await;
    app.create_call("EL_58_bad", None).await;
    let mut nul = transcription_event("conv_bad_58", Some("EL_58_bad"));
    nul["data"]["transcript"] =
        json!([{"role": "agent", "message": "a\u{0}b", "time_in_call_secs": 0}]);
    let mut ancient = transcription_event("conv_bad_58", Some("EL_58_bad"));
    ancient["data"]["metadata"]["start_time_unix_secs"] = json!(-300_000_000_000_i64);
    let mut bc = transcription_event("conv_bad_58", Some("EL_58_bad"));
    bc["data"]["metadata"]["start_time_unix_secs"] = json!(-210_000_000_000_i64);
    let mut negative = transcription_event("conv_bad_58", Some("EL_58_bad"));
    negative["data"]["metadata"]["call_duration_secs"] = json!(-1);

    for event in [nul, ancient, bc, negative] {
        let response = app.post_call_event(&event).await;
        assert_envelope(response, 400).await;
    }

    let call = app.call_json("EL_58_bad").await;
    assert_eq!(call["status"], "in_progress");
    assert_eq!(call["conversation_id"], Value::Null, "not even linked");
    assert_eq!(app.turn_count().await, 0);
}

#[tokio::test]
async fn oddly_typed_fields_are_applied_as_far_as_they_make_sense() {
    let app = spawn_app().await;
    app.create_call("EL_59_odd", Some("conv_odd")).await;
    let event = json!({
        "type": "post_call_transcription",
        "event_timestamp": "not a number",
        "data": {
            "conversation_id": "conv_odd",
            "transcript": [
                {"role": "agent", "message": null},
                {"role": "user", "message": "Yes.", "time_in_call_secs": "2"},
                "garbage"
            ],
            "metadata": {"start_time_unix_secs": "1732183200", "call_duration_secs": null},
            "analysis": {"call_successful": 3, "data_collection_results": {"ack": "yes"}}
        }
    });

    let response = app.post_call_event(&event).await;

    assert_eq!(response.status().as_u16(), 200);
    let call = app.call_json("EL_59_odd").await;
    assert_eq!(call["status"], "completed");
    assert_eq!(call["outcome"]["call_successful"], Value::Null);
    assert_eq!(call["outcome"]["data_collection"], json!({"ack": "yes"}));
    assert_eq!(app.turn_count().await, 1);
}
