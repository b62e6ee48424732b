use calls_server::metrics::OutcomeLabel;
use secrecy::ExposeSecret;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, Request, Respond, ResponseTemplate};

use crate::helpers::{API_TOKEN, TestApp, assert_envelope, spawn_app, spawn_app_with, turn_body};

const OUTBOUND: &str = "/v1/convai/twilio/outbound-call";

fn driver(id: i64, phone: &str) -> Value {
    json!({
        "driverId": id,
        "driverName": format!("Driver {id}"),
        "phoneNumber": phone,
        "customRules": "",
        "violations": {
            "tripId": format!("trip_{id}"),
            "violationDetails": [{"type": "temperature", "description": "Temperature out of range"}]
        }
    })
}

fn batch(timestamp: &str, drivers: Vec<Value>) -> Value {
    json!({"callType": "violation", "timestamp": timestamp, "drivers": drivers})
}

fn success(conversation_id: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "success": true,
        "message": "Call initiated successfully",
        "conversation_id": conversation_id,
        "callSid": "CA0123456789abcdef0123456789abcdef"
    }))
}

impl TestApp {
    async fn post_batch(&self, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/driver_data/call-elevenlabs"))
            .bearer_auth(API_TOKEN)
            .json(body)
            .send()
            .await
            .expect("sent")
    }

    async fn calls_count(&self) -> i64 {
        self.db
            .strings("SELECT count(*)::text AS value FROM calls")
            .await
            .first()
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1)
    }
}

/// The fake ElevenLabs fails the test (on drop) if anyone is dialed.
async fn expect_no_dials(app: &TestApp) {
    Mock::given(method("POST"))
        .and(path(OUTBOUND))
        .respond_with(success("never"))
        .expect(0)
        .mount(&app.elevenlabs)
        .await;
}

/// The fake ElevenLabs answers dials to `to_number` with `response`.
async fn answer_for(app: &TestApp, to_number: &str, response: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path(OUTBOUND))
        .and(body_partial_json(json!({ "to_number": to_number })))
        .respond_with(response)
        .mount(&app.elevenlabs)
        .await;
}

/// A fake ElevenLabs that, while the request is in flight, looks the Call up in our database.
struct CheckDbThenSucceed {
    url: String,
    schema: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Respond for CheckDbThenSucceed {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let sid = body["conversation_initiation_client_data"]["dynamic_variables"]["call_sid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let (url, schema) = (self.url.clone(), self.schema.clone());
        // respond() is synchronous: query from a thread with its own runtime.
        let row = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async move {
                use diesel::sql_types::Text;
                use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
                #[derive(diesel::QueryableByName)]
                struct Row {
                    #[diesel(sql_type = Text)]
                    value: String,
                }
                let mut conn = AsyncPgConnection::establish(&url).await.ok()?;
                diesel::sql_query(format!(
                    "SELECT status || ':' || COALESCE(conversation_id, 'NULL') AS value FROM \"{schema}\".calls WHERE call_sid = $1"
                ))
                .bind::<Text, _>(sid)
                .get_result::<Row>(&mut conn)
                .await
                .ok()
                .map(|r| r.value)
            })
        })
        .join()
        .ok()
        .flatten();
        self.seen
            .lock()
            .expect("lock")
            .push(row.unwrap_or_else(|| "missing".into()));
        success("conv_workflow_333")
    }
}

#[tokio::test]
async fn a_batch_call_is_written_before_dialing_and_linked_to_its_conversation() {
    let app = spawn_app().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    Mock::given(method("POST"))
        .and(path(OUTBOUND))
        .and(header("xi-api-key", "xi_test_key"))
        .and(body_partial_json(json!({
            "agent_id": "agent_test",
            "agent_phone_number_id": "phnum_test",
            "to_number": "+15551234567",
            "conversation_initiation_client_data": {
                "dynamic_variables": {"call_sid": "EL_333_2024-11-21T10:00:00Z"}
            }
        })))
        .respond_with(CheckDbThenSucceed {
            url: app.db.config().url.expose_secret().to_owned(),
            schema: app.db.schema().to_string(),
            seen: seen.clone(),
        })
        .expect(1)
        .mount(&app.elevenlabs)
        .await;
    let mut request = batch("2024-11-21T10:00:00Z", vec![driver(333, "+15551234567")]);
    request["drivers"][0]["driverName"] = json!("Test Driver");

    let response = app.post_batch(&request).await;

    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["call_sid"], "EL_333_2024-11-21T10:00:00Z");
    assert_eq!(body["conversation_id"], "conv_workflow_333");
    assert_eq!(body["callSid"], "CA0123456789abcdef0123456789abcdef");
    assert_eq!(body["triggers_count"], 1);
    assert_eq!(
        body["driver"],
        json!({"driverId": 333, "driverName": "Test Driver", "phoneNumber": "+15551234567"})
    );
    assert_eq!(body["calls"][0]["status"], "in_progress");
    assert_eq!(
        *seen.lock().expect("lock"),
        ["in_progress:NULL"],
        "the Call existed, in_progress without conversation_id, while ElevenLabs was dialing"
    );
    let call: Value = app
        .get_authed("/calls/EL_333_2024-11-21T10:00:00Z")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(call["driver_id"], 333);
    assert_eq!(call["conversation_id"], "conv_workflow_333");
    assert!(call["status"] == "in_progress" || call["status"] == "completed");
}

