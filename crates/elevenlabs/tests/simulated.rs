//! `SimulatedTelephony` against a wiremock server playing our own webhooks.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use calls_domain::models::PhoneNumber;
use calls_domain::ports::{ConversationState, OutboundCall, Telephony, TelephonyError};
use calls_domain::{CallSid, ConversationId, SpeakerType};
use calls_elevenlabs::{
    DEFAULT_TOLERANCE_SECS, POST_CALL_PATH, SIGNATURE_HEADER, SimulatedConfig, SimulatedTelephony,
    TRANSCRIPTION_PATH, verify,
};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const SECRET: &str = "wsec_simulated_secret";

fn telephony(server: &MockServer) -> SimulatedTelephony {
    telephony_with(server, |_| {})
}

fn telephony_with(
    server: &MockServer,
    customize: impl FnOnce(&mut SimulatedConfig),
) -> SimulatedTelephony {
    let mut config = SimulatedConfig {
        turn_interval: Duration::from_millis(10),
        ..SimulatedConfig::new(server.uri(), SECRET.into())
    };
    customize(&mut config);
    SimulatedTelephony::new(config).expect("valid config")
}

fn outbound_call(number: &str) -> OutboundCall {
    OutboundCall {
        call_sid: CallSid::parse("EL_1_2").expect("valid call_sid"),
        to_number: PhoneNumber::parse(number).expect("valid number"),
        prompt: "prompt".to_owned(),
        dynamic_variables: BTreeMap::from([
            ("call_sid".to_owned(), "EL_1_2".to_owned()),
            ("driver_name".to_owned(), "Jane Doe".to_owned()),
            (
                "violation_summary".to_owned(),
                "a hard braking event on I-80".to_owned(),
            ),
        ]),
    }
}

async fn mount_webhooks(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path(TRANSCRIPTION_PATH))
        .respond_with(ResponseTemplate::new(201))
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path(POST_CALL_PATH))
        .respond_with(ResponseTemplate::new(200))
        .mount(server)
        .await;
}

/// Polls until the post-call event has arrived (bounded), then returns every request.
async fn wait_for_post_call(server: &MockServer) -> Vec<Request> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let requests = server.received_requests().await.unwrap_or_default();
        if requests.iter().any(|r| r.url.path() == POST_CALL_PATH) {
            return requests;
        }
        assert!(Instant::now() < deadline, "no post-call event within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_signed(request: &Request) {
    let header = request
        .headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .expect("signature header present");
    let now = OffsetDateTime::now_utc().unix_timestamp();
    assert_eq!(
        verify(SECRET, header, &request.body, now, DEFAULT_TOLERANCE_SECS),
        Ok(()),
        "{header}"
    );
}

fn json_of(request: &Request) -> Value {
    serde_json::from_slice(&request.body).expect("JSON body")
}

