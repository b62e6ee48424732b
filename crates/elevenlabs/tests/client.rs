//! `ElevenLabsTelephony` against a fake ElevenLabs (wiremock). Every mock expects exactly
//! one request, so an adapter that retried would fail these tests.

use std::collections::BTreeMap;
use std::time::Duration;

use calls_domain::models::PhoneNumber;
use calls_domain::ports::{ConversationState, OutboundCall, PlacedCall, Telephony, TelephonyError};
use calls_domain::{CallSid, ConversationId, SpeakerType};
use calls_elevenlabs::{ElevenLabsConfig, ElevenLabsTelephony};
use serde_json::json;
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const API_KEY: &str = "sk_live_TOPSECRET_0123456789";
const PATH: &str = "/v1/convai/twilio/outbound-call";

fn config(base_url: &str, timeout: Duration) -> ElevenLabsConfig {
    ElevenLabsConfig {
        // The trailing slash must not produce `//v1/...`.
        base_url: format!("{base_url}/"),
        api_key: API_KEY.into(),
        agent_id: "agent_123".to_owned(),
        agent_phone_number_id: "phnum_456".to_owned(),
        timeout,
    }
}

fn outbound_call() -> OutboundCall {
    OutboundCall {
        call_sid: CallSid::parse("EL_1_2").expect("valid call_sid"),
        to_number: PhoneNumber::parse("+15551234567").expect("valid number"),
        prompt: "You are a friendly safety assistant.".to_owned(),
        dynamic_variables: BTreeMap::from([
            ("call_sid".to_owned(), "EL_1_2".to_owned()),
            ("driver_name".to_owned(), "Jane Doe".to_owned()),
            ("violation_summary".to_owned(), "speeding".to_owned()),
        ]),
    }
}

fn expected_body() -> serde_json::Value {
    json!({
        "agent_id": "agent_123",
        "agent_phone_number_id": "phnum_456",
        "to_number": "+15551234567",
        "conversation_initiation_client_data": {
            "dynamic_variables": {
                "call_sid": "EL_1_2",
                "driver_name": "Jane Doe",
                "violation_summary": "speeding"
            },
            "conversation_config_override": {
                "agent": {"prompt": {"prompt": "You are a friendly safety assistant."}}
            }
        }
    })
}

/// Mounts the one expected request answering with `response`, and places one call.
async fn place_with(response: ResponseTemplate) -> Result<PlacedCall, TelephonyError> {
    place_with_timeout(response, Duration::from_secs(5)).await
}

async fn place_with_timeout(
    response: ResponseTemplate,
    timeout: Duration,
) -> Result<PlacedCall, TelephonyError> {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(PATH))
        .and(header("xi-api-key", API_KEY))
        .and(header("content-type", "application/json"))
        .and(body_json(expected_body()))
        .respond_with(response)
        .expect(1)
        .mount(&server)
        .await;
    let telephony = ElevenLabsTelephony::new(config(&server.uri(), timeout)).expect("valid config");
    let outcome = telephony.place_call(&outbound_call()).await;
    server.verify().await;
    outcome
}

fn json_response(status: u16, body: serde_json::Value) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(body)
}

#[tokio::test]
async fn a_placed_call_returns_the_conversation_and_twilio_ids() {
    let placed = place_with(json_response(
        200,
        json!({
            "success": true,
            "message": "Call initiated successfully",
            "conversation_id": "conv_abc123",
            "callSid": "CA0123456789abcdef0123456789abcdef"
        }),
    ))
    .await
    .expect("placed");
    assert_eq!(placed.conversation_id.as_str(), "conv_abc123");
    assert_eq!(
        placed.provider_call_id.as_deref(),
        Some("CA0123456789abcdef0123456789abcdef")
    );
}

#[tokio::test]
async fn a_missing_message_and_call_sid_do_not_lose_a_placed_call() {
    let placed = place_with(json_response(
        200,
        json!({"success": true, "conversation_id": "conv_x", "callSid": null}),
    ))
    .await
    .expect("placed");
    assert_eq!(placed.conversation_id.as_str(), "conv_x");
    assert_eq!(placed.provider_call_id, None);
}