/// Notes when each outbound-call request arrives, then answers after `delay`.
struct SlowAnswer {
    conversation_id: String,
    delay: Duration,
    arrivals: Arc<Mutex<Vec<Instant>>>,
}

impl Respond for SlowAnswer {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        self.arrivals.lock().expect("lock").push(Instant::now());
        success(&self.conversation_id).set_delay(self.delay)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drivers_of_a_batch_are_dialed_concurrently() {
    let app = spawn_app().await;
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let delay = Duration::from_millis(300);
    // Each driver gets its own conversation id (they are unique): answer per phone number.
    for i in 0..5 {
        Mock::given(method("POST"))
            .and(path(OUTBOUND))
            .and(body_partial_json(
                json!({"to_number": format!("+1555123456{i}")}),
            ))
            .respond_with(SlowAnswer {
                conversation_id: format!("conv_slow_{i}"),
                delay,
                arrivals: arrivals.clone(),
            })
            .expect(1)
            .mount(&app.elevenlabs)
            .await;
    }
    let drivers = (0..5)
        .map(|i| driver(10 + i, &format!("+1555123456{i}")))
        .collect();

    let started = Instant::now();
    let response = app.post_batch(&batch("1700000100", drivers)).await;
    let elapsed = started.elapsed();

    assert_eq!(response.status().as_u16(), 200);
    // All five requests reached ElevenLabs before the first answer could have come back:
    // they were in flight together (wall time alone is at the mercy of a loaded CI machine).
    let arrivals = arrivals.lock().expect("lock").clone();
    assert_eq!(arrivals.len(), 5);
    let first = arrivals.iter().min().copied().expect("arrivals");
    let last = arrivals.iter().max().copied().expect("arrivals");
    assert!(
        last.duration_since(first) < delay,
        "requests were spread over {:?}",
        last.duration_since(first)
    );
    eprintln!("5 drivers at 300 ms each took {elapsed:?} (sequential: 1.5 s)");
    let body: Value = response.json().await.expect("json");
    let order: Vec<_> = body["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .map(|c| c["driver"]["driverId"].clone())
        .collect();
    assert_eq!(
        order,
        [json!(10), json!(11), json!(12), json!(13), json!(14)]
    );
}

#[tokio::test]
async fn a_partial_failure_is_207_and_the_failed_call_keeps_its_reason() {
    let app = spawn_app().await;
    answer_for(&app, "+15551230001", success("conv_ok_1")).await;
    answer_for(&app, "+15551230002", ResponseTemplate::new(500)).await;

    let response = app
        .post_batch(&batch(
            "1700000200",
            vec![driver(1, "+15551230001"), driver(2, "+15551230002")],
        ))
        .await;

    assert_eq!(response.status().as_u16(), 207);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["calls"][0]["status"], "in_progress");
    assert_eq!(body["calls"][1]["status"], "failed");
    assert!(
        body["calls"][1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("500"))
    );
    let failed: Value = app
        .get_authed("/calls/EL_2_1700000200")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["failure_reason"]
            .as_str()
            .is_some_and(|r| r.contains("500"))
    );
    assert!(failed["call_end_time"].is_string());
}

#[tokio::test]
async fn all_failed_is_502_and_every_call_is_failed() {
    let app = spawn_app().await;
    Mock::given(method("POST"))
        .and(path(OUTBOUND))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"success": false, "message": "Agent is not allowed to override the prompt", "conversation_id": null, "callSid": null})))
        .expect(2)
        .mount(&app.elevenlabs)
        .await;

    let response = app
        .post_batch(&batch(
            "1700000300",
            vec![driver(1, "+15551230001"), driver(2, "+15551230002")],
        ))
        .await;

    assert_eq!(response.status().as_u16(), 502);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["status"], "error");
    assert!(
        body["details"]
            .as_str()
            .is_some_and(|d| d.contains("override"))
    );
    assert_eq!(body["calls"].as_array().map(Vec::len), Some(2));
    let statuses = app
        .db
        .strings("SELECT status AS value FROM calls ORDER BY id")
        .await;
    assert_eq!(statuses, ["failed", "failed"]);
}