#[tokio::test]
async fn a_simulated_call_posts_signed_turns_then_the_post_call_event() {
    let server = MockServer::start().await;
    mount_webhooks(&server).await;
    let telephony = telephony(&server);

    let placed = telephony
        .place_call(&outbound_call("+15551234567"))
        .await
        .expect("placed");
    let conversation_id = placed.conversation_id.as_str().to_owned();
    let suffix = conversation_id
        .strip_prefix("sim_conv_")
        .expect("sim_conv_ prefix");
    assert!(suffix.len() == 16 && suffix.chars().all(|c| c.is_ascii_hexdigit()));
    let ca = placed.provider_call_id.expect("provider call id");
    assert!(
        ca.len() == 34 && ca.starts_with("CA") && ca[2..].chars().all(|c| c.is_ascii_hexdigit())
    );

    let requests = wait_for_post_call(&server).await;
    assert!(requests.iter().all(|r| r.method.as_str() == "POST"));
    requests.iter().for_each(assert_signed);

    // All turns, in order, before the post-call event.
    let (post_call, turns) = requests.split_last().expect("requests");
    assert_eq!(post_call.url.path(), POST_CALL_PATH);
    assert!(turns.iter().all(|r| r.url.path() == TRANSCRIPTION_PATH));
    assert_eq!(turns.len(), 5);

    let turns: Vec<Value> = turns.iter().map(json_of).collect();
    let speakers: Vec<&str> = turns.iter().filter_map(|t| t["speaker"].as_str()).collect();
    assert_eq!(speakers, ["agent", "user", "agent", "user", "agent"]);
    for turn in &turns {
        assert_eq!(turn["call_sid"], "EL_1_2");
        assert!(!turn["message"].as_str().unwrap_or_default().is_empty());
        let ts = turn["timestamp"].as_str().expect("timestamp");
        assert!(ts.ends_with('Z'), "{ts}");
        OffsetDateTime::parse(ts, &Rfc3339).expect("RFC 3339 timestamp");
    }
    let first = turns[0]["message"].as_str().unwrap_or_default();
    assert!(first.contains("Jane Doe"), "{first}");
    assert!(turns.iter().any(|t| {
        t["message"]
            .as_str()
            .unwrap_or_default()
            .contains("a hard braking event on I-80")
    }));

    let event = json_of(post_call);
    assert_eq!(event["type"], "post_call_transcription");
    assert!(event["event_timestamp"].is_i64());
    let data = &event["data"];
    assert_eq!(data["agent_id"], "simulated-agent");
    assert_eq!(data["conversation_id"], conversation_id.as_str());
    assert_eq!(data["status"], "done");
    assert_eq!(
        data["conversation_initiation_client_data"]["dynamic_variables"]["call_sid"],
        "EL_1_2"
    );
    let transcript = data["transcript"].as_array().expect("transcript");
    assert_eq!(transcript.len(), 5);
    for (entry, turn) in transcript.iter().zip(&turns) {
        assert_eq!(entry["role"], turn["speaker"]);
        assert_eq!(entry["message"], turn["message"]);
        assert!(entry["time_in_call_secs"].is_u64());
    }
    assert!(data["metadata"]["start_time_unix_secs"].is_i64());
    assert!(
        data["metadata"]["call_duration_secs"]
            .as_u64()
            .unwrap_or_default()
            >= 1
    );
}

#[tokio::test]
async fn a_failed_turn_delivery_is_retried_with_the_same_body() {
    let server = MockServer::start().await;
    // The first delivery fails once; the higher-priority mock then stops matching.
    Mock::given(method("POST"))
        .and(path(TRANSCRIPTION_PATH))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    mount_webhooks(&server).await;
    let telephony = telephony(&server);

    telephony
        .place_call(&outbound_call("+15551234567"))
        .await
        .expect("placed");
    let requests = wait_for_post_call(&server).await;
    let turns: Vec<&Request> = requests
        .iter()
        .filter(|r| r.url.path() == TRANSCRIPTION_PATH)
        .collect();
    assert_eq!(turns.len(), 6, "five turns plus one retry");
    assert_eq!(
        turns[0].body, turns[1].body,
        "the retry repeats the same turn"
    );
    turns.iter().copied().for_each(assert_signed);
}

#[tokio::test]
async fn a_number_ending_in_0000_is_not_placed_and_nothing_is_posted() {
    let server = MockServer::start().await;
    mount_webhooks(&server).await;
    let telephony = telephony(&server);

    let err = telephony
        .place_call(&outbound_call("+15551230000"))
        .await
        .expect_err("not placed");
    assert_eq!(
        err,
        TelephonyError::NotPlaced {
            message: "simulated: number unreachable".to_owned()
        }
    );
    // Ten turn intervals: long enough for a conversation to have started.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let requests = server.received_requests().await.unwrap_or_default();
    assert!(requests.is_empty(), "{} requests", requests.len());
}

#[tokio::test]
async fn each_call_gets_its_own_conversation_id() {
    let server = MockServer::start().await;
    mount_webhooks(&server).await;
    let telephony = telephony(&server);
    let call = outbound_call("+15551234567");
    let a = telephony.place_call(&call).await.expect("placed");
    let b = telephony.place_call(&call).await.expect("placed");
    assert_ne!(a.conversation_id, b.conversation_id);
    assert_ne!(a.provider_call_id, b.provider_call_id);
}

#[test]
fn an_invalid_webhook_base_url_is_refused_and_the_secret_is_not_shown() {
    let config = SimulatedConfig::new("not a url", SECRET.into());
    assert_eq!(config.turn_interval, Duration::from_millis(150));
    assert!(!format!("{config:?}").contains(SECRET));
    assert!(SimulatedTelephony::new(config).is_err());
}