#[tokio::test]
async fn bad_credentials_are_unauthorized() {
    for status in [401, 403] {
        let err = place_with(json_response(
            status,
            json!({"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}),
        ))
        .await
        .expect_err("refused");
        assert_eq!(err, TelephonyError::Unauthorized { status });
    }
}

#[tokio::test]
async fn a_fastapi_validation_error_is_rejected_with_a_short_detail() {
    let err = place_with(json_response(
        422,
        json!({"detail": [
            {"loc": ["body", "agent_phone_number_id"], "msg": "Field required", "type": "missing"},
            {"loc": ["body", "to_number"], "msg": "Invalid number +15551234567; also 15551234567 or (555) 123-4567", "type": "value_error", "input": "+15551234567"}
        ]}),
    ))
    .await
    .expect_err("rejected");
    let TelephonyError::Rejected { status, detail } = err else {
        panic!("expected Rejected, got {err:?}");
    };
    assert_eq!(status, 422);
    assert_eq!(
        detail,
        "body.agent_phone_number_id: Field required; body.to_number: Invalid number +*******4567; also *******4567 or (***) ***-4567"
    );
}

#[tokio::test]
async fn other_client_errors_are_rejected_with_their_detail() {
    let err = place_with(json_response(
        400,
        json!({"detail": {"status": "quota_exceeded", "message": "You have no credits left"}}),
    ))
    .await
    .expect_err("rejected");
    assert_eq!(
        err,
        TelephonyError::Rejected {
            status: 400,
            detail: "quota_exceeded: You have no credits left".to_owned()
        }
    );

    let err = place_with(ResponseTemplate::new(404).set_body_string("Not Found"))
        .await
        .expect_err("rejected");
    assert_eq!(
        err,
        TelephonyError::Rejected {
            status: 404,
            detail: "Not Found".to_owned()
        }
    );
}

#[tokio::test]
async fn a_long_error_body_is_capped() {
    let err = place_with(ResponseTemplate::new(400).set_body_string("x".repeat(5000)))
        .await
        .expect_err("rejected");
    let TelephonyError::Rejected { detail, .. } = err else {
        panic!("expected Rejected, got {err:?}");
    };
    assert!(
        detail.chars().count() <= 300,
        "{} chars",
        detail.chars().count()
    );
}

#[tokio::test]
async fn too_many_requests_is_rate_limited_and_not_retried() {
    let err = place_with(json_response(
        429,
        json!({"detail": {"status": "too_many_concurrent_requests", "message": "Too many calls"}}),
    ))
    .await
    .expect_err("rate limited");
    assert_eq!(
        err,
        TelephonyError::RateLimited {
            detail: "too_many_concurrent_requests: Too many calls".to_owned()
        }
    );
}

#[tokio::test]
async fn server_errors_are_not_retried() {
    for status in [500, 503] {
        let err = place_with(ResponseTemplate::new(status).set_body_string("upstream broke"))
            .await
            .expect_err("server error");
        assert_eq!(err, TelephonyError::ServerError { status });
    }
}

#[tokio::test]
async fn success_false_is_not_placed() {
    let err = place_with(json_response(
        200,
        json!({"success": false, "message": "Twilio could not dial", "conversation_id": null, "callSid": null}),
    ))
    .await
    .expect_err("not placed");
    assert_eq!(
        err,
        TelephonyError::NotPlaced {
            message: "Twilio could not dial".to_owned()
        }
    );

    let err = place_with(json_response(200, json!({"success": false})))
        .await
        .expect_err("not placed");
    assert!(matches!(err, TelephonyError::NotPlaced { .. }), "{err:?}");
}

#[tokio::test]
async fn success_without_a_usable_conversation_id_is_missing_conversation_id() {
    for conversation_id in [json!(null), json!(""), json!("has space")] {
        let err = place_with(json_response(
            200,
            json!({"success": true, "message": "ok", "conversation_id": conversation_id, "callSid": "CA1"}),
        ))
        .await
        .expect_err("no conversation id");
        assert_eq!(
            err,
            TelephonyError::MissingConversationId,
            "{conversation_id}"
        );
    }
    let err = place_with(json_response(
        200,
        json!({"success": true, "message": "ok"}),
    ))
    .await
    .expect_err("no conversation id");
    assert_eq!(err, TelephonyError::MissingConversationId);
}

#[tokio::test]
async fn an_undecodable_success_body_is_unexpected() {
    for body in ["{not json", "", r#"{"success":"yes"}"#] {
        let err = place_with(
            ResponseTemplate::new(200).set_body_raw(body.as_bytes().to_vec(), "application/json"),
        )
        .await
        .expect_err("unexpected");
        assert!(
            matches!(err, TelephonyError::Unexpected(_)),
            "{body}: {err:?}"
        );
    }
}

#[tokio::test]
async fn a_slow_answer_times_out_after_the_configured_timeout_without_retry() {
    let timeout = Duration::from_millis(200);
    let err = place_with_timeout(
        json_response(
            200,
            json!({"success": true, "message": "late", "conversation_id": "conv_late"}),
        )
        .set_delay(Duration::from_secs(3)),
        timeout,
    )
    .await
    .expect_err("timed out");
    // The answer would have been a success: a Timeout error proves we gave up first (no
    // wall-clock assertion, which a loaded machine can break).
    assert_eq!(err, TelephonyError::Timeout(timeout));
}

#[tokio::test]
async fn a_refused_connection_is_unreachable() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let telephony = ElevenLabsTelephony::new(config(
        &format!("http://127.0.0.1:{port}"),
        Duration::from_secs(5),
    ))
    .expect("valid config");
    let err = telephony
        .place_call(&outbound_call())
        .await
        .expect_err("unreachable");
    assert!(matches!(err, TelephonyError::Unreachable(_)), "{err:?}");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let elsewhere = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&elsewhere)
        .await;
    let err = place_with(
        ResponseTemplate::new(307)
            .insert_header("location", format!("{}{PATH}", elsewhere.uri()).as_str()),
    )
    .await
    .expect_err("not followed");
    assert_eq!(
        err,
        TelephonyError::Unexpected("unexpected HTTP status 307".to_owned())
    );
}

