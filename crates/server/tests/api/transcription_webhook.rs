use serde_json::{Value, json};

use crate::helpers::{
    API_TOKEN, WEBHOOK_SECRET, assert_envelope, now, sign, spawn_app, spawn_app_with, turn_body,
};

#[tokio::test]
async fn a_turn_for_a_known_call_sid_is_stored_as_number_one() {
    // Arrange
    let app = spawn_app().await;
    app.create_call("EL_555_1700000005", Some("conv_webhook_test"))
        .await;
    let body = turn_body(
        "EL_555_1700000005",
        "agent",
        "Test webhook message",
        "2024-11-21T10:30:00Z",
    );

    // Act
    let response = app.post_transcription(&body).await;

    // Assert
    assert_eq!(response.status().as_u16(), 201);
    let data: Value = response.json().await.expect("json");
    assert_eq!(data["status"], "success");
    assert_eq!(data["sequence_number"], 1);
    assert!(data["transcription_id"].as_i64().is_some());
    assert_eq!(
        data["message"],
        "Transcription saved successfully for call_sid EL_555_1700000005"
    );
}

#[tokio::test]
async fn a_turn_for_an_unknown_call_sid_is_400_and_writes_nothing() {
    let app = spawn_app().await;
    let body = turn_body(
        "EL_INVALID_999999",
        "agent",
        "Test message",
        "2024-11-21T10:30:00Z",
    );

    let response = app.post_transcription(&body).await;

    let message = assert_envelope(response, 400).await;
    assert!(message.to_lowercase().contains("not found"), "{message}");
    assert_eq!(
        message,
        "Call record not found or incomplete for call_sid: EL_INVALID_999999"
    );
    assert_eq!(app.turn_count().await, 0);
}

#[tokio::test]
async fn three_turns_are_numbered_in_order_and_speakers_mapped() {
    let app = spawn_app().await;
    app.create_call("EL_1_three", Some("conv_three")).await;

    let mut numbers = Vec::new();
    for (speaker, message, ts) in [
        ("agent", "Hello, this is dispatch.", "2024-11-21T10:30:00Z"),
        ("user", "Hi, what's up?", "2024-11-21T12:30:05+02:00"),
        (
            "agent",
            "Your reefer is out of range.",
            "2024-11-21T10:30:10.123456Z",
        ),
    ] {
        let response = app
            .post_transcription(&turn_body("EL_1_three", speaker, message, ts))
            .await;
        assert_eq!(response.status().as_u16(), 201);
        let data: Value = response.json().await.expect("json");
        numbers.push(data["sequence_number"].as_i64().expect("number"));
    }

    assert_eq!(numbers, [1, 2, 3]);
    let transcript: Value = app
        .get_authed("/calls/EL_1_three/transcriptions")
        .await
        .json()
        .await
        .expect("json");
    let turns = transcript["transcriptions"].as_array().expect("array");
    let speakers: Vec<_> = turns.iter().map(|t| t["speaker_type"].clone()).collect();
    assert_eq!(speakers, [json!("agent"), json!("driver"), json!("agent")]);
    let stamps: Vec<_> = turns.iter().map(|t| t["timestamp"].clone()).collect();
    assert_eq!(
        stamps,
        [
            json!("2024-11-21T10:30:00Z"),
            json!("2024-11-21T10:30:05Z"),
            json!("2024-11-21T10:30:10.123456Z")
        ]
    );
}