#[tokio::test]
async fn an_elevenlabs_that_hangs_fails_the_call_with_a_timeout() {
    let app = spawn_app_with(|s| {
        if let calls_server::config::TelephonySettings::ElevenLabs { timeout, .. } =
            &mut s.telephony
        {
            *timeout = Duration::from_millis(300);
        }
    })
    .await;
    Mock::given(method("POST"))
        .and(path(OUTBOUND))
        .respond_with(success("conv_late").set_delay(Duration::from_secs(3)))
        .expect(1)
        .mount(&app.elevenlabs)
        .await;

    let response = app
        .post_batch(&batch("1700000400", vec![driver(1, "+15551230001")]))
        .await;

    assert_eq!(response.status().as_u16(), 502);
    let call: Value = app
        .get_authed("/calls/EL_1_1700000400")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(call["status"], "failed");
    assert!(
        call["failure_reason"]
            .as_str()
            .is_some_and(|r| r.contains("did not answer")),
        "{call}"
    );
}

#[tokio::test]
async fn a_retried_batch_is_409_and_nobody_is_dialed_twice() {
    let app = spawn_app().await;
    for i in 1..=2 {
        Mock::given(method("POST"))
            .and(path(OUTBOUND))
            .and(body_partial_json(json!({"conversation_initiation_client_data": {"dynamic_variables": {"call_sid": format!("EL_{i}_1700000500")}}})))
            .respond_with(success(&format!("conv_retry_{i}")))
            .expect(1)
            .mount(&app.elevenlabs)
            .await;
    }
    let request = batch(
        "1700000500",
        vec![driver(1, "+15551230001"), driver(2, "+15551230002")],
    );

    let first = app.post_batch(&request).await;
    let second = app.post_batch(&request).await;

    assert_eq!(first.status().as_u16(), 200);
    let message = assert_envelope(second, 409).await;
    assert!(message.contains("already exists"), "{message}");
    assert_eq!(app.calls_count().await, 2);
}

#[tokio::test]
async fn invalid_batches_are_400_write_nothing_and_dial_nobody() {
    let app = spawn_app().await;
    expect_no_dials(&app).await;
    let mut missing_name = driver(1, "+15551230001");
    missing_name
        .as_object_mut()
        .expect("object")
        .remove("driverName");
    let mut string_id = driver(1, "+15551230001");
    string_id["driverId"] = json!("one");
    let mut no_violations = driver(1, "+15551230001");
    no_violations["violations"]["violationDetails"] = json!([]);
    let cases = vec![
        ("no drivers", batch("1700000600", vec![])),
        (
            "letters in phone",
            batch("1700000600", vec![driver(1, "+1555CALLNOW")]),
        ),
        (
            "too short phone",
            batch("1700000600", vec![driver(1, "123")]),
        ),
        (
            "too long phone",
            batch("1700000600", vec![driver(1, "+15551234567890123")]),
        ),
        (
            "driver twice",
            batch(
                "1700000600",
                vec![driver(1, "+15551230001"), driver(1, "+15551230002")],
            ),
        ),
        (
            "missing driverName",
            batch("1700000600", vec![missing_name]),
        ),
        ("string driverId", batch("1700000600", vec![string_id])),
        ("no violations", batch("1700000600", vec![no_violations])),
        (
            "missing timestamp",
            json!({"callType": "violation", "drivers": [driver(1, "+15551230001")]}),
        ),
        (
            "drivers not an array",
            json!({"callType": "violation", "timestamp": "1", "drivers": {}}),
        ),
        (
            "one bad among good",
            batch(
                "1700000600",
                vec![driver(1, "+15551230001"), driver(2, "nope")],
            ),
        ),
    ];

    for (what, body) in cases {
        let response = app.post_batch(&body).await;
        assert_eq!(response.status().as_u16(), 400, "{what}");
        assert_envelope(response, 400).await;
    }
    let malformed = app
        .client
        .post(app.url("/driver_data/call-elevenlabs"))
        .bearer_auth(API_TOKEN)
        .header("Content-Type", "application/json")
        .body("{\"drivers\": [")
        .send()
        .await
        .expect("sent");
    assert_envelope(malformed, 400).await;
    assert_eq!(app.calls_count().await, 0);
}

#[tokio::test]
async fn the_batch_api_requires_the_api_token() {
    let app = spawn_app().await;
    expect_no_dials(&app).await;

    let response = app
        .client
        .post(app.url("/driver_data/call-elevenlabs"))
        .json(&batch("1700000700", vec![driver(1, "+15551230001")]))
        .send()
        .await
        .expect("sent");

    assert_envelope(response, 401).await;
    assert_eq!(app.calls_count().await, 0);
}