#[tokio::test]
async fn the_api_key_never_appears_in_debug_output_or_errors() {
    let cfg = config("http://127.0.0.1:1", Duration::from_secs(1));
    let telephony = ElevenLabsTelephony::new(cfg.clone()).expect("valid config");
    for shown in [
        format!("{cfg:?}"),
        format!("{cfg:#?}"),
        format!("{telephony:?}"),
    ] {
        assert!(!shown.contains(API_KEY), "{shown}");
        assert!(!shown.contains("TOPSECRET"), "{shown}");
    }

    // A provider that echoes the key back must not get it into our errors.
    let echoing = [
        ResponseTemplate::new(401).set_body_string(API_KEY),
        ResponseTemplate::new(403).set_body_string(API_KEY),
        json_response(
            422,
            json!({"detail": [{"loc": ["header", "xi-api-key"], "msg": format!("bad key {API_KEY}")}]}),
        ),
        json_response(
            400,
            json!({"detail": {"status": "invalid_api_key", "message": API_KEY}}),
        ),
        json_response(429, json!({"detail": format!("slow down {API_KEY}")})),
        ResponseTemplate::new(500).set_body_string(API_KEY),
        json_response(
            200,
            json!({"success": false, "message": format!("key {API_KEY} suspended")}),
        ),
        json_response(200, json!({"success": format!("{API_KEY}")})),
        json_response(
            200,
            json!({"success": true, "message": API_KEY, "conversation_id": null}),
        ),
    ];
    for response in echoing {
        let err = place_with(response).await.expect_err("an error");
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(!shown.contains(API_KEY), "{shown}");
        }
    }

    let refused = telephony
        .place_call(&outbound_call())
        .await
        .expect_err("nothing listens on port 1");
    assert!(!refused.to_string().contains(API_KEY));
    assert!(!format!("{refused:?}").contains(API_KEY));
}