#[tokio::test]
async fn offsets_and_fractions_are_stored_as_the_same_utc_instant() {
    let app = spawn_app().await;
    app.create_call("EL_2_tz", Some("conv_tz")).await;

    for ts in ["2024-11-21T05:30:00.250-05:00", "2024-11-21T10:30:00.25Z"] {
        let response = app
            .post_transcription(&turn_body("EL_2_tz", "user", "same", ts))
            .await;
        assert!(response.status().is_success());
    }

    // The second is the same instant, so the same turn.
    assert_eq!(app.turn_count().await, 1);
    let stored = app
        .db
        .strings("SELECT to_char(timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') AS value FROM call_transcriptions")
        .await;
    assert_eq!(stored, ["2024-11-21 10:30:00.250000"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_deliveries_get_sequence_numbers_one_to_fifty() {
    let app = spawn_app().await;
    app.create_call("EL_3_fifty", Some("conv_fifty")).await;

    let mut tasks = Vec::new();
    for i in 0..50 {
        let client = app.client.clone();
        let url = app.url("/webhooks/elevenlabs/transcription");
        let body = serde_json::to_vec(&turn_body(
            "EL_3_fifty",
            if i % 2 == 0 { "agent" } else { "user" },
            &format!("turn {i}"),
            "2024-11-21T10:30:00Z",
        ))
        .expect("json");
        tasks.push(tokio::spawn(async move {
            let response = client
                .post(url)
                .header("Content-Type", "application/json")
                .header("ElevenLabs-Signature", sign(&body, now()))
                .body(body)
                .send()
                .await
                .expect("sent");
            assert_eq!(response.status().as_u16(), 201);
            let data: Value = response.json().await.expect("json");
            data["sequence_number"].as_i64().expect("number")
        }));
    }
    let mut numbers = Vec::new();
    for t in tasks {
        numbers.push(t.await.expect("task"));
    }
    numbers.sort_unstable();

    assert_eq!(numbers, (1..=50).collect::<Vec<i64>>());
    assert_eq!(app.turn_count().await, 50);
}

#[tokio::test]
async fn a_repeated_delivery_answers_200_with_the_original_ids() {
    let app = spawn_app().await;
    app.create_call("EL_4_rep", Some("conv_rep")).await;
    let body = turn_body("EL_4_rep", "user", "I'm on it", "2024-11-21T10:30:00Z");

    let first = app.post_transcription(&body).await;
    assert_eq!(first.status().as_u16(), 201);
    let first: Value = first.json().await.expect("json");
    let second = app.post_transcription(&body).await;

    assert_eq!(second.status().as_u16(), 200);
    let second: Value = second.json().await.expect("json");
    assert_eq!(second["status"], "success");
    assert_eq!(second["transcription_id"], first["transcription_id"]);
    assert_eq!(second["sequence_number"], first["sequence_number"]);
    assert_eq!(app.turn_count().await, 1);
}

#[tokio::test]
async fn malformed_inputs_get_a_4xx_envelope_and_write_nothing() {
    let app = spawn_app().await;
    app.create_call("EL_5_bad", Some("conv_bad")).await;
    let good = turn_body("EL_5_bad", "agent", "hello", "2024-11-21T10:30:00Z");
    let without = |field: &str| {
        let mut v = good.clone();
        v.as_object_mut().expect("object").remove(field);
        v
    };
    let with = |field: &str, value: Value| {
        let mut v = good.clone();
        v[field] = value;
        v
    };
    let mut cases: Vec<(&str, Vec<u8>, &str, u16)> = Vec::new();
    let json_case = |v: Value| serde_json::to_vec(&v).expect("json");
    for field in ["call_sid", "speaker", "message", "timestamp"] {
        cases.push((
            "missing field",
            json_case(without(field)),
            "application/json",
            400,
        ));
        cases.push((
            "empty string",
            json_case(with(field, json!(""))),
            "application/json",
            400,
        ));
        cases.push((
            "number instead of string",
            json_case(with(field, json!(42))),
            "application/json",
            400,
        ));
        cases.push((
            "null",
            json_case(with(field, Value::Null)),
            "application/json",
            400,
        ));
    }
    for (what, value) in [
        ("bad speaker", with("speaker", json!("driver"))),
        ("uppercase speaker", with("speaker", json!("AGENT"))),
        ("bad timestamp", with("timestamp", json!("yesterday"))),
        (
            "impossible date",
            with("timestamp", json!("2024-02-30T10:00:00Z")),
        ),
        (
            "unix timestamp string",
            with("timestamp", json!("1700000000")),
        ),
        ("whitespace message", with("message", json!("   "))),
        ("call_sid with spaces", with("call_sid", json!("EL 5 bad"))),
        ("array speaker", with("speaker", json!(["agent"]))),
    ] {
        cases.push((what, json_case(value), "application/json", 400));
    }
    cases.push((
        "malformed JSON",
        b"{\"call_sid\": ".to_vec(),
        "application/json",
        400,
    ));
    cases.push(("JSON array", b"[1,2,3]".to_vec(), "application/json", 400));
    cases.push(("empty body", Vec::new(), "application/json", 400));
    cases.push((
        "wrong content type",
        json_case(good.clone()),
        "text/plain",
        415,
    ));
    cases.push((
        "form content type",
        b"call_sid=EL_5_bad".to_vec(),
        "application/x-www-form-urlencoded",
        415,
    ));
    let mut oversize = good.clone();
    oversize["message"] = json!("x".repeat(65 * 1024));
    cases.push((
        "oversize body",
        json_case(oversize),
        "application/json",
        413,
    ));
    assert!(cases.len() >= 20);

    for (what, body, content_type, status) in cases {
        let signature = sign(&body, now());
        let response = app
            .post_transcription_raw(body, Some(&signature), content_type)
            .await;
        assert!(
            response.status().is_client_error(),
            "{what}: {}",
            response.status()
        );
        assert_eq!(response.status().as_u16(), status, "{what}");
        assert_envelope(response, status).await;
    }
    assert_eq!(app.turn_count().await, 0);
}

#[tokio::test]
async fn signatures_and_bearer_secrets_are_checked() {
    let app = spawn_app().await;
    app.create_call("EL_6_sig", Some("conv_sig")).await;
    let body = serde_json::to_vec(&turn_body(
        "EL_6_sig",
        "agent",
        "hi",
        "2024-11-21T10:30:00Z",
    ))
    .expect("json");
    let tampered = serde_json::to_vec(&turn_body(
        "EL_6_sig",
        "agent",
        "HI",
        "2024-11-21T10:30:00Z",
    ))
    .expect("json");
    let wrong = calls_elevenlabs::signature::sign("another_secret", now(), &body);

    for (what, payload, signature) in [
        ("missing", body.clone(), None),
        ("wrong secret", body.clone(), Some(wrong)),
        ("stale", body.clone(), Some(sign(&body, now() - 31 * 60))),
        (
            "future-skewed",
            body.clone(),
            Some(sign(&body, now() + 31 * 60)),
        ),
        ("tampered body", tampered.clone(), Some(sign(&body, now()))),
        ("garbage header", body.clone(), Some("nonsense".to_owned())),
    ] {
        let response = app
            .post_transcription_raw(payload, signature.as_deref(), "application/json")
            .await;
        assert_eq!(response.status().as_u16(), 401, "{what}");
        assert_envelope(response, 401).await;
    }
    let wrong_bearer = app
        .client
        .post(app.url("/webhooks/elevenlabs/transcription"))
        .header("Content-Type", "application/json")
        .bearer_auth(API_TOKEN)
        .body(body.clone())
        .send()
        .await
        .expect("sent");
    assert_eq!(
        wrong_bearer.status().as_u16(),
        401,
        "the API token is not the webhook secret"
    );
    assert_eq!(app.turn_count().await, 0);

    let valid_hmac = app
        .post_transcription_raw(
            body.clone(),
            Some(&sign(&body, now() - 29 * 60)),
            "application/json",
        )
        .await;
    assert_eq!(valid_hmac.status().as_u16(), 201);
    let other = serde_json::to_vec(&turn_body(
        "EL_6_sig",
        "user",
        "hello",
        "2024-11-21T10:30:01Z",
    ))
    .expect("json");
    let valid_bearer = app
        .client
        .post(app.url("/webhooks/elevenlabs/transcription"))
        .header("Content-Type", "application/json")
        .bearer_auth(WEBHOOK_SECRET)
        .body(other)
        .send()
        .await
        .expect("sent");
    assert_eq!(valid_bearer.status().as_u16(), 201);
    assert_eq!(app.turn_count().await, 2);
}

#[tokio::test]
async fn a_turn_that_arrives_before_the_conversation_id_waits_for_it() {
    let app = spawn_app().await;
    app.create_call("EL_7_early", None).await;
    let repository = app.repository.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        use calls_domain::CallRepository;
        repository
            .set_conversation_id(
                &calls_domain::CallSid::parse("EL_7_early").expect("sid"),
                &calls_domain::ConversationId::parse("conv_early").expect("conv"),
            )
            .await
            .expect("linked");
    });

    let response = app
        .post_transcription(&turn_body(
            "EL_7_early",
            "agent",
            "Hello?",
            "2024-11-21T10:30:00Z",
        ))
        .await;

    assert_eq!(response.status().as_u16(), 201);
    let data: Value = response.json().await.expect("json");
    assert_eq!(data["sequence_number"], 1);
}

#[tokio::test]
async fn a_call_that_never_gets_a_conversation_id_or_failed_is_refused() {
    let wait = std::time::Duration::from_millis(1_500);
    let app = spawn_app_with(|s| s.conversation_wait = wait).await;
    app.create_call("EL_8_never", None).await;
    app.create_call("EL_8_failed", None).await;
    app.db
        .execute("UPDATE calls SET status = 'failed', failure_reason = 'HTTP 500' WHERE call_sid = 'EL_8_failed'")
        .await;

    let started = std::time::Instant::now();
    let failed = app
        .post_transcription(&turn_body(
            "EL_8_failed",
            "agent",
            "x",
            "2024-11-21T10:30:00Z",
        ))
        .await;
    let failed_took = started.elapsed();
    let never = app
        .post_transcription(&turn_body(
            "EL_8_never",
            "agent",
            "x",
            "2024-11-21T10:30:00Z",
        ))
        .await;

    let message = assert_envelope(failed, 400).await;
    assert_eq!(
        message,
        "Call record not found or incomplete for call_sid: EL_8_failed"
    );
    assert!(
        failed_took < std::time::Duration::from_millis(400),
        "a failed call is refused at once"
    );
    let never_took = started.elapsed() - failed_took;
    let message = assert_envelope(never, 400).await;
    assert!(message.contains("EL_8_never"));
    assert!(
        never_took >= wait,
        "an in-progress call is waited for ({never_took:?})"
    );
    assert_eq!(app.turn_count().await, 0);
}

#[tokio::test]
async fn webhook_outcomes_are_counted() {
    let app = spawn_app().await;
    app.create_call("EL_9_m", Some("conv_m")).await;
    let body = turn_body("EL_9_m", "agent", "hi", "2024-11-21T10:30:00Z");
    app.post_transcription(&body).await;
    app.post_transcription(&body).await;
    app.post_transcription(&turn_body(
        "EL_unknown",
        "agent",
        "hi",
        "2024-11-21T10:30:00Z",
    ))
    .await;
    app.post_transcription_raw(b"{}".to_vec(), None, "application/json")
        .await;

    let m = &app.state.metrics;
    let outcome = |outcome| {
        m.webhook_transcription_outcomes
            .get_or_create(&calls_server::metrics::OutcomeLabel { outcome })
            .get()
    };
    assert_eq!(outcome("stored"), 1);
    assert_eq!(outcome("duplicate"), 1);
    assert_eq!(outcome("unknown_call"), 1);
    assert_eq!(outcome("unauthenticated"), 1);
    let created = calls_server::metrics::HttpLabels {
        route: "/webhooks/elevenlabs/transcription".into(),
        method: "POST".into(),
        status: 201,
    };
    assert_eq!(m.http_requests.get_or_create(&created).get(), 1);
}

#[tokio::test]
async fn any_well_formed_unknown_call_sid_gets_the_not_found_400() {
    let app = spawn_app().await;
    for call_sid in [
        "EL 5 bad",
        "EL_7_2024-11-21 10:00:00",
        "x/y?z#w",
        "é€😀",
        "' OR 1=1 --",
        &"x".repeat(255),
    ] {
        let response = app
            .post_transcription(&turn_body(call_sid, "agent", "hi", "2024-11-21T10:30:00Z"))
            .await;

        let message = assert_envelope(response, 400).await;
        assert_eq!(
            message,
            format!("Call record not found or incomplete for call_sid: {call_sid}")
        );
    }
    for (what, call_sid) in [
        ("too long", "x".repeat(256)),
        ("control character", "EL_1\u{1}".to_owned()),
        ("empty", String::new()),
    ] {
        let response = app
            .post_transcription(&turn_body(&call_sid, "agent", "hi", "2024-11-21T10:30:00Z"))
            .await;

        let message = assert_envelope(response, 400).await;
        assert_eq!(
            message, "Invalid request: invalid field 'call_sid'",
            "{what}"
        );
    }
    assert_eq!(app.turn_count().await, 0);
}

#[tokio::test]
async fn outcomes_of_refused_deliveries_are_counted_by_kind() {
    let app = spawn_app().await;
    let too_big = serde_json::to_vec(&turn_body(
        "EL_1",
        "agent",
        &"x".repeat(70 * 1024),
        "2024-11-21T10:30:00Z",
    ))
    .expect("json");
    app.post_transcription_raw(
        too_big.clone(),
        Some(&sign(&too_big, now())),
        "application/json",
    )
    .await;
    app.post_transcription_raw(
        b"[]".to_vec(),
        Some(&sign(b"[]", now())),
        "application/json",
    )
    .await;

    let outcome = |outcome| {
        app.state
            .metrics
            .webhook_transcription_outcomes
            .get_or_create(&calls_server::metrics::OutcomeLabel { outcome })
            .get()
    };
    assert_eq!(outcome("invalid"), 2);
    assert_eq!(outcome("unauthenticated"), 0);
}
