//! SPEC "Batches: attempts, call windows, re-dials, pre-dial check", sentence by sentence,
//! against the real database and a fake ElevenLabs (wiremock) that counts every dial.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use calls_server::config::{PredialSettings, Settings};
use secrecy::SecretString;

use crate::helpers::{
    API_TOKEN, TestApp, assert_envelope, now, sign, spawn_app_with, start_instance,
};

const OUTBOUND: &str = "/v1/convai/twilio/outbound-call";
const POLL: Duration = Duration::from_millis(50);

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

fn with_schedule(mut body: Value, schedule: Value) -> Value {
    body["schedule"] = schedule;
    body
}

fn success(conversation_id: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "success": true,
        "message": "Call initiated successfully",
        "conversation_id": conversation_id,
        "callSid": "CA0123456789abcdef0123456789abcdef"
    }))
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).expect("format")
}

/// Equal to the microsecond (PostgreSQL's precision).
fn assert_close(a: OffsetDateTime, b: OffsetDateTime, what: &str) {
    assert!(
        (a - b).abs() < time::Duration::milliseconds(1),
        "{what}: {a} vs {b}"
    );
}

fn parse_time(v: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(v.as_str().expect("a time"), &Rfc3339).expect("RFC 3339")
}

/// The dialer on, polling fast.
fn dialing(settings: &mut Settings) {
    settings.dialer_poll = Some(POLL);
}

/// A window of one hour that starts `hours_ahead` hours from now (UTC wall time).
fn window_later(hours_ahead: i64) -> (String, OffsetDateTime) {
    let start = OffsetDateTime::now_utc() + time::Duration::hours(hours_ahead);
    let start = start
        .replace_second(0)
        .and_then(|t| t.replace_nanosecond(0))
        .expect("whole minute");
    let end = start + time::Duration::hours(1);
    (
        format!(
            "{:02}:{:02}-{:02}:{:02}",
            start.hour(),
            start.minute(),
            end.hour(),
            end.minute()
        ),
        start,
    )
}

/// The call_sid of every outbound-call request ElevenLabs received, in arrival order.
async fn dialed(server: &MockServer) -> Vec<String> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path() == OUTBOUND)
        .filter_map(|r| {
            let body: Value = serde_json::from_slice(&r.body).ok()?;
            body["conversation_initiation_client_data"]["dynamic_variables"]["call_sid"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// What the fake ElevenLabs answers one attempt.
#[derive(Clone)]
enum Answer {
    /// Placed, with a conversation_id of its own.
    Placed,
    With(ResponseTemplate),
}

static CONVERSATIONS: AtomicUsize = AtomicUsize::new(0);

fn placed() -> ResponseTemplate {
    let n = CONVERSATIONS.fetch_add(1, Ordering::Relaxed);
    success(&format!("conv_fresh_{n}"))
}

/// Answers each dial by its call_sid's attempt: the n-th answer for attempt n (the last
/// one for any later attempt), so a test says "fail once, then answer".
struct ByAttempt(Vec<Answer>);

impl Respond for ByAttempt {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let sid = body["conversation_initiation_client_data"]["dynamic_variables"]["call_sid"]
            .as_str()
            .unwrap_or_default();
        let attempt = sid
            .rsplit_once('#')
            .and_then(|(_, n)| n.parse::<usize>().ok())
            .unwrap_or(1);
        match &self.0[(attempt - 1).min(self.0.len() - 1)] {
            Answer::Placed => placed(),
            Answer::With(template) => template.clone(),
        }
    }
}

/// Successes with a fresh conversation_id per request.
struct FreshConversation;

impl Respond for FreshConversation {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        placed()
    }
}

impl TestApp {
    async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(API_TOKEN)
            .json(body)
            .send()
            .await
            .expect("sent")
    }

    async fn post_empty(&self, path: &str) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .expect("sent")
    }

    async fn batch_view(&self, batch_id: &str) -> Value {
        let response = self.get_authed(&format!("/batches/{batch_id}")).await;
        assert_eq!(response.status().as_u16(), 200);
        response.json().await.expect("json")
    }

    /// Polls the batch view until `done` holds (at most `within`).
    async fn wait_for(
        &self,
        batch_id: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let started = Instant::now();
        loop {
            let view = self.batch_view(batch_id).await;
            if done(&view) {
                return view;
            }
            assert!(
                started.elapsed() < within,
                "batch not as expected within {within:?}: {view:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn count(&self, table: &str) -> i64 {
        self.db
            .strings(&format!("SELECT count(*)::text AS value FROM {table}"))
            .await
            .first()
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1)
    }

    async fn post_call_completed(&self, call_sid: &str, conversation_id: &str) -> u16 {
        let event = json!({"type": "post_call_transcription", "event_timestamp": now(), "data": {
            "agent_id": "agent_test", "conversation_id": conversation_id, "status": "done",
            "transcript": [{"role": "agent", "message": "Hi", "time_in_call_secs": 0}],
            "metadata": {"start_time_unix_secs": now() - 60, "call_duration_secs": 30},
            "conversation_initiation_client_data": {"dynamic_variables": {"call_sid": call_sid}}
        }});
        let body = serde_json::to_vec(&event).expect("json");
        self.client
            .post(self.url("/webhooks/elevenlabs/post-call"))
            .header("Content-Type", "application/json")
            .header("ElevenLabs-Signature", sign(&body, now()))
            .body(body)
            .send()
            .await
            .expect("sent")
            .status()
            .as_u16()
    }
}

