//! The adapter against a fake dispatcher system (wiremock): what it sends, and how every
//! kind of answer — or no answer — is read.

use std::time::Duration;

use calls_domain::models::{BatchId, CallSid, PhoneNumber};
use calls_domain::ports::{PredialAnswer, PredialCheck, PredialRequest};
use calls_predial::{DEFAULT_RETRY_AFTER, HttpPredialCheck, PredialConfig};
use secrecy::SecretString;
use serde_json::json;
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const PHONE: &str = "+15551234567";

fn request() -> PredialRequest {
    PredialRequest {
        batch_id: BatchId::parse("0190b6d5-8f5a-7c3e-9a2b-123456789abc").expect("uuid"),
        call_sid: CallSid::parse("EL_7_2024-11-21T10:00:00Z#2").expect("sid"),
        attempt: 2,
        driver_id: 7,
        phone_number: PhoneNumber::parse(PHONE).expect("phone"),
    }
}

fn check(server: &MockServer, token: Option<&str>, timeout: Duration) -> HttpPredialCheck {
    HttpPredialCheck::new(PredialConfig {
        url: format!("{}/predial", server.uri()),
        token: token.map(SecretString::from),
        timeout,
    })
    .expect("builds")
}

async fn answer(response: ResponseTemplate) -> PredialAnswer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/predial"))
        .respond_with(response)
        .mount(&server)
        .await;
    check(&server, None, Duration::from_millis(500))
        .check(&request())
        .await
}

fn failed_detail(answer: PredialAnswer) -> String {
    match answer {
        PredialAnswer::Failed { detail } => {
            assert!(!detail.contains("5551234567"), "no phone number: {detail}");
            assert!(!detail.is_empty());
            detail
        }
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[tokio::test]
async fn it_posts_the_documented_body_with_the_bearer_token_and_dials_on_eligible() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/predial"))
        .and(header("authorization", "Bearer predial-secret"))
        .and(header("content-type", "application/json"))
        .and(body_json(json!({
            "batch_id": "0190b6d5-8f5a-7c3e-9a2b-123456789abc",
            "call_sid": "EL_7_2024-11-21T10:00:00Z#2",
            "attempt": 2,
            "driverId": 7,
            "phoneNumber": PHONE,
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"eligible": true})))
        .expect(1)
        .mount(&server)
        .await;
    let answer = check(&server, Some("predial-secret"), Duration::from_secs(2))
        .check(&request())
        .await;
    assert_eq!(answer, PredialAnswer::Eligible);
}

#[tokio::test]
async fn without_a_token_no_authorization_header_is_sent() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"eligible": true})))
        .mount(&server)
        .await;
    check(&server, None, Duration::from_secs(2))
        .check(&request())
        .await;
    let received = server.received_requests().await.expect("recorded");
    assert_eq!(received.len(), 1);
    assert!(!received[0].headers.contains_key("authorization"));
}

#[tokio::test]
async fn not_eligible_waits_the_given_time_or_900_seconds() {
    assert_eq!(
        answer(ResponseTemplate::new(200).set_body_json(
            json!({"eligible": false, "retry_after_secs": 120, "reason": "driving"})
        ))
        .await,
        PredialAnswer::NotEligible {
            retry_after: Duration::from_secs(120)
        }
    );
    assert_eq!(
        answer(ResponseTemplate::new(200).set_body_json(json!({"eligible": false}))).await,
        PredialAnswer::NotEligible {
            retry_after: DEFAULT_RETRY_AFTER
        }
    );
    assert_eq!(DEFAULT_RETRY_AFTER, Duration::from_secs(900));
}

#[tokio::test]
async fn a_server_error_fails_closed() {
    let detail = failed_detail(
        answer(ResponseTemplate::new(500).set_body_json(json!({"eligible": true}))).await,
    );
    assert!(detail.contains("500"), "{detail}");
    failed_detail(answer(ResponseTemplate::new(404)).await);
    failed_detail(answer(ResponseTemplate::new(302).insert_header("location", "/elsewhere")).await);
}

#[tokio::test]
async fn garbage_and_other_bodies_fail_closed() {
    for body in [
        ResponseTemplate::new(200).set_body_string("<html>eligible</html>"),
        ResponseTemplate::new(200).set_body_json(json!({"eligible": "yes"})),
        ResponseTemplate::new(200).set_body_json(json!({"ok": true})),
        ResponseTemplate::new(200)
            .set_body_json(json!({"eligible": false, "retry_after_secs": -5})),
        ResponseTemplate::new(200)
            .set_body_json(json!({"eligible": false, "retry_after_secs": "soon"})),
        ResponseTemplate::new(204),
        ResponseTemplate::new(200).set_body_string("x".repeat(100_000)),
    ] {
        failed_detail(answer(body).await);
    }
}

#[tokio::test]
async fn a_slow_answer_fails_closed_at_the_timeout() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"eligible": true}))
                .set_delay(Duration::from_secs(20)),
        )
        .mount(&server)
        .await;
    let started = std::time::Instant::now();
    let answer = check(&server, None, Duration::from_millis(200))
        .check(&request())
        .await;
    // Far below the answer's 20 s: cut by the timeout, not served late (a loaded machine
    // may take a while to build the client).
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "cut at the timeout"
    );
    let detail = failed_detail(answer);
    assert!(detail.contains("200 ms"), "{detail}");
}

#[tokio::test]
async fn a_service_that_is_down_fails_closed() {
    // A port nobody listens on: bind, note the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let check = HttpPredialCheck::new(PredialConfig {
        url: format!("http://127.0.0.1:{port}/predial"),
        token: Some(SecretString::from("predial-secret")),
        timeout: Duration::from_millis(500),
    })
    .expect("builds");
    let detail = failed_detail(check.check(&request()).await);
    assert!(!detail.contains("predial-secret"), "{detail}");
}
