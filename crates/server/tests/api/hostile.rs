//! A hostile client: NUL characters, unauthenticated and oversized bodies, slow clients,
//! malformed requests. Every answer is a 4xx (with the envelope once the request reaches
//! the application), nothing is written, and nothing costs the server more than its limits.

use std::time::Duration;

use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::{
    API_TOKEN, WEBHOOK_SECRET, assert_envelope, sign_now, spawn_app, spawn_app_with, turn_body,
};

const TURN: &str = "/webhooks/elevenlabs/transcription";
const BATCH: &str = "/driver_data/call-elevenlabs";
const POST_CALL: &str = "/webhooks/elevenlabs/post-call";

fn head(method: &str, path: &str, headers: &[(&str, &str)], content_length: usize) -> Vec<u8> {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str(&format!("Content-Length: {content_length}\r\n\r\n"));
    text.into_bytes()
}

fn driver(id: i64) -> Value {
    json!({
        "driverId": id,
        "driverName": "Driver",
        "phoneNumber": "+15551230001",
        "customRules": "",
        "violations": {"tripId": "trip_1", "violationDetails": [{"type": "temperature", "description": "Too warm"}]}
    })
}

#[tokio::test]
async fn a_nul_in_any_string_of_a_turn_is_400_and_writes_nothing() {
    let app = spawn_app().await;
    app.create_call("EL_40_nul", Some("conv_nul")).await;
    let good = turn_body("EL_40_nul", "agent", "hello", "2024-11-21T10:30:00Z");

    for field in ["call_sid", "speaker", "message", "timestamp"] {
        let mut body = good.clone();
        let value = body[field].as_str().unwrap_or_default().to_owned();
        body[field] = json!(format!("{value}\u{0}x"));

        let response = app.post_transcription(&body).await;

        let message = assert_envelope(response, 400).await;
        assert!(message.contains(field), "{field}: {message}");
    }
    assert_eq!(app.turn_count().await, 0);
    let stored = app.post_transcription(&good).await;
    assert_eq!(
        stored.status().as_u16(),
        201,
        "the same turn without NUL is stored"
    );
}

#[tokio::test]
async fn a_nul_in_any_string_of_a_batch_is_400_dials_nobody_and_writes_nothing() {
    let app = spawn_app().await;
    Mock::given(method("POST"))
        .and(path("/v1/convai/twilio/outbound-call"))
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&app.elevenlabs)
        .await;
    let good = json!({"callType": "violation", "timestamp": "1700004000", "drivers": [driver(41)]});
    let fields: [&[&str]; 8] = [
        &["callType"],
        &["timestamp"],
        &["drivers", "0", "driverName"],
        &["drivers", "0", "phoneNumber"],
        &["drivers", "0", "customRules"],
        &["drivers", "0", "violations", "tripId"],
        &[
            "drivers",
            "0",
            "violations",
            "violationDetails",
            "0",
            "type",
        ],
        &[
            "drivers",
            "0",
            "violations",
            "violationDetails",
            "0",
            "description",
        ],
    ];

    for field in fields {
        let mut body = good.clone();
        let pointer = format!("/{}", field.join("/"));
        let slot = body.pointer_mut(&pointer).expect("field exists");
        *slot = json!(format!("{}\u{0}", slot.as_str().unwrap_or_default()));

        let response = app
            .client
            .post(app.url(BATCH))
            .bearer_auth(API_TOKEN)
            .json(&body)
            .send()
            .await
            .expect("sent");

        assert_envelope(response, 400).await;
    }
    let calls = app
        .db
        .strings("SELECT count(*)::text AS value FROM calls")
        .await;
    assert_eq!(calls, ["0"]);
}