#[tokio::test]
async fn a_turn_for_a_failed_call_is_400() {
    let app = spawn_app().await;
    Mock::given(method("POST"))
        .and(path(OUTBOUND))
        .respond_with(ResponseTemplate::new(503))
        .mount(&app.elevenlabs)
        .await;
    let response = app
        .post_batch(&batch("1700000800", vec![driver(1, "+15551230001")]))
        .await;
    assert_eq!(response.status().as_u16(), 502);

    let turn = app
        .post_transcription(&turn_body(
            "EL_1_1700000800",
            "agent",
            "Hello?",
            "2024-11-21T10:30:00Z",
        ))
        .await;

    let message = assert_envelope(turn, 400).await;
    assert_eq!(
        message,
        "Call record not found or incomplete for call_sid: EL_1_1700000800"
    );
}

#[tokio::test]
async fn calls_placed_are_counted_by_outcome() {
    let app = spawn_app().await;
    answer_for(&app, "+15551230001", success("conv_m1")).await;
    answer_for(
        &app,
        "+15551230002",
        ResponseTemplate::new(429)
            .set_body_json(json!({"detail": {"status": "system_busy", "message": "busy"}})),
    )
    .await;

    app.post_batch(&batch(
        "1700000900",
        vec![driver(1, "+15551230001"), driver(2, "+15551230002")],
    ))
    .await;

    let m = &app.state.metrics;
    let placed = |outcome| {
        m.calls_placed
            .get_or_create(&OutcomeLabel { outcome })
            .get()
    };
    assert_eq!(placed("placed"), 1);
    assert_eq!(placed("rate_limited"), 1);
    let text = app.get("/metrics").await.text().await.expect("text");
    assert!(
        text.contains("elevenlabs_request_duration_seconds_count 2"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_identical_batches_dial_each_driver_once() {
    let app = spawn_app().await;
    Mock::given(method("POST"))
        .and(path(OUTBOUND))
        .respond_with(success("conv_race").set_delay(Duration::from_millis(100)))
        .expect(1)
        .mount(&app.elevenlabs)
        .await;
    let request = batch("1700001000", vec![driver(1, "+15551230001")]);

    let responses = futures_util::future::join_all((0..4).map(|_| app.post_batch(&request))).await;

    let mut statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409, 409, 409]);
    assert_eq!(app.calls_count().await, 1);
}

#[tokio::test]
async fn a_numeric_timestamp_forms_the_same_call_sid_as_its_string() {
    let app = spawn_app().await;
    answer_for(&app, "+15551230001", success("conv_numeric")).await;
    let mut request = batch("ignored", vec![driver(7, "+15551230001")]);
    request["timestamp"] = json!(1700001100);

    let response = app.post_batch(&request).await;

    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["call_sid"], "EL_7_1700001100");
    assert_eq!(body["timestamp"], "1700001100");
}

#[tokio::test]
async fn a_timestamp_with_a_space_forms_a_call_sid_that_takes_turns_and_reads() {
    let app = spawn_app().await;
    answer_for(&app, "+15551230001", success("conv_spaced")).await;

    let response = app
        .post_batch(&batch(
            "2024-11-21 10:00:00",
            vec![driver(7, "+15551230001")],
        ))
        .await;

    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["call_sid"], "EL_7_2024-11-21 10:00:00");
    let turn = app
        .post_transcription(&turn_body(
            "EL_7_2024-11-21 10:00:00",
            "agent",
            "Hello?",
            "2024-11-21T10:30:00Z",
        ))
        .await;
    assert_eq!(turn.status().as_u16(), 201);
    let call: Value = app
        .get_authed("/calls/EL_7_2024-11-21%2010:00:00")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(call["call_sid"], "EL_7_2024-11-21 10:00:00");
    assert_eq!(call["conversation_id"], "conv_spaced");
}

#[tokio::test]
async fn a_provider_error_repeating_the_number_in_any_form_is_masked_everywhere() {
    let app = spawn_app().await;
    answer_for(
        &app,
        "+15551230001",
        ResponseTemplate::new(400).set_body_json(json!({"detail": {
            "status": "invalid_number",
            "message": "cannot reach 15551230001 (tried (555) 123-0001 and 555.123.0001)"
        }})),
    )
    .await;

    let response = app
        .post_batch(&batch("1700001200", vec![driver(8, "+15551230001")]))
        .await;

    assert_eq!(response.status().as_u16(), 502);
    let body: Value = response.json().await.expect("json");
    let call: Value = app
        .get_authed("/calls/EL_8_1700001200")
        .await
        .json()
        .await
        .expect("json");
    let reason = call["failure_reason"].as_str().unwrap_or_default();
    for text in [
        body["details"].as_str().unwrap_or_default(),
        body["calls"][0]["error"].as_str().unwrap_or_default(),
        reason,
    ] {
        assert!(text.contains("*******0001"), "{text}");
        assert!(text.contains("(***) ***-0001"), "{text}");
        for leak in ["5551230001", "555) 123", "555.123"] {
            assert!(!text.contains(leak), "{leak} in {text}");
        }
    }
}