#[test]
fn an_invalid_config_is_refused_without_echoing_the_key() {
    let mut cfg = config("http://127.0.0.1:1", Duration::from_secs(1));
    cfg.agent_id = String::new();
    let err = ElevenLabsTelephony::new(cfg).expect_err("missing agent id");
    assert!(err.to_string().contains("agent_id"));
    assert!(!err.to_string().contains(API_KEY));
}

// --- The conversation API (`GET /v1/convai/conversations/{id}`), for stale calls. ---

const CONVERSATION_PATH: &str = "/v1/convai/conversations/conv_stale_1";

/// Mounts the one expected GET answering with `response`, and asks about `conv_stale_1`.
async fn fetch_with(response: ResponseTemplate) -> Result<ConversationState, TelephonyError> {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(CONVERSATION_PATH))
        .and(header("xi-api-key", API_KEY))
        .respond_with(response)
        .expect(1)
        .mount(&server)
        .await;
    let telephony = ElevenLabsTelephony::new(config(&server.uri(), Duration::from_secs(5)))
        .expect("valid config");
    telephony
        .fetch_conversation(&ConversationId::parse("conv_stale_1").expect("valid id"))
        .await
}

fn conversation(status: &str) -> serde_json::Value {
    json!({
        "agent_id": "agent_123",
        "conversation_id": "conv_stale_1",
        "status": status,
        "transcript": [
            {"role": "agent", "message": "Hi Jane", "time_in_call_secs": 0},
            {"role": "user", "message": "Hello", "time_in_call_secs": 3}
        ],
        "metadata": {"start_time_unix_secs": 1_732_183_200, "call_duration_secs": 42,
                     "termination_reason": "end_call tool was called."},
        "analysis": {
            "call_successful": "success",
            "transcript_summary": "Driver acknowledged.",
            "data_collection_results": {
                "violation_acknowledged": {"data_collection_id": "violation_acknowledged", "value": true, "rationale": "said so"}
            }
        },
        "conversation_initiation_client_data": {"dynamic_variables": {"call_sid": "EL_1_2"}}
    })
}

#[tokio::test]
async fn a_done_conversation_is_reported_with_transcript_and_outcome() {
    let state = fetch_with(json_response(200, conversation("done")))
        .await
        .expect("answered");

    let ConversationState::Done(report) = state else {
        panic!("not done: {state:?}");
    };
    assert_eq!(report.conversation_id.as_str(), "conv_stale_1");
    assert_eq!(
        report.call_sid.as_ref().map(CallSid::as_str),
        Some("EL_1_2")
    );
    assert_eq!(report.duration_secs, Some(42));
    assert_eq!(report.transcript.len(), 2);
    assert_eq!(report.transcript[1].speaker, SpeakerType::Driver);
    assert_eq!(report.outcome.call_successful.as_deref(), Some("success"));
    assert_eq!(
        report.outcome.data_collection["violation_acknowledged"],
        json!(true)
    );
}

#[tokio::test]
async fn a_failed_conversation_is_failed_with_its_reason_or_a_default() {
    let mut body = conversation("failed");
    body["failure_reason"] = json!("no-answer");
    let state = fetch_with(json_response(200, body))
        .await
        .expect("answered");
    assert_eq!(
        state,
        ConversationState::Failed {
            reason: "no-answer".into()
        }
    );

    let state = fetch_with(json_response(200, json!({"status": "failed"})))
        .await
        .expect("answered");
    assert_eq!(
        state,
        ConversationState::Failed {
            reason: "conversation failed".into()
        }
    );
}

#[tokio::test]
async fn a_conversation_in_progress_is_pending_with_its_status() {
    let state = fetch_with(json_response(200, conversation("in-progress")))
        .await
        .expect("answered");
    assert_eq!(
        state,
        ConversationState::Pending {
            status: "in-progress".into()
        }
    );
    let state = fetch_with(json_response(200, conversation("processing")))
        .await
        .expect("answered");
    assert_eq!(
        state,
        ConversationState::Pending {
            status: "processing".into()
        }
    );
}