#[tokio::test]
async fn unauthenticated_requests_are_refused_before_their_body_is_read() {
    let app = spawn_app().await;
    let stale = calls_elevenlabs::signature::sign(WEBHOOK_SECRET, 1, b"{}");
    let wrong_bearer = format!("Bearer {API_TOKEN}");
    type Headers<'a> = Vec<(&'a str, &'a str)>;
    let cases: Vec<(&str, &str, Headers)> = vec![
        ("no webhook credentials", TURN, vec![]),
        (
            "wrong webhook bearer",
            TURN,
            vec![("Authorization", &wrong_bearer)],
        ),
        (
            "stale signature",
            TURN,
            vec![("ElevenLabs-Signature", &stale)],
        ),
        ("post-call without signature", POST_CALL, vec![]),
        (
            "post-call with a bearer",
            POST_CALL,
            vec![("Authorization", "Bearer wsec_test_secret")],
        ),
        ("batch without token", BATCH, vec![]),
        (
            "batch with the webhook secret",
            BATCH,
            vec![("Authorization", "Bearer wsec_test_secret")],
        ),
    ];

    for (what, route, mut headers) in cases {
        headers.push(("Content-Type", "application/json"));
        // A body within every limit is announced and never sent: an answer proves it was
        // not waited for.
        let request = head("POST", route, &headers, 60_000);

        let response = app
            .raw(&[&request], Duration::ZERO, Duration::from_secs(3))
            .await;

        response.envelope(401);
        assert!(
            response.took < Duration::from_millis(500),
            "{what}: {response:?}"
        );
    }
}

#[tokio::test]
async fn bodies_over_each_endpoints_limit_are_413_before_they_are_read() {
    let app = spawn_app_with(|s| {
        s.body_limits.transcription = 2_000;
        s.body_limits.batch = 3_000;
        s.body_limits.post_call = 4_000;
    })
    .await;
    let cases = [
        (TURN, format!("Bearer {WEBHOOK_SECRET}"), 2_001),
        (BATCH, format!("Bearer {API_TOKEN}"), 3_001),
        (POST_CALL, String::new(), 4_001),
    ];

    for (route, authorization, length) in cases {
        let signature = sign_now(b"");
        let mut headers = vec![("Content-Type", "application/json")];
        if authorization.is_empty() {
            headers.push(("ElevenLabs-Signature", &signature));
        } else {
            headers.push(("Authorization", &authorization));
        }
        let request = head("POST", route, &headers, length);

        let response = app
            .raw(&[&request], Duration::ZERO, Duration::from_secs(3))
            .await;

        let message = response.envelope(413);
        assert_eq!(message, "Request body too large", "{route}");
        assert_eq!(
            response.header("content-type"),
            Some("application/json"),
            "{route}"
        );
        assert!(response.took < Duration::from_millis(500), "{route}");
    }
}

#[tokio::test]
async fn a_body_that_trickles_in_is_cut_off_with_408() {
    let app = spawn_app_with(|s| s.body_read_timeout = Duration::from_millis(800)).await;
    app.create_call("EL_42_slow", Some("conv_slow")).await;
    let body = serde_json::to_vec(&turn_body(
        "EL_42_slow",
        "agent",
        "slow",
        "2024-11-21T10:30:00Z",
    ))
    .expect("json");
    let bearer = format!("Bearer {WEBHOOK_SECRET}");
    let request = head(
        "POST",
        TURN,
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &bearer),
        ],
        body.len(),
    );
    let mut parts: Vec<&[u8]> = vec![&request];
    parts.extend(body.chunks(1));

    // One byte every 200 ms would take about 14 s for this body.
    let response = app
        .raw(&parts, Duration::from_millis(200), Duration::from_secs(5))
        .await;

    let message = response.envelope(408);
    assert_eq!(message, "Request timeout");
    assert!(response.took < Duration::from_secs(3), "{response:?}");
    assert_eq!(app.turn_count().await, 0);
}

#[tokio::test]
async fn a_request_head_that_never_completes_is_cut_off_with_408() {
    let app = spawn_app().await;

    let response = app
        .raw(
            &[b"POST /webhooks/elevenlabs/transcription HTTP/1.1\r\nHost: x\r\n"],
            Duration::ZERO,
            Duration::from_secs(10),
        )
        .await;

    // Never reaches the application: the HTTP server's own bare 408 (SPEC, HTTP API).
    assert_eq!(response.status, 408, "{response:?}");
    assert!(response.took < Duration::from_secs(7), "{response:?}");
}

