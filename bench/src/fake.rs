//! A fake ElevenLabs on wiremock: `POST /v1/convai/twilio/outbound-call` answered with a
//! fresh conversation id after a fixed delay, so batch placement is timed without a phone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use wiremock::matchers::{header_exists, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const OUTBOUND_CALL_PATH: &str = "/v1/convai/twilio/outbound-call";

pub struct FakeElevenLabs {
    server: MockServer,
    answer: Arc<Answer>,
}

struct Answer {
    delay: Duration,
    placed: AtomicU64,
    /// When each outbound call arrived, to tell how many were in flight at once.
    arrivals: Mutex<Vec<Instant>>,
    /// Makes conversation ids unique across runs, not only within one.
    run_id: String,
}

/// wiremock's responder: the shared state, behind an `Arc` the fake keeps too.
struct Responder(Arc<Answer>);

impl Respond for Responder {
    fn respond(&self, _request: &Request) -> ResponseTemplate {
        let this = &self.0;
        let n = this.placed.fetch_add(1, Ordering::SeqCst) + 1;
        if let Ok(mut arrivals) = this.arrivals.lock() {
            arrivals.push(Instant::now());
        }
        ResponseTemplate::new(200)
            .set_body_json(json!({
                "success": true,
                "message": "ok",
                "conversation_id": format!("conv_bench_{}_{n}", this.run_id),
                "callSid": format!("CA{n:032x}"),
            }))
            .set_delay(this.delay)
    }
}

impl FakeElevenLabs {
    pub async fn start(delay: Duration) -> Self {
        let server = MockServer::start().await;
        let answer = Arc::new(Answer {
            delay,
            placed: AtomicU64::new(0),
            arrivals: Mutex::new(Vec::new()),
            run_id: format!(
                "{}_{}",
                time::OffsetDateTime::now_utc().unix_timestamp(),
                std::process::id()
            ),
        });
        Mock::given(method("POST"))
            .and(path(OUTBOUND_CALL_PATH))
            .and(header_exists("xi-api-key"))
            .respond_with(Responder(Arc::clone(&answer)))
            .mount(&server)
            .await;
        FakeElevenLabs { server, answer }
    }

    pub fn uri(&self) -> String {
        self.server.uri()
    }

    /// Outbound calls answered so far.
    pub fn placed(&self) -> u64 {
        self.answer.placed.load(Ordering::SeqCst)
    }

    /// Most calls in flight at once among those that arrived since `since`: every call
    /// takes exactly the delay, so that is the most arrivals within one delay.
    pub fn peak_since(&self, since: Instant) -> usize {
        peak(&self.arrivals_since(since), self.answer.delay)
    }

    /// When each outbound call that arrived since `since` arrived, in order.
    pub fn arrivals_since(&self, since: Instant) -> Vec<Instant> {
        self.answer
            .arrivals
            .lock()
            .map(|a| {
                a.iter()
                    .copied()
                    .filter(|t| *t >= since)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    }
}

/// The most of `arrivals` (in order) within any window of length `delay`.
fn peak(arrivals: &[Instant], delay: Duration) -> usize {
    let mut first = 0;
    let mut best = 0;
    for (last, t) in arrivals.iter().enumerate() {
        while arrivals
            .get(first)
            .is_some_and(|start| t.duration_since(*start) >= delay.max(Duration::from_micros(1)))
        {
            first += 1;
        }
        best = best.max(last + 1 - first);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_counts_overlapping_calls() {
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        let delay = Duration::from_millis(100);
        assert_eq!(peak(&[], delay), 0);
        assert_eq!(peak(&[ms(0)], delay), 1);
        assert_eq!(peak(&[ms(0), ms(10), ms(20), ms(200)], delay), 3);
        assert_eq!(peak(&[ms(0), ms(100), ms(200)], delay), 1);
        assert_eq!(peak(&[ms(0), ms(150), ms(160), ms(170), ms(240)], delay), 4);
    }

    #[tokio::test]
    async fn answers_outbound_calls_with_fresh_conversation_ids() {
        let fake = FakeElevenLabs::start(Duration::ZERO).await;
        let client = reqwest::Client::new();
        let url = format!("{}{OUTBOUND_CALL_PATH}", fake.uri());
        let mut ids = Vec::new();
        for _ in 0..2 {
            let answer = client.post(&url).header("xi-api-key", "k").send().await;
            let body: serde_json::Value = match answer {
                Ok(response) => response.json().await.unwrap_or_default(),
                Err(e) => panic!("{e}"),
            };
            assert_eq!(body["success"], true);
            ids.push(
                body["conversation_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
        assert_ne!(ids[0], ids[1]);
        let unauthorized = client.post(&url).send().await.map(|r| r.status().as_u16());
        assert_eq!(unauthorized.ok(), Some(404));
        assert_eq!(fake.placed(), 2);
    }
}