fn state_of(view: &Value, driver_id: i64) -> String {
    recipient(view, driver_id)["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn recipient(view: &Value, driver_id: i64) -> &Value {
    view["drivers"]
        .as_array()
        .and_then(|d| d.iter().find(|r| r["driverId"] == driver_id))
        .unwrap_or_else(|| panic!("driver {driver_id} in {view:#}"))
}

async fn expect_no_dials(app: &TestApp) {
    Mock::given(method("POST"))
        .and(path(OUTBOUND))
        .respond_with(success("never"))
        .expect(0)
        .mount(&app.elevenlabs)
        .await;
}

// ---- POST /batches ----

/// "Answer: 202 with Location: /batches/{batch_id} and the batch view. All recipients and
/// their first due times are committed before the answer; nothing is dialed inside the
/// request."
#[tokio::test]
async fn post_batches_answers_202_with_location_and_the_view_and_dials_nobody_in_the_request() {
    // The dialer is off: whatever is dialed would be dialed by the request itself.
    let app = spawn_app_with(|_| {}).await;
    expect_no_dials(&app).await;
    let mut chicago = driver(2, "(555) 123-0002");
    chicago["timeZone"] = json!("America/Chicago");
    let body = batch("1732183200", vec![driver(1, "+15551230001"), chicago]);

    let before = OffsetDateTime::now_utc();
    let response = app.post_json("/batches", &body).await;

    assert_eq!(response.status().as_u16(), 202);
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .expect("Location");
    let view: Value = response.json().await.expect("json");
    let batch_id = view["batch_id"].as_str().expect("batch_id");
    assert_eq!(location, format!("/batches/{batch_id}"));
    assert_eq!(view["call_type"], "violation");
    assert_eq!(view["timestamp"], "1732183200");
    assert_eq!(view["status"], "active");
    assert_eq!(
        view["counts"],
        json!({"scheduled": 2, "dialing": 0, "in_call": 0, "completed": 0, "failed": 0, "cancelled": 0})
    );
    let first = &view["drivers"][0];
    assert_eq!(first["driverId"], 1);
    assert_eq!(first["driverName"], "Driver 1");
    assert_eq!(first["phoneNumber"], "+15551230001");
    assert_eq!(first["time_zone"], "UTC", "DEFAULT_TIME_ZONE");
    assert_eq!(first["state"], "scheduled");
    assert!(parse_time(&first["next_attempt_at"]) >= before - time::Duration::seconds(1));
    assert_eq!(first["failure_reason"], Value::Null);
    assert_eq!(first["last_check"], Value::Null);
    assert_eq!(first["attempts"], json!([]));
    assert_eq!(view["drivers"][1]["time_zone"], "America/Chicago");
    assert_eq!(view["drivers"][1]["phoneNumber"], "+15551230002");
    // Committed: readable at its Location, and no Call written (nobody dialed).
    assert_eq!(app.batch_view(batch_id).await, view);
    assert_eq!(app.count("calls").await, 0);
}

/// "An unknown time zone, a malformed window or time, a window whose start equals its end,
/// bad delays, or anything the batch-call endpoint refuses: 400, nothing written."
#[tokio::test]
async fn every_malformed_field_is_400_and_nothing_is_written() {
    let app = spawn_app_with(dialing).await;
    expect_no_dials(&app).await;
    let base = || batch("1732183300", vec![driver(1, "+15551230001")]);
    let with_driver = |field: &str, value: Value| {
        let mut b = base();
        b["drivers"][0][field] = value;
        b
    };
    let far = rfc3339(OffsetDateTime::now_utc() + time::Duration::days(401));
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "unknown driver time zone",
            with_driver("timeZone", json!("Mars/Olympus")),
            "drivers[0].timeZone",
        ),
        (
            "unknown schedule time zone",
            with_schedule(base(), json!({"timeZone": "Europe/Atlantis"})),
            "schedule.timeZone",
        ),
        (
            "malformed window",
            with_schedule(base(), json!({"window": "8am-6pm"})),
            "schedule.window",
        ),
        (
            "empty window",
            with_schedule(base(), json!({"window": ""})),
            "schedule.window",
        ),
        (
            "start equals end",
            with_schedule(base(), json!({"window": "09:00-09:00"})),
            "schedule.window",
        ),
        (
            "bad time in window",
            with_schedule(base(), json!({"window": "25:00-06:00"})),
            "schedule.window",
        ),
        (
            "negative delay",
            with_schedule(base(), json!({"redialDelaysSecs": [-1]})),
            "schedule.redialDelaysSecs",
        ),
        (
            "delay over a week",
            with_schedule(base(), json!({"redialDelaysSecs": [604_801]})),
            "schedule.redialDelaysSecs",
        ),
        (
            "eleven delays",
            with_schedule(base(), json!({"redialDelaysSecs": vec![1; 11]})),
            "schedule.redialDelaysSecs",
        ),
        (
            "fractional delay",
            with_schedule(base(), json!({"redialDelaysSecs": [1.5]})),
            "redialDelaysSecs",
        ),
        (
            "notBefore without offset",
            with_driver("notBefore", json!("2024-11-21T16:00:00")),
            "drivers[0].notBefore",
        ),
        (
            "notBefore not a time",
            with_schedule(base(), json!({"notBefore": "tomorrow"})),
            "schedule.notBefore",
        ),
        (
            "notBefore over 400 days ahead",
            with_driver("notBefore", json!(far)),
            "drivers[0].notBefore",
        ),
        (
            "schedule notBefore over 400 days ahead",
            with_schedule(base(), json!({"notBefore": far})),
            "schedule.notBefore",
        ),
        (
            "bad phone",
            batch("1732183300", vec![driver(1, "call me")]),
            "drivers[0].phoneNumber",
        ),
        ("no drivers", batch("1732183300", vec![]), "drivers"),
        (
            "driver twice",
            batch(
                "1732183300",
                vec![driver(1, "+15551230001"), driver(1, "+15551230002")],
            ),
            "drivers[1].driverId",
        ),
        (
            "NUL in a name",
            with_driver("driverName", json!("A\u{0}B")),
            "drivers[0].driverName",
        ),
    ];
    for (what, body, field) in cases {
        for endpoint in ["/batches", "/driver_data/call-elevenlabs"] {
            let response = app.post_json(endpoint, &body).await;
            assert_eq!(response.status().as_u16(), 400, "{what} on {endpoint}");
            let envelope: Value = response.json().await.expect("json");
            assert_eq!(envelope["status"], "error");
            let details = envelope["details"].as_str().unwrap_or_default();
            assert!(details.contains(field), "{what}: {field} in {details}");
        }
    }
    // Every problem at once, each with its path.
    let mut d = driver(1, "+15551230001");
    d["timeZone"] = json!("Nowhere/Else");
    let all = with_schedule(
        batch("1732183300", vec![d, driver(2, "nope")]),
        json!({"window": "9-5", "redialDelaysSecs": [-5]}),
    );
    let details: Value = app
        .post_json("/batches", &all)
        .await
        .json()
        .await
        .expect("json");
    let details = details["details"].as_str().unwrap_or_default().to_owned();
    for field in [
        "drivers[0].timeZone",
        "drivers[1].phoneNumber",
        "schedule.window",
        "schedule.redialDelaysSecs",
    ] {
        assert!(details.contains(field), "{field} in {details}");
    }
    assert_eq!(app.count("batches").await, 0);
    assert_eq!(app.count("batch_recipients").await, 0);
    assert_eq!(app.count("calls").await, 0);
}