#[tokio::test]
async fn an_unknown_conversation_is_not_found() {
    let state = fetch_with(json_response(
        404,
        json!({"detail": {"status": "conversation_not_found", "message": "Conversation not found"}}),
    ))
    .await
    .expect("a 404 is an answer, not an error");
    assert_eq!(state, ConversationState::NotFound);
}

#[tokio::test]
async fn a_server_error_is_an_error_and_not_retried() {
    let err = fetch_with(ResponseTemplate::new(500).set_body_string("boom"))
        .await
        .expect_err("5xx");
    assert_eq!(err, TelephonyError::ServerError { status: 500 });
}

#[tokio::test]
async fn a_garbage_answer_is_an_error_not_a_panic() {
    for body in [
        "<html>Bad Gateway</html>",
        "[1, 2]",
        "",
        "{\"status\": \"done\"",
    ] {
        let err = fetch_with(ResponseTemplate::new(200).set_body_string(body))
            .await
            .expect_err("garbage");
        assert!(
            matches!(&err, TelephonyError::Unexpected(m) if m.contains("unreadable conversation")),
            "{body:?}: {err:?}"
        );
    }
}

#[tokio::test]
async fn bad_credentials_on_the_conversation_api_are_unauthorized_without_the_key() {
    let err = fetch_with(json_response(
        401,
        json!({"detail": format!("invalid key {API_KEY}")}),
    ))
    .await
    .expect_err("401");
    assert_eq!(err, TelephonyError::Unauthorized { status: 401 });
    assert!(!format!("{err} {err:?}").contains(API_KEY));
}

#[tokio::test]
async fn a_slow_conversation_answer_times_out() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(CONVERSATION_PATH))
        .respond_with(json_response(200, conversation("done")).set_delay(Duration::from_secs(3)))
        .expect(1)
        .mount(&server)
        .await;
    let telephony = ElevenLabsTelephony::new(config(&server.uri(), Duration::from_millis(300)))
        .expect("valid config");
    let err = telephony
        .fetch_conversation(&ConversationId::parse("conv_stale_1").expect("valid id"))
        .await
        .expect_err("timeout");
    assert_eq!(err, TelephonyError::Timeout(Duration::from_millis(300)));
}

#[tokio::test]
async fn the_conversation_id_is_one_encoded_path_segment() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/convai/conversations/a%2F..%2Fb%3Fx"))
        .respond_with(json_response(200, json!({"status": "processing"})))
        .expect(1)
        .mount(&server)
        .await;
    let telephony = ElevenLabsTelephony::new(config(&server.uri(), Duration::from_secs(5)))
        .expect("valid config");
    let state = telephony
        .fetch_conversation(&ConversationId::parse("a/../b?x").expect("valid id"))
        .await
        .expect("answered");
    assert!(matches!(state, ConversationState::Pending { .. }));
}

/// SPEC: an outbound-call answer 4xx other than 408 and 429 is not re-dialed; everything
/// else is. The adapter keeps the HTTP status so the batch dialer can tell.
#[tokio::test]
async fn each_answer_carries_what_the_redial_rule_needs() {
    let cases = [
        (400, Some(400), false),
        (401, Some(401), false),
        (403, Some(403), false),
        (404, Some(404), false),
        (422, Some(422), false),
        (408, Some(408), true),
        (429, Some(429), true),
        (500, Some(500), true),
        (503, Some(503), true),
    ];
    for (answer, status, redialable) in cases {
        let err = place_with(ResponseTemplate::new(answer).set_body_string("no"))
            .await
            .expect_err("an error");
        assert_eq!(err.status(), status, "{answer}: {err:?}");
        assert_eq!(err.is_redialable(), redialable, "{answer}: {err:?}");
    }
    let not_placed = place_with(json_response(200, json!({"success": false})))
        .await
        .expect_err("not placed");
    assert!(not_placed.is_redialable(), "success:false is re-dialed");
    let slow = place_with_timeout(
        ResponseTemplate::new(200).set_delay(Duration::from_millis(500)),
        Duration::from_millis(100),
    )
    .await
    .expect_err("timeout");
    assert!(slow.is_redialable(), "a timeout is re-dialed: {slow:?}");
}
