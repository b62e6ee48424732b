use serde_json::Value;

use crate::helpers::{assert_envelope, spawn_app, turn_body};

#[tokio::test]
async fn a_call_is_read_by_its_call_sid() {
    let app = spawn_app().await;
    app.create_call("EL_21_read", Some("conv_read")).await;

    let response = app.get_authed("/calls/EL_21_read").await;

    assert_eq!(response.status().as_u16(), 200);
    let call: Value = response.json().await.expect("json");
    assert_eq!(call["call_sid"], "EL_21_read");
    assert_eq!(call["conversation_id"], "conv_read");
    assert_eq!(call["status"], "in_progress");
    assert_eq!(call["driver_id"], 555);
    assert!(
        call["call_start_time"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
}

#[tokio::test]
async fn an_unknown_call_is_404_with_the_envelope() {
    let app = spawn_app().await;
    assert_envelope(app.get_authed("/calls/EL_nobody").await, 404).await;
    assert_envelope(app.get_authed("/calls/EL_nobody/transcriptions").await, 404).await;
}

#[tokio::test]
async fn reading_requires_the_api_token() {
    let app = spawn_app().await;
    app.create_call("EL_22_auth", None).await;

    let anonymous = app.get("/calls/EL_22_auth").await;
    let wrong = app
        .client
        .get(app.url("/calls/EL_22_auth/transcriptions"))
        .bearer_auth("not-the-token")
        .send()
        .await
        .expect("sent");

    assert_envelope(anonymous, 401).await;
    assert_envelope(wrong, 401).await;
}

#[tokio::test]
async fn transcripts_come_back_in_sequence_order() {
    let app = spawn_app().await;
    app.create_call("EL_23_order", Some("conv_order")).await;
    for (i, ts) in [
        "2024-11-21T10:30:02Z",
        "2024-11-21T10:30:01Z",
        "2024-11-21T10:30:00Z",
    ]
    .iter()
    .enumerate()
    {
        let response = app
            .post_transcription(&turn_body("EL_23_order", "agent", &format!("m{i}"), ts))
            .await;
        assert_eq!(response.status().as_u16(), 201);
    }

    let transcript: Value = app
        .get_authed("/calls/EL_23_order/transcriptions")
        .await
        .json()
        .await
        .expect("json");

    let order: Vec<_> = transcript["transcriptions"]
        .as_array()
        .expect("array")
        .iter()
        .map(|t| {
            (
                t["sequence_number"].as_i64(),
                t["message_text"].as_str().map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            (Some(1), Some("m0".into())),
            (Some(2), Some("m1".into())),
            (Some(3), Some("m2".into()))
        ]
    );
    assert_eq!(transcript["conversation_id"], "conv_order");
}