#[tokio::test]
async fn malformed_request_lines_and_oversized_heads_are_refused_before_the_application() {
    let app = spawn_app().await;
    let many_headers: String = (0..120).map(|i| format!("X-Filler-{i}: x\r\n")).collect();
    let many = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n");
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let cases: [(&str, &[u8], u16); 5] = [
        (
            "space in the path",
            b"GET /calls/a b c HTTP/1.1\r\nHost: x\r\n\r\n",
            400,
        ),
        (
            "control character in the path",
            b"GET /calls/\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
            400,
        ),
        ("not HTTP", b"HELLO\r\n\r\n", 400),
        ("too many headers", many.as_bytes(), 431),
        ("a header too large", huge.as_bytes(), 431),
    ];

    for (what, request, status) in cases {
        let response = app
            .raw(&[request], Duration::ZERO, Duration::from_secs(3))
            .await;

        // The HTTP server's own bare answer (SPEC, HTTP API), given at once.
        assert_eq!(response.status, status, "{what}: {response:?}");
        assert!(
            response.took < Duration::from_secs(2),
            "{what}: {response:?}"
        );
    }
    let healthy = app.get("/healthz").await;
    assert_eq!(healthy.status().as_u16(), 200, "still serving");
}

#[tokio::test]
async fn unknown_routes_wrong_methods_and_bad_paths_get_the_envelope() {
    let app = spawn_app().await;

    let unknown = app.get("/nope").await;
    let wrong_method = app.get(BATCH).await;
    let delete = app
        .client
        .delete(app.url("/calls/EL_1"))
        .send()
        .await
        .expect("sent");
    let bad_utf8 = app.get_authed("/calls/%FF%FE").await;

    assert_envelope(unknown, 404).await;
    assert_eq!(
        wrong_method
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok()),
        Some("POST")
    );
    assert_envelope(wrong_method, 405).await;
    assert_eq!(
        delete.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("GET")
    );
    assert_envelope(delete, 405).await;
    // Not UTF-8 once decoded: it stays percent-encoded, a call_sid that names no Call.
    assert_envelope(bad_utf8, 404).await;
}

#[tokio::test]
async fn malformed_json_and_wrong_shapes_name_the_problem() {
    let app = spawn_app().await;
    let post = |route: &'static str, body: &'static str| {
        let app = &app;
        async move {
            let raw = body.as_bytes().to_vec();
            let request = app
                .client
                .post(app.url(route))
                .header("Content-Type", "application/json");
            let request = if route == BATCH {
                request.bearer_auth(API_TOKEN)
            } else {
                request.header("ElevenLabs-Signature", sign_now(&raw))
            };
            request.body(raw).send().await.expect("sent")
        }
    };

    let truncated = post(TURN, "{\"call_sid\": ").await;
    let wrong_type = post(
        BATCH,
        r#"{"callType": "v", "timestamp": "1", "drivers": [{"driverId": "one"}]}"#,
    )
    .await;
    let float_timestamp = post(
        BATCH,
        r#"{"callType": "v", "timestamp": 1.5, "drivers": []}"#,
    )
    .await;

    assert_eq!(assert_envelope(truncated, 400).await, "Malformed JSON");
    let body: Value = wrong_type.json().await.expect("json");
    assert_eq!(body["message"], "Invalid request body");
    assert!(
        body["details"]
            .as_str()
            .is_some_and(|d| d.starts_with("drivers[0].driverId: invalid type")),
        "{body}"
    );
    assert_envelope(float_timestamp, 400).await;
}