/// "Attempt 1's call_sid already taken (by an earlier batch or call): 409, nothing
/// written." and "A second identical batch → 409, nobody dialed twice."
#[tokio::test]
async fn a_second_identical_batch_is_409_and_nobody_is_dialed_twice() {
    let app = spawn_app_with(dialing).await;
    Mock::given(method("POST"))
        .and(path(OUTBOUND))
        .respond_with(FreshConversation)
        .mount(&app.elevenlabs)
        .await;
    let body = batch(
        "1732183400",
        vec![driver(1, "+15551230001"), driver(2, "+15551230002")],
    );

    let first = app.post_json("/batches", &body).await;
    let second = app.post_json("/batches", &body).await;
    let via_sync = app.post_json("/driver_data/call-elevenlabs", &body).await;

    assert_eq!(first.status().as_u16(), 202);
    let message = assert_envelope(second, 409).await;
    assert!(message.contains("already exists"), "{message}");
    assert_envelope(via_sync, 409).await;
    let view: Value = first.json().await.expect("json");
    let id = view["batch_id"].as_str().expect("id");
    app.wait_for(id, Duration::from_secs(10), |v| v["counts"]["in_call"] == 2)
        .await;
    // An earlier Call with attempt 1's call_sid also blocks a batch.
    app.create_call("EL_9_1732183400", None).await;
    let taken = app
        .post_json(
            "/batches",
            &batch("1732183400", vec![driver(9, "+15551230009")]),
        )
        .await;
    assert_envelope(taken, 409).await;
    tokio::time::sleep(POLL * 6).await;
    let mut sids = dialed(&app.elevenlabs).await;
    sids.sort();
    assert_eq!(sids, ["EL_1_1732183400", "EL_2_1732183400"]);
    assert_eq!(app.count("batches").await, 1);
}

// ---- The dialer ----