#[tokio::test]
async fn the_post_call_event_carries_the_analysis_with_data_collection_results() {
    let server = MockServer::start().await;
    mount_webhooks(&server).await;
    telephony(&server)
        .place_call(&outbound_call("+15551234567"))
        .await
        .expect("placed");

    let requests = wait_for_post_call(&server).await;
    let event = json_of(requests.last().expect("post-call event"));
    let analysis = &event["data"]["analysis"];
    assert_eq!(analysis["call_successful"], "success");
    assert!(analysis["transcript_summary"].is_string());
    let results = &analysis["data_collection_results"];
    assert_eq!(results["violation_acknowledged"]["value"], true);
    assert!(results["violation_acknowledged"]["rationale"].is_string());
    assert!(results["reason_given"]["value"].is_string());
    assert!(results["fix_eta"]["value"].is_string());
    assert!(event["data"]["metadata"]["termination_reason"].is_string());
}

#[tokio::test]
async fn a_dropped_turn_is_not_delivered_but_stays_in_the_post_call_transcript() {
    let server = MockServer::start().await;
    mount_webhooks(&server).await;
    let telephony = telephony_with(&server, |c| c.drop_turn = Some(2));
    telephony
        .place_call(&outbound_call("+15551234567"))
        .await
        .expect("placed");

    let requests = wait_for_post_call(&server).await;
    let turns: Vec<Value> = requests
        .iter()
        .filter(|r| r.url.path() == TRANSCRIPTION_PATH)
        .map(json_of)
        .collect();
    let speakers: Vec<&str> = turns.iter().filter_map(|t| t["speaker"].as_str()).collect();
    assert_eq!(
        speakers,
        ["agent", "agent", "user", "agent"],
        "turn 2 (the driver's first) is missing"
    );
    let event = json_of(requests.last().expect("post-call event"));
    let transcript = event["data"]["transcript"].as_array().expect("transcript");
    assert_eq!(
        transcript.len(),
        5,
        "the post-call transcript has every turn"
    );
    assert_eq!(transcript[1]["role"], "user");
}

/// Polls the simulated conversation API until it reports the conversation done.
async fn wait_until_done(telephony: &SimulatedTelephony, id: &ConversationId) -> ConversationState {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = telephony.fetch_conversation(id).await.expect("answers");
        if !matches!(state, ConversationState::Pending { .. }) {
            return state;
        }
        assert!(Instant::now() < deadline, "not done within 10 s: {state:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_simulated_conversation_api_answers_for_its_own_conversations() {
    let server = MockServer::start().await;
    mount_webhooks(&server).await;
    let telephony = telephony_with(&server, |c| {
        c.skip_post_call = true;
        c.turn_interval = Duration::from_millis(30);
    });
    let placed = telephony
        .place_call(&outbound_call("+15551234567"))
        .await
        .expect("placed");

    let early = telephony
        .fetch_conversation(&placed.conversation_id)
        .await
        .expect("answers");
    assert_eq!(
        early,
        ConversationState::Pending {
            status: "in-progress".into()
        }
    );
    let ConversationState::Done(report) =
        wait_until_done(&telephony, &placed.conversation_id).await
    else {
        panic!("not done");
    };
    assert_eq!(report.conversation_id, placed.conversation_id);
    assert_eq!(
        report.call_sid.as_ref().map(CallSid::as_str),
        Some("EL_1_2")
    );
    assert_eq!(report.transcript.len(), 5);
    assert_eq!(report.transcript[0].speaker, SpeakerType::Agent);
    assert!(report.transcript[0].message.contains("Jane Doe"));
    assert_eq!(report.outcome.call_successful.as_deref(), Some("success"));
    assert_eq!(
        report.outcome.data_collection["violation_acknowledged"],
        serde_json::json!(true)
    );
    assert!(report.duration_secs.unwrap_or_default() >= 1);

    // skip_post_call: the turns arrived, the post-call event did not.
    let requests = server.received_requests().await.unwrap_or_default();
    assert_eq!(requests.len(), 5);
    assert!(requests.iter().all(|r| r.url.path() == TRANSCRIPTION_PATH));
}

#[tokio::test]
async fn the_simulated_conversation_api_does_not_know_other_conversations() {
    let server = MockServer::start().await;
    let state = telephony(&server)
        .fetch_conversation(&ConversationId::parse("conv_from_elsewhere").expect("id"))
        .await
        .expect("answers");
    assert_eq!(state, ConversationState::NotFound);
}