/// A post-call event as ElevenLabs sends it for a call of `minutes`: a turn every 8 s per
/// side, each agent turn with the transcription tool's call and result, and the per-turn
/// metadata ElevenLabs adds (metrics, LLM usage).
fn long_post_call_event(minutes: u64) -> Value {
    let turns: Vec<Value> = (0..minutes * 60 / 4)
        .map(|i| {
            let agent = i % 2 == 0;
            let message = if agent {
                "Thanks for letting me know. Can you confirm the reefer unit is set back to 36 degrees and that the temperature is dropping on the display?"
            } else {
                "Yeah, it's at 38 now and going down, should be fine in ten minutes."
            };
            let mut turn = json!({
                "role": if agent { "agent" } else { "user" },
                "agent_metadata": {"agent_id": "agent_0123456789abcdef", "workflow_node_id": null},
                "message": message,
                "multivoice_message": null,
                "tool_calls": [],
                "tool_results": [],
                "feedback": null,
                "llm_override": null,
                "time_in_call_secs": i * 4,
                "conversation_turn_metrics": {"metrics": {
                    "convai_llm_service_ttfb": {"elapsed_time": 0.312},
                    "convai_llm_service_ttf_sentence": {"elapsed_time": 0.587},
                    "convai_tts_service_ttfb": {"elapsed_time": 0.201}
                }},
                "rag_retrieval_info": null,
                "llm_usage": {"model_usage": {"gpt-4o-mini": {
                    "input": {"tokens": 1532, "price": 0.00023},
                    "input_cache_read": {"tokens": 0, "price": 0.0},
                    "input_cache_write": {"tokens": 0, "price": 0.0},
                    "output_total": {"tokens": 41, "price": 0.000025}
                }}},
                "interrupted": false,
                "original_message": null,
                "source_medium": null
            });
            if agent {
                let params = json!({"call_sid": "EL_333_2024-11-21T10:00:00Z", "speaker": "agent", "message": message, "timestamp": "2024-11-21T10:30:00Z"});
                turn["tool_calls"] = json!([{"type": "webhook", "request_id": "save_transcription_0123456789", "tool_name": "save_transcription", "params_as_json": params.to_string(), "tool_has_been_called": true, "tool_details": {"type": "webhook", "method": "POST", "url": "https://calls.example.com/webhooks/elevenlabs/transcription", "headers": {}, "path_params": {}, "query_params": {}, "body": params.to_string()}}]);
                turn["tool_results"] = json!([{"type": "webhook", "request_id": "save_transcription_0123456789", "tool_name": "save_transcription", "result_value": "{\"status\":\"success\",\"message\":\"Transcription saved successfully for call_sid EL_333_2024-11-21T10:00:00Z\",\"transcription_id\":1234,\"sequence_number\":17}", "is_error": false, "tool_has_been_called": true, "tool_latency_secs": 0.041}]);
            }
            turn
        })
        .collect();
    json!({
        "type": "post_call_transcription",
        "event_timestamp": 1_732_190_000,
        "data": {
            "agent_id": "agent_0123456789abcdef",
            "conversation_id": "conv_long_call",
            "status": "done",
            "transcript": turns,
            "metadata": {"start_time_unix_secs": 1_732_183_200, "call_duration_secs": minutes * 60},
            "analysis": {"call_successful": "success", "transcript_summary": "The driver fixed the reefer.", "data_collection_results": {}},
            "conversation_initiation_client_data": {"dynamic_variables": {"call_sid": "EL_333_2024-11-21T10:00:00Z"}}
        }
    })
}

#[tokio::test]
async fn a_one_hour_calls_post_call_event_fits_the_default_limit() {
    let app = spawn_app().await;
    let body = serde_json::to_vec(&long_post_call_event(60)).expect("json");
    let limit = calls_server::config::BodyLimits::default().post_call;
    eprintln!(
        "one-hour post-call event: {} bytes (limit {limit})",
        body.len()
    );

    let response = app
        .client
        .post(app.url(POST_CALL))
        .header("Content-Type", "application/json")
        .header("ElevenLabs-Signature", sign_now(&body))
        .body(body.clone())
        .send()
        .await
        .expect("sent");

    // The size leaves room for longer calls and fatter turns.
    assert!(body.len() * 2 < limit, "{} bytes", body.len());
    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test]
async fn timestamps_beyond_the_supported_years_are_400_not_a_crash() {
    let app = spawn_app().await;
    app.create_call("EL_43_years", Some("conv_years")).await;

    for timestamp in [
        "9999-12-31T23:59:59-23:59",
        "+10000-01-01T00:00:00Z",
        "-0001-01-01T00:00:00Z",
    ] {
        let response = app
            .post_transcription(&turn_body("EL_43_years", "agent", "hi", timestamp))
            .await;

        let message = assert_envelope(response, 400).await;
        assert_eq!(
            message, "Invalid request: invalid field 'timestamp'",
            "{timestamp}"
        );
    }
    let still_serving = app
        .post_transcription(&turn_body(
            "EL_43_years",
            "agent",
            "hi",
            "2024-11-21T10:30:00Z",
        ))
        .await;
    assert_eq!(still_serving.status().as_u16(), 201);
}