/// "Every serve instance runs a dialer … for due recipients, claims each …, writes the
/// attempt's Call (in_progress, conversation_id NULL) and commits it before the
/// outbound-call request."
#[tokio::test]
async fn the_dialer_dials_due_recipients_after_writing_their_calls() {
    let app = spawn_app_with(dialing).await;
    Mock::given(method("POST"))
        .and(path(OUTBOUND))
        .respond_with(FreshConversation)
        .mount(&app.elevenlabs)
        .await;
    let response = app
        .post_json(
            "/batches",
            &batch(
                "1732183500",
                vec![driver(1, "+15551230001"), driver(2, "+15551230002")],
            ),
        )
        .await;
    let id = response.json::<Value>().await.expect("json")["batch_id"]
        .as_str()
        .expect("id")
        .to_owned();

    let view = app
        .wait_for(&id, Duration::from_secs(10), |v| {
            v["counts"]["in_call"] == 2
        })
        .await;

    for driver_id in [1, 2] {
        let r = recipient(&view, driver_id);
        assert_eq!(r["state"], "in_call");
        assert_eq!(r["next_attempt_at"], Value::Null);
        let attempts = r["attempts"].as_array().expect("attempts");
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0]["attempt"], 1);
        assert_eq!(
            attempts[0]["call_sid"],
            format!("EL_{driver_id}_1732183500")
        );
        assert_eq!(attempts[0]["status"], "in_progress");
        let call: Value = app
            .get_authed(&format!("/calls/EL_{driver_id}_1732183500"))
            .await
            .json()
            .await
            .expect("json");
        assert!(
            call["conversation_id"]
                .as_str()
                .is_some_and(|c| c.starts_with("conv_fresh_"))
        );
        assert_eq!(call["driver_id"], driver_id);
    }
    assert_eq!(dialed(&app.elevenlabs).await.len(), 2);
    let metrics = app.get("/metrics").await.text().await.expect("text");
    assert!(
        metrics.contains("dial_attempts_total{result=\"placed\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("dialer_lag_seconds_count 2"), "{metrics}");
    assert!(
        metrics.contains("batch_recipients{state=\"in_call\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("batch_recipients{state=\"scheduled\"} 0"),
        "{metrics}"
    );
}

/// "An attempt's Call becomes failed: if the failure is re-dialable and attempts remain,
/// the recipient is scheduled for the next attempt" — busy (initiation failure), 5xx, 429,
/// 408 and a timeout, each re-dialed after the batch's delay as `…#2`.
#[tokio::test]
async fn re_dialable_failures_are_re_dialed_after_the_delay() {
    let app = spawn_app_with(|s| {
        dialing(s);
        if let calls_server::config::TelephonySettings::ElevenLabs { timeout, .. } =
            &mut s.telephony
        {
            *timeout = Duration::from_millis(500);
        }
    })
    .await;
    let first_answers = [
        ("+15551230001", ResponseTemplate::new(503)),
        (
            "+15551230002",
            ResponseTemplate::new(429)
                .set_body_json(json!({"detail": {"status": "system_busy", "message": "busy"}})),
        ),
        ("+15551230003", ResponseTemplate::new(408)),
        (
            "+15551230004",
            success("never_read").set_delay(Duration::from_secs(2)),
        ),
        (
            "+15551230005",
            ResponseTemplate::new(200).set_body_json(json!({"success": false, "message": "busy"})),
        ),
    ];
    for (phone, first) in first_answers {
        Mock::given(method("POST"))
            .and(path(OUTBOUND))
            .and(wiremock::matchers::body_partial_json(
                json!({"to_number": phone}),
            ))
            .respond_with(ByAttempt(vec![Answer::With(first), Answer::Placed]))
            .mount(&app.elevenlabs)
            .await;
    }
    let drivers = (1..=5)
        .map(|i| driver(i, &format!("+1555123000{i}")))
        .collect();
    let body = with_schedule(
        batch("1732183600", drivers),
        json!({"redialDelaysSecs": [1]}),
    );
    let id = app
        .post_json("/batches", &body)
        .await
        .json::<Value>()
        .await
        .expect("json")["batch_id"]
        .as_str()
        .expect("id")
        .to_owned();

    // After the first failures: scheduled again, one second after the failure.
    let view = app
        .wait_for(&id, Duration::from_secs(10), |v| {
            (1..=5).all(|d| recipient(v, d)["attempts"][0]["status"] == "failed")
        })
        .await;
    for d in 1..=5 {
        let r = recipient(&view, d);
        if r["state"] == "scheduled" {
            let failed_at = parse_time(&r["attempts"][0]["call_start_time"]);
            assert!(
                parse_time(&r["next_attempt_at"]) >= failed_at + time::Duration::seconds(1),
                "{r:#}"
            );
        }
    }
    // Then attempt 2 is placed for each.
    let view = app
        .wait_for(&id, Duration::from_secs(15), |v| {
            v["counts"]["in_call"] == 5
        })
        .await;
    for d in 1..=5 {
        let attempts = recipient(&view, d)["attempts"]
            .as_array()
            .expect("attempts")
            .clone();
        assert_eq!(attempts.len(), 2, "{attempts:?}");
        assert_eq!(attempts[1]["call_sid"], format!("EL_{d}_1732183600#2"));
        assert_eq!(attempts[1]["attempt"], 2);
        assert!(
            attempts[0]["failure_reason"]
                .as_str()
                .is_some_and(|r| !r.is_empty())
        );
    }
    let mut per_sid: BTreeMap<String, usize> = BTreeMap::new();
    for sid in dialed(&app.elevenlabs).await {
        *per_sid.entry(sid).or_default() += 1;
    }
    assert_eq!(per_sid.len(), 10);
    assert!(
        per_sid.values().all(|n| *n == 1),
        "each attempt dialed once: {per_sid:?}"
    );
}

/// "Not re-dialable: an outbound-call answer 4xx other than 408 and 429 … otherwise it is
/// failed with the reason."
#[tokio::test]
async fn a_4xx_rejection_is_never_re_dialed() {
    let app = spawn_app_with(dialing).await;
    Mock::given(method("POST"))
        .and(path(OUTBOUND))
        .respond_with(ResponseTemplate::new(422).set_body_json(
            json!({"detail": {"status": "invalid_number", "message": "bad number"}}),
        ))
        .mount(&app.elevenlabs)
        .await;
    let body = with_schedule(
        batch("1732183700", vec![driver(1, "+15551230001")]),
        json!({"redialDelaysSecs": [0, 0]}),
    );
    let id = app
        .post_json("/batches", &body)
        .await
        .json::<Value>()
        .await
        .expect("json")["batch_id"]
        .as_str()
        .expect("id")
        .to_owned();

    let view = app
        .wait_for(&id, Duration::from_secs(10), |v| v["status"] == "done")
        .await;
    tokio::time::sleep(POLL * 6).await;

    let r = recipient(&view, 1);
    assert_eq!(r["state"], "failed");
    assert!(
        r["failure_reason"]
            .as_str()
            .is_some_and(|f| f.contains("422")),
        "{r:#}"
    );
    assert_eq!(r["attempts"].as_array().map(Vec::len), Some(1));
    assert_eq!(dialed(&app.elevenlabs).await, ["EL_1_1732183700"]);
    assert_eq!(view["counts"]["failed"], 1);
    let metrics = app.get("/metrics").await.text().await.expect("text");
    assert!(
        metrics.contains("dial_attempts_total{result=\"rejected\"} 1"),
        "{metrics}"
    );
}

/// "An attempt's Call becomes completed (post-call transcription event …): the recipient is
/// completed, whatever state it was in, and a scheduled re-dial is dropped (an attempt whose
/// request timed out may still have reached the driver)."
#[tokio::test]
async fn a_completed_attempt_completes_the_recipient_and_drops_the_scheduled_re_dial() {
    let app = spawn_app_with(|s| {
        dialing(s);
        if let calls_server::config::TelephonySettings::ElevenLabs { timeout, .. } =
            &mut s.telephony
        {
            *timeout = Duration::from_millis(300);
        }
    })
    .await;
    // The request times out on our side, but the call happens.
    Mock::given(method("POST"))
        .and(path(OUTBOUND))
        .respond_with(success("conv_late").set_delay(Duration::from_secs(2)))
        .mount(&app.elevenlabs)
        .await;
    let body = with_schedule(
        batch("1732183800", vec![driver(1, "+15551230001")]),
        json!({"redialDelaysSecs": [3]}),
    );
    let id = app
        .post_json("/batches", &body)
        .await
        .json::<Value>()
        .await
        .expect("json")["batch_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let view = app
        .wait_for(&id, Duration::from_secs(10), |v| {
            state_of(v, 1) == "scheduled" && v["drivers"][0]["attempts"][0]["status"] == "failed"
        })
        .await;
    assert!(recipient(&view, 1)["next_attempt_at"].is_string());

    assert_eq!(
        app.post_call_completed("EL_1_1732183800", "conv_late")
            .await,
        200
    );

    // Right after the webhook's answer, not only after a sweep.
    let view = app.batch_view(&id).await;
    let r = recipient(&view, 1);
    assert_eq!(r["state"], "completed", "{view:#}");
    assert_eq!(r["next_attempt_at"], Value::Null);
    assert_eq!(r["attempts"][0]["status"], "completed");
    assert_eq!(view["status"], "done");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        dialed(&app.elevenlabs).await,
        ["EL_1_1732183800"],
        "the re-dial was dropped"
    );
}

/// "A recipient not completed DIAL_EXPIRY_SECS after its first attempt was due is never
/// dialed again: failed, reason expired — … at once when its next due time would fall past
/// it."
#[tokio::test]
async fn a_re_dial_that_would_fall_past_the_expiry_fails_the_recipient_as_expired() {
    let app = spawn_app_with(|s| {
        dialing(s);
        // Long enough for a loaded machine to claim the first attempt in time.
        s.batch_defaults.expiry = Duration::from_secs(15);
    })
    .await;
    Mock::given(method("POST"))
        .and(path(OUTBOUND))
        .respond_with(ResponseTemplate::new(503))
        .mount(&app.elevenlabs)
        .await;
    let body = with_schedule(
        batch("1732183900", vec![driver(1, "+15551230001")]),
        json!({"redialDelaysSecs": [60]}),
    );
    let id = app
        .post_json("/batches", &body)
        .await
        .json::<Value>()
        .await
        .expect("json")["batch_id"]
        .as_str()
        .expect("id")
        .to_owned();

    let view = app
        .wait_for(&id, Duration::from_secs(4), |v| state_of(v, 1) == "failed")
        .await;

    assert_eq!(recipient(&view, 1)["failure_reason"], "expired");
    assert_eq!(dialed(&app.elevenlabs).await.len(), 1);
}

// ---- Call windows ----

/// "The first attempt is due at the earliest instant ≥ max(now, the schedule's notBefore,
/// the driver's notBefore) that lies inside the recipient's window."
#[tokio::test]
async fn a_driver_outside_the_window_or_before_not_before_waits_and_is_not_dialed() {
    let app = spawn_app_with(dialing).await;
    expect_no_dials(&app).await;
    let (window, opens) = window_later(2);
    let mut resting = driver(2, "+15551230002");
    let rest_ends = OffsetDateTime::now_utc() + time::Duration::hours(5);
    resting["notBefore"] = json!(rfc3339(rest_ends));
    let mut tokyo = driver(3, "+15551230003");
    tokyo["timeZone"] = json!("Asia/Tokyo");
    let body = with_schedule(
        batch(
            "1732184000",
            vec![driver(1, "+15551230001"), resting, tokyo],
        ),
        json!({"window": window}),
    );

    let view: Value = app
        .post_json("/batches", &body)
        .await
        .json()
        .await
        .expect("json");
    let id = view["batch_id"].as_str().expect("id");
    tokio::time::sleep(POLL * 6).await;
    let view = app.batch_view(id).await;

    assert_eq!(parse_time(&recipient(&view, 1)["next_attempt_at"]), opens);
    // notBefore (5 h) is past today's window (2–3 h ahead): the next day's opening.
    assert_eq!(
        parse_time(&recipient(&view, 2)["next_attempt_at"]),
        opens + time::Duration::days(1)
    );
    // The same wall-clock window in Tokyo (UTC+9, no DST) opens 9 hours earlier in UTC.
    let tokyo_opens = parse_time(&recipient(&view, 3)["next_attempt_at"]);
    let expected = opens - time::Duration::hours(9);
    let expected = if expected < OffsetDateTime::now_utc() {
        expected + time::Duration::days(1)
    } else {
        expected
    };
    assert_eq!(tokyo_opens, expected);
    assert_eq!(view["counts"]["scheduled"], 3);
}

// ---- Pre-dial check ----

async fn predial_app(answer: ResponseTemplate) -> (TestApp, MockServer) {
    let dispatcher = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/predial"))
        .respond_with(answer)
        .mount(&dispatcher)
        .await;
    let url = format!("{}/predial", dispatcher.uri());
    let app = spawn_app_with(|s| {
        dialing(s);
        s.predial = Some(PredialSettings {
            url,
            token: Some(SecretString::from("predial-secret")),
            timeout: Duration::from_millis(300),
        });
    })
    .await;
    Mock::given(method("POST"))
        .and(path(OUTBOUND))
        .respond_with(FreshConversation)
        .mount(&app.elevenlabs)
        .await;
    (app, dispatcher)
}

async fn post_one(app: &TestApp, timestamp: &str) -> String {
    let response = app
        .post_json(
            "/batches",
            &batch(timestamp, vec![driver(1, "+15551230001")]),
        )
        .await;
    assert_eq!(response.status().as_u16(), 202);
    response.json::<Value>().await.expect("json")["batch_id"]
        .as_str()
        .expect("id")
        .to_owned()
}

/// "Right before each attempt the dialer POSTs {batch_id, call_sid, attempt, driverId,
/// phoneNumber} to PREDIAL_URL (Authorization: Bearer …). A 2xx {"eligible":true} → dial."
#[tokio::test]
async fn an_eligible_driver_is_dialed_after_the_check() {
    let (app, dispatcher) =
        predial_app(ResponseTemplate::new(200).set_body_json(json!({"eligible": true}))).await;
    let id = post_one(&app, "1732184100").await;

    let view = app
        .wait_for(&id, Duration::from_secs(10), |v| {
            state_of(v, 1) == "in_call"
        })
        .await;

    let check = &recipient(&view, 1)["last_check"];
    assert_eq!(check["result"], "eligible");
    assert_eq!(check["detail"], Value::Null);
    assert!(check["at"].is_string());
    let asked = dispatcher.received_requests().await.expect("recorded");
    assert_eq!(asked.len(), 1);
    assert_eq!(
        asked[0]
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer predial-secret")
    );
    let body: Value = serde_json::from_slice(&asked[0].body).expect("json");
    assert_eq!(
        body,
        json!({"batch_id": id, "call_sid": "EL_1_1732184100", "attempt": 1, "driverId": 1, "phoneNumber": "+15551230001"})
    );
    assert_eq!(dialed(&app.elevenlabs).await, ["EL_1_1732184100"]);
}

/// "{"eligible":false} (optional "retry_after_secs", default 900) → not dialed, no attempt
/// used, due again after that long."
#[tokio::test]
async fn a_driver_not_eligible_is_not_dialed_and_asked_again_later() {
    let (app, _dispatcher) = predial_app(
        ResponseTemplate::new(200)
            .set_body_json(json!({"eligible": false, "retry_after_secs": 1200})),
    )
    .await;
    let id = post_one(&app, "1732184200").await;

    let view = app
        .wait_for(&id, Duration::from_secs(10), |v| {
            recipient(v, 1)["last_check"].is_object()
        })
        .await;

    let r = recipient(&view, 1);
    assert_eq!(r["state"], "scheduled");
    assert_eq!(r["attempts"], json!([]), "no attempt used");
    assert_eq!(r["last_check"]["result"], "not_eligible");
    let asked_at = parse_time(&r["last_check"]["at"]);
    assert_close(
        parse_time(&r["next_attempt_at"]),
        asked_at + time::Duration::seconds(1200),
        "retry_after_secs",
    );
    assert!(dialed(&app.elevenlabs).await.is_empty());
    let metrics = app.get("/metrics").await.text().await.expect("text");
    assert!(
        metrics.contains("predial_checks_total{result=\"not_eligible\"} 1"),
        "{metrics}"
    );
}

/// "Anything else (timeout, non-2xx, another body …) → not dialed, no attempt used, due
/// again after 60 s: the check fails closed." and `last_check` shows it.
#[tokio::test]
async fn a_pre_dial_service_that_is_down_slow_or_garbled_fails_closed() {
    for (what, answer) in [
        ("500", ResponseTemplate::new(500)),
        (
            "slow",
            ResponseTemplate::new(200)
                .set_body_json(json!({"eligible": true}))
                .set_delay(Duration::from_secs(2)),
        ),
        (
            "garbage",
            ResponseTemplate::new(200).set_body_string("eligible"),
        ),
    ] {
        let (app, _dispatcher) = predial_app(answer).await;
        let id = post_one(&app, "1732184300").await;

        let view = app
            .wait_for(&id, Duration::from_secs(10), |v| {
                recipient(v, 1)["last_check"].is_object()
            })
            .await;

        let r = recipient(&view, 1);
        assert_eq!(r["state"], "scheduled", "{what}");
        assert_eq!(r["attempts"], json!([]), "{what}");
        assert_eq!(r["last_check"]["result"], "failed", "{what}");
        assert!(
            r["last_check"]["detail"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{what}"
        );
        let asked_at = parse_time(&r["last_check"]["at"]);
        assert_close(
            parse_time(&r["next_attempt_at"]),
            asked_at + time::Duration::seconds(60),
            what,
        );
        assert!(dialed(&app.elevenlabs).await.is_empty(), "{what}");
    }
}

// ---- Reading and cancelling ----

/// "Cancel: every scheduled recipient becomes cancelled …; answers 200 with the batch view;
/// again: 200, nothing changes." Unknown batch: 404.
#[tokio::test]
async fn cancel_stops_scheduled_recipients_and_is_idempotent() {
    let app = spawn_app_with(dialing).await;
    expect_no_dials(&app).await;
    let (window, _) = window_later(2);
    let body = with_schedule(
        batch(
            "1732184400",
            vec![driver(1, "+15551230001"), driver(2, "+15551230002")],
        ),
        json!({"window": window}),
    );
    let id = app
        .post_json("/batches", &body)
        .await
        .json::<Value>()
        .await
        .expect("json")["batch_id"]
        .as_str()
        .expect("id")
        .to_owned();

    let first = app.post_empty(&format!("/batches/{id}/cancel")).await;
    assert_eq!(first.status().as_u16(), 200);
    let first: Value = first.json().await.expect("json");
    let again = app.post_empty(&format!("/batches/{id}/cancel")).await;
    assert_eq!(again.status().as_u16(), 200);
    let again: Value = again.json().await.expect("json");

    assert_eq!(first["status"], "cancelled");
    assert_eq!(first["counts"]["cancelled"], 2);
    assert_eq!(first["counts"]["scheduled"], 0);
    for d in [1, 2] {
        assert_eq!(state_of(&first, d), "cancelled");
        assert_eq!(recipient(&first, d)["next_attempt_at"], Value::Null);
    }
    assert_eq!(again, first, "a second cancel changes nothing");
    assert_eq!(app.batch_view(&id).await, first);
    for bad in ["0193a4c2-7b1e-7d3a-9f00-1c2d3e4f5a6b", "not-a-batch"] {
        assert_envelope(app.post_empty(&format!("/batches/{bad}/cancel")).await, 404).await;
    }
}

/// "Cancel … one dialing or in_call finishes its call but is never re-dialed (cancelled if
/// that attempt fails)."
#[tokio::test]
async fn a_call_under_way_when_cancelled_finishes_and_is_not_re_dialed() {
    let app = spawn_app_with(dialing).await;
    Mock::given(method("POST"))
        .and(path(OUTBOUND))
        .respond_with(ResponseTemplate::new(503).set_delay(Duration::from_millis(800)))
        .mount(&app.elevenlabs)
        .await;
    let body = with_schedule(
        batch("1732184500", vec![driver(1, "+15551230001")]),
        json!({"redialDelaysSecs": [0]}),
    );
    let id = app
        .post_json("/batches", &body)
        .await
        .json::<Value>()
        .await
        .expect("json")["batch_id"]
        .as_str()
        .expect("id")
        .to_owned();
    app.wait_for(&id, Duration::from_secs(5), |v| state_of(v, 1) == "dialing")
        .await;

    let cancelled: Value = app
        .post_empty(&format!("/batches/{id}/cancel"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(
        state_of(&cancelled, 1),
        "dialing",
        "the call under way finishes"
    );

    let view = app
        .wait_for(&id, Duration::from_secs(5), |v| {
            state_of(v, 1) == "cancelled"
        })
        .await;
    tokio::time::sleep(POLL * 6).await;
    assert_eq!(view["status"], "cancelled");
    assert_eq!(
        dialed(&app.elevenlabs).await,
        ["EL_1_1732184500"],
        "never re-dialed"
    );
}

/// "GET /batches lists {batches:[{batch_id, created_at, status, counts}], next_cursor}
/// newest first with limit/cursor as GET /calls." "Unknown batch: 404."
#[tokio::test]
async fn batches_are_listed_newest_first_in_pages_and_unknown_ids_are_404() {
    let app = spawn_app_with(|_| {}).await;
    let mut ids = Vec::new();
    for i in 1..=3 {
        let body = batch(&format!("17321846{i:02}"), vec![driver(i, "+15551230001")]);
        ids.push(
            app.post_json("/batches", &body)
                .await
                .json::<Value>()
                .await
                .expect("json")["batch_id"]
                .as_str()
                .expect("id")
                .to_owned(),
        );
    }

    let page: Value = app
        .get_authed("/batches?limit=2")
        .await
        .json()
        .await
        .expect("json");
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let rest: Value = app
        .get_authed(&format!("/batches?cursor={cursor}"))
        .await
        .json()
        .await
        .expect("json");

    let listed: Vec<&str> = page["batches"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(rest["batches"].as_array().into_iter().flatten())
        .filter_map(|b| b["batch_id"].as_str())
        .collect();
    assert_eq!(listed, [ids[2].as_str(), ids[1].as_str(), ids[0].as_str()]);
    assert_eq!(rest["next_cursor"], Value::Null);
    let first = &page["batches"][0];
    assert_eq!(first["status"], "active");
    assert_eq!(first["counts"]["scheduled"], 1);
    assert!(first["created_at"].is_string());
    assert_eq!(first.as_object().map(|o| o.len()), Some(4), "{first}");
    for bad in [
        "limit=0",
        "limit=501",
        "limit=ten",
        "cursor=garbage",
        "status=active",
    ] {
        assert_envelope(app.get_authed(&format!("/batches?{bad}")).await, 400).await;
    }
    for bad in ["0193a4c2-7b1e-7d3a-9f00-1c2d3e4f5a6b", "nope", "1"] {
        assert_envelope(app.get_authed(&format!("/batches/{bad}")).await, 404).await;
    }
    // Bearer API_TOKEN on every batch route.
    assert_envelope(app.get("/batches").await, 401).await;
    assert_envelope(app.get(&format!("/batches/{}", ids[0])).await, 401).await;
    let unauthenticated = app
        .client
        .post(app.url("/batches"))
        .json(&batch("1", vec![driver(1, "+15551230001")]))
        .send()
        .await
        .expect("sent");
    assert_envelope(unauthenticated, 401).await;
    let cancel = app
        .client
        .post(app.url(&format!("/batches/{}/cancel", ids[0])))
        .send()
        .await
        .expect("sent");
    assert_envelope(cancel, 401).await;
}

// ---- The batch-call endpoint as a front of the same machinery ----

/// "A driver whose first attempt is not due now … is listed with "status":"scheduled",
/// "scheduled_for" … and no conversation_id. … none dialed now 202." and the response
/// "carries batch_id, and each entry of calls its attempt (1)".
#[tokio::test]
async fn the_batch_call_endpoint_answers_202_when_nobody_is_due_and_schedules_them() {
    let app = spawn_app_with(dialing).await;
    expect_no_dials(&app).await;
    let (window, opens) = window_later(2);
    let body = with_schedule(
        batch("1732184700", vec![driver(1, "+15551230001")]),
        json!({"window": window}),
    );

    let response = app.post_json("/driver_data/call-elevenlabs", &body).await;

    assert_eq!(response.status().as_u16(), 202);
    let body: Value = response.json().await.expect("json");
    let call = &body["calls"][0];
    assert_eq!(call["status"], "scheduled");
    assert_eq!(call["attempt"], 1);
    assert_eq!(call["call_sid"], "EL_1_1732184700");
    assert_eq!(call["conversation_id"], Value::Null);
    assert_eq!(parse_time(&call["scheduled_for"]), opens);
    let id = body["batch_id"].as_str().expect("batch_id");
    let view = app.batch_view(id).await;
    assert_eq!(state_of(&view, 1), "scheduled");
    assert_eq!(app.count("calls").await, 0);
}

/// The endpoint dials the drivers due now itself and lists the others as scheduled; the
/// status counts only the drivers dialed now.
#[tokio::test]
async fn the_batch_call_endpoint_dials_who_is_due_now_and_schedules_the_rest() {
    let app = spawn_app_with(dialing).await;
    Mock::given(method("POST"))
        .and(path(OUTBOUND))
        .respond_with(FreshConversation)
        .mount(&app.elevenlabs)
        .await;
    let mut resting = driver(2, "+15551230002");
    let rest_ends = OffsetDateTime::now_utc() + time::Duration::hours(3);
    resting["notBefore"] = json!(rfc3339(rest_ends));

    let response = app
        .post_json(
            "/driver_data/call-elevenlabs",
            &batch("1732184800", vec![driver(1, "+15551230001"), resting]),
        )
        .await;

    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("json");
    assert_eq!(status, 200, "{body:#}");
    assert!(body["batch_id"].is_string());
    assert_eq!(body["calls"][0]["status"], "in_progress");
    assert_eq!(body["calls"][0]["attempt"], 1);
    assert!(body["calls"][0]["conversation_id"].is_string());
    assert_eq!(body["calls"][0].get("scheduled_for"), None);
    assert_eq!(body["calls"][1]["status"], "scheduled");
    assert_eq!(
        parse_time(&body["calls"][1]["scheduled_for"]).unix_timestamp(),
        rest_ends.unix_timestamp()
    );
    tokio::time::sleep(POLL * 6).await;
    assert_eq!(
        dialed(&app.elevenlabs).await,
        ["EL_1_1732184800"],
        "exactly once, by the request"
    );
}

// ---- Several instances ----

/// "Everything below is durable in PostgreSQL: a restart, a crash or a second instance loses
/// no recipient and dials no attempt twice." — three instances on one database dial one
/// batch, with re-dials: every attempt's request reaches ElevenLabs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_dial_each_attempt_of_one_batch_exactly_once() {
    let app = spawn_app_with(dialing).await;
    let drivers = 30;
    // Odd drivers fail their first attempt (503) and are re-dialed at once.
    for i in 1..=drivers {
        let first = if i % 2 == 1 {
            Answer::With(ResponseTemplate::new(503).set_delay(Duration::from_millis(30)))
        } else {
            Answer::Placed
        };
        Mock::given(method("POST"))
            .and(path(OUTBOUND))
            .and(wiremock::matchers::body_partial_json(
                json!({"to_number": format!("+1555123{i:04}")}),
            ))
            .respond_with(ByAttempt(vec![first, Answer::Placed]))
            .mount(&app.elevenlabs)
            .await;
    }
    for _ in 0..2 {
        start_instance(app.db.config(), &app.elevenlabs.uri(), dialing).await;
    }
    let body = with_schedule(
        batch(
            "1732184900",
            (1..=drivers)
                .map(|i| driver(i, &format!("+1555123{i:04}")))
                .collect(),
        ),
        json!({"redialDelaysSecs": [0]}),
    );
    let id = app
        .post_json("/batches", &body)
        .await
        .json::<Value>()
        .await
        .expect("json")["batch_id"]
        .as_str()
        .expect("id")
        .to_owned();

    // Placed attempts with the same conversation_id conflict: each placed attempt only needs
    // its request counted, so wait for every recipient to have its last attempt answered.
    app.wait_for(&id, Duration::from_secs(30), |v| {
        v["drivers"].as_array().is_some_and(|ds| {
            ds.iter().all(|r| {
                let expected = if r["driverId"].as_i64().unwrap_or(0) % 2 == 1 {
                    2
                } else {
                    1
                };
                r["attempts"]
                    .as_array()
                    .is_some_and(|a| a.len() == expected)
                    && r["state"] != "dialing"
                    && r["state"] != "scheduled"
            })
        })
    })
    .await;
    tokio::time::sleep(POLL * 6).await;

    let mut per_sid: BTreeMap<String, usize> = BTreeMap::new();
    for sid in dialed(&app.elevenlabs).await {
        *per_sid.entry(sid).or_default() += 1;
    }
    let expected = usize::try_from(drivers + drivers / 2).unwrap_or(0);
    assert_eq!(per_sid.len(), expected, "{per_sid:?}");
    assert!(
        per_sid.values().all(|n| *n == 1),
        "an attempt was dialed twice: {per_sid:?}"
    );
    for i in (1..=drivers).step_by(2) {
        assert!(
            per_sid.contains_key(&format!("EL_{i}_1732184900#2")),
            "driver {i} re-dialed"
        );
    }
    assert_eq!(
        app.count("calls").await,
        i64::try_from(expected).unwrap_or(0)
    );
}

/// "Failed first attempts are re-dialed later by the policy below, like any other." (the
/// batch-call endpoint)
#[tokio::test]
async fn a_first_attempt_that_failed_in_the_batch_call_endpoint_is_re_dialed_later() {
    let app = spawn_app_with(dialing).await;
    Mock::given(method("POST"))
        .and(path(OUTBOUND))
        .respond_with(ByAttempt(vec![
            Answer::With(ResponseTemplate::new(503)),
            Answer::Placed,
        ]))
        .mount(&app.elevenlabs)
        .await;
    let body = with_schedule(
        batch("1732185000", vec![driver(1, "+15551230001")]),
        json!({"redialDelaysSecs": [1]}),
    );

    let response = app.post_json("/driver_data/call-elevenlabs", &body).await;

    assert_eq!(response.status().as_u16(), 502);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["calls"][0]["status"], "failed");
    let id = body["batch_id"].as_str().expect("batch_id").to_owned();
    let view = app
        .wait_for(&id, Duration::from_secs(10), |v| {
            state_of(v, 1) == "in_call"
        })
        .await;
    assert_eq!(
        recipient(&view, 1)["attempts"][1]["call_sid"],
        "EL_1_1732185000#2"
    );
    assert_eq!(
        dialed(&app.elevenlabs).await,
        ["EL_1_1732185000", "EL_1_1732185000#2"]
    );
}

/// "Everything below is durable in PostgreSQL: a restart … loses no recipient": a batch
/// recorded by one process (its dialer off, as if it stopped right after answering) is
/// dialed by another process started later on the same database.
#[tokio::test]
async fn a_batch_recorded_before_a_restart_is_dialed_by_the_next_process() {
    let app = spawn_app_with(|_| {}).await;
    Mock::given(method("POST"))
        .and(path(OUTBOUND))
        .respond_with(FreshConversation)
        .mount(&app.elevenlabs)
        .await;
    let mut soon = driver(2, "+15551230002");
    soon["notBefore"] = json!(rfc3339(
        OffsetDateTime::now_utc() + time::Duration::seconds(1)
    ));
    let id = app
        .post_json(
            "/batches",
            &batch("1732185100", vec![driver(1, "+15551230001"), soon]),
        )
        .await
        .json::<Value>()
        .await
        .expect("json")["batch_id"]
        .as_str()
        .expect("id")
        .to_owned();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(dialed(&app.elevenlabs).await.is_empty());

    start_instance(app.db.config(), &app.elevenlabs.uri(), dialing).await;

    app.wait_for(&id, Duration::from_secs(10), |v| {
        v["counts"]["in_call"] == 2
    })
    .await;
    let mut sids = dialed(&app.elevenlabs).await;
    sids.sort();
    assert_eq!(sids, ["EL_1_1732185100", "EL_2_1732185100"]);
}

/// Notes when each outbound-call request arrives, then places it after `delay`.
struct SlowPlaced {
    delay: Duration,
    arrivals: std::sync::Arc<std::sync::Mutex<Vec<Instant>>>,
}

impl Respond for SlowPlaced {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        self.arrivals.lock().expect("lock").push(Instant::now());
        placed().set_delay(self.delay)
    }
}

/// "with at most CALL_CONCURRENCY outbound requests in flight per instance" — the dialer's
/// and the batch-call endpoint's together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dialer_and_the_batch_call_endpoint_share_call_concurrency() {
    let app = spawn_app_with(|s| {
        dialing(s);
        s.call_concurrency = 2;
    })
    .await;
    let arrivals = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let delay = Duration::from_millis(400);
    Mock::given(method("POST"))
        .and(path(OUTBOUND))
        .respond_with(SlowPlaced {
            delay,
            arrivals: arrivals.clone(),
        })
        .mount(&app.elevenlabs)
        .await;
    let queued = batch(
        "1732185200",
        (1..=3)
            .map(|i| driver(i, &format!("+1555123000{i}")))
            .collect(),
    );
    let direct = batch(
        "1732185201",
        (4..=6)
            .map(|i| driver(i, &format!("+1555123000{i}")))
            .collect(),
    );

    let (a, b) = tokio::join!(
        app.post_json("/batches", &queued),
        app.post_json("/driver_data/call-elevenlabs", &direct)
    );
    assert_eq!(a.status().as_u16(), 202);
    assert_eq!(b.status().as_u16(), 200);
    let started = Instant::now();
    while arrivals.lock().expect("lock").len() < 6 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "all six dialed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut at = arrivals.lock().expect("lock").clone();
    at.sort();
    // A third request can only start once one of two in flight has answered.
    for w in at.windows(3) {
        assert!(
            w[2] - w[0] >= delay - Duration::from_millis(50),
            "three requests in flight at once: {:?}",
            at.iter()
                .map(|t| t.duration_since(at[0]))
                .collect::<Vec<_>>()
        );
    }
}

/// The batch-call endpoint: "A driver whose first attempt is not due now (… or the
/// pre-dial check said not yet) is listed with "status":"scheduled", "scheduled_for"".
#[tokio::test]
async fn the_batch_call_endpoint_lists_a_driver_the_pre_dial_check_refused_as_scheduled() {
    let (app, _dispatcher) = predial_app(
        ResponseTemplate::new(200)
            .set_body_json(json!({"eligible": false, "retry_after_secs": 600})),
    )
    .await;
    let before = OffsetDateTime::now_utc();

    let response = app
        .post_json(
            "/driver_data/call-elevenlabs",
            &batch("1732185300", vec![driver(1, "+15551230001")]),
        )
        .await;

    assert_eq!(response.status().as_u16(), 202);
    let body: Value = response.json().await.expect("json");
    let call = &body["calls"][0];
    assert_eq!(call["status"], "scheduled");
    assert_eq!(call["conversation_id"], Value::Null);
    let at = parse_time(&call["scheduled_for"]);
    assert!(at >= before + time::Duration::seconds(600), "{call}");
    assert!(
        at <= OffsetDateTime::now_utc() + time::Duration::seconds(600),
        "{call}"
    );
    assert!(dialed(&app.elevenlabs).await.is_empty());
}
