//! Transcription turns as the drills send them: one delivery and its answer, senders that
//! retry every delivery until it is acknowledged (as ElevenLabs' retries would), and the
//! check of what was acknowledged against what PostgreSQL holds afterwards.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::load::{self, Saved, WEBHOOK_SECRET};

/// A retried delivery waits this long first, so a down server is not hammered.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// After the load ends, a delivery still unacknowledged is retried this much longer.
const RETRY_GRACE: Duration = Duration::from_secs(30);

/// One turn: what identifies it to the service (call, speaker, timestamp, message).
#[derive(Clone, Debug)]
pub struct Delivery {
    pub call: usize,
    pub call_sid: String,
    pub message: String,
    pub timestamp: String,
}

impl Delivery {
    pub fn new(call: usize, call_sid: &str, message: String, timestamp: &str) -> Self {
        Delivery {
            call,
            call_sid: call_sid.to_string(),
            message,
            timestamp: timestamp.to_string(),
        }
    }
}

/// What one delivery got back.
#[derive(Debug)]
pub enum Answer {
    /// 201: stored now.
    Created(Saved),
    /// 200: the same turn was stored before.
    Repeat(Saved),
    /// Any other status, with the start of the body.
    Status(u16, String),
    /// No answer at all (refused, reset, timed out).
    Transport(String),
}

impl Answer {
    pub fn acknowledged(&self) -> Option<Saved> {
        match self {
            Answer::Created(saved) | Answer::Repeat(saved) => Some(*saved),
            _ => None,
        }
    }

    /// Worth retrying: the service said "later", or said nothing.
    fn retryable(&self) -> bool {
        match self {
            Answer::Status(status, _) => *status >= 500 || *status == 408 || *status == 429,
            Answer::Transport(_) => true,
            _ => false,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Answer::Created(_) => "201".to_string(),
            Answer::Repeat(_) => "200".to_string(),
            Answer::Status(status, body) => format!("HTTP {status}: {body}"),
            Answer::Transport(e) => format!("no answer: {e}"),
        }
    }
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "2025-01-01T00:00:00Z".to_string())
}

pub async fn send(client: &reqwest::Client, base_url: &str, turn: &Delivery) -> Answer {
    let result = client
        .post(format!("{base_url}/webhooks/elevenlabs/transcription"))
        .bearer_auth(WEBHOOK_SECRET)
        .json(&json!({
            "call_sid": turn.call_sid,
            "speaker": "agent",
            "message": turn.message,
            "timestamp": turn.timestamp,
        }))
        .send()
        .await;
    let response = match result {
        Ok(response) => response,
        Err(e) => return Answer::Transport(e.to_string()),
    };
    let status = response.status().as_u16();
    let body = match response.text().await {
        Ok(body) => body,
        Err(e) => return Answer::Transport(e.to_string()),
    };
    match (status, serde_json::from_str::<Saved>(&body)) {
        (201, Ok(saved)) => Answer::Created(saved),
        (200, Ok(saved)) => Answer::Repeat(saved),
        _ => Answer::Status(status, body.chars().take(200).collect()),
    }
}

/// What retrying senders saw.
#[derive(Default)]
pub struct Outcome {
    /// Acknowledged turns with the ids their 2xx carried.
    pub acked: Vec<(Delivery, Saved)>,
    /// When each 2xx arrived.
    pub ok_at: Vec<Instant>,
    /// Deliveries sent again after a 5xx or no answer.
    pub retries: u64,
    /// Turns never acknowledged, even after the grace period.
    pub unanswered: u64,
    /// Turns refused with a 4xx (not retried).
    pub refused: u64,
    pub first_failure: Option<String>,
    pub started: Option<Instant>,
}

impl Outcome {
    fn merge(&mut self, other: Outcome) {
        self.acked.extend(other.acked);
        self.ok_at.extend(other.ok_at);
        self.retries += other.retries;
        self.unanswered += other.unanswered;
        self.refused += other.refused;
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
    }

    /// The longest stretch without any 2xx, from the start of the load to its last 2xx.
    pub fn longest_outage(&self) -> Duration {
        let mut times = self.ok_at.clone();
        times.sort_unstable();
        let mut previous = self.started.or_else(|| times.first().copied());
        let mut longest = Duration::ZERO;
        for t in times {
            if let Some(p) = previous {
                longest = longest.max(t.saturating_duration_since(p));
            }
            previous = Some(t);
        }
        longest
    }
}

/// `senders` loops for `duration`, sender i on call i % calls, each sending new turns and
/// retrying every one that got a 5xx or no answer until it is acknowledged.
pub async fn retrying_load(
    client: &reqwest::Client,
    base_url: &str,
    call_sids: &[String],
    senders: usize,
    duration: Duration,
    tag: &str,
) -> Outcome {
    let timestamp = now_rfc3339();
    let started = Instant::now();
    let deadline = started + duration;
    let runs = (0..senders).map(|sender| {
        let timestamp = timestamp.clone();
        async move {
            let mut outcome = Outcome::default();
            let call = sender % call_sids.len().max(1);
            let Some(call_sid) = call_sids.get(call) else {
                return outcome;
            };
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let turn = Delivery::new(
                    call,
                    call_sid,
                    format!("drill {tag} sender {sender} turn {n}"),
                    &timestamp,
                );
                let mut answer = send(client, base_url, &turn).await;
                while answer.retryable() && Instant::now() < deadline + RETRY_GRACE {
                    outcome
                        .first_failure
                        .get_or_insert_with(|| answer.describe());
                    outcome.retries += 1;
                    tokio::time::sleep(RETRY_PAUSE).await;
                    answer = send(client, base_url, &turn).await;
                }
                match answer.acknowledged() {
                    Some(saved) => {
                        outcome.ok_at.push(Instant::now());
                        outcome.acked.push((turn, saved));
                    }
                    None if answer.retryable() => outcome.unanswered += 1,
                    None => {
                        outcome
                            .first_failure
                            .get_or_insert_with(|| answer.describe());
                        outcome.refused += 1;
                    }
                }
            }
            outcome
        }
    });
    let mut total = Outcome {
        started: Some(started),
        ..Outcome::default()
    };
    for outcome in futures_util::future::join_all(runs).await {
        total.merge(outcome);
    }
    total
}

/// Acknowledged turns against the stored transcripts.
#[derive(Default, Debug)]
pub struct Check {
    pub stored: u64,
    /// Acknowledged but not stored.
    pub lost: u64,
    /// Stored rows beyond the first of the same message.
    pub duplicated: u64,
    /// Calls whose numbers are not exactly 1..=n.
    pub gapped_calls: u64,
    /// Acknowledged with ids other than the stored row's.
    pub wrong_ids: u64,
    pub problems: Vec<String>,
}

impl Check {
    pub fn ok(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.gapped_calls == 0
            && self.wrong_ids == 0
            && self.problems.is_empty()
    }

    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if self.gapped_calls > 0 {
            parts.push(format!(
                "{} call(s) numbered other than 1..n",
                self.gapped_calls
            ));
        }
        if self.wrong_ids > 0 {
            parts.push(format!("{} 2xx with ids not stored", self.wrong_ids));
        }
        parts.extend(self.problems.iter().cloned());
        parts.join("; ")
    }
}

/// Every call's transcript: numbered 1..=n, no message twice, every acknowledged turn
/// there with the ids its 2xx carried.
pub async fn check(
    client: &reqwest::Client,
    base_url: &str,
    call_sids: &[String],
    acked: &[(Delivery, Saved)],
) -> Check {
    let mut result = Check::default();
    for (call, call_sid) in call_sids.iter().enumerate() {
        let turns = match load::transcript(client, base_url, call_sid).await {
            Ok(turns) => turns,
            Err(e) => {
                result
                    .problems
                    .push(format!("transcript of {call_sid}: {e}"));
                continue;
            }
        };
        result.stored += turns.len() as u64;
        if turns
            .iter()
            .zip(1..)
            .any(|(turn, expected)| turn.sequence_number != expected)
        {
            result.gapped_calls += 1;
        }
        let mut stored: HashMap<&str, Saved> = HashMap::new();
        for turn in &turns {
            let saved = Saved {
                transcription_id: turn.id,
                sequence_number: turn.sequence_number,
            };
            if stored.insert(turn.message_text.as_str(), saved).is_some() {
                result.duplicated += 1;
            }
        }
        for (turn, saved) in acked.iter().filter(|(turn, _)| turn.call == call) {
            match stored.get(turn.message.as_str()) {
                None => result.lost += 1,
                Some(row) if row != saved => result.wrong_ids += 1,
                Some(_) => {}
            }
        }
    }
    result
}

/// `GET /readyz` every 100 ms until stopped: the answers, each change recorded once.
pub struct ReadyWatch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl ReadyWatch {
    pub fn start(client: &reqwest::Client, base_url: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (client, url, flag) = (
            client.clone(),
            format!("{base_url}/readyz"),
            Arc::clone(&stop),
        );
        let task = tokio::spawn(async move {
            let mut seen: Vec<String> = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                let answer = client
                    .get(&url)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .map_or_else(|_| "none".to_string(), |r| r.status().as_u16().to_string());
                if seen.last() != Some(&answer) {
                    seen.push(answer);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            seen
        });
        ReadyWatch { stop, task }
    }

    /// The answers in order, e.g. `200→503→200`.
    pub async fn finish(self) -> String {
        self.stop.store(true, Ordering::SeqCst);
        self.task
            .await
            .map_or_else(|e| format!("watch failed: {e}"), |seen| seen.join("→"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_outage_counts_from_the_start_of_the_load() {
        let t = Instant::now();
        let at = |ms| t + Duration::from_millis(ms);
        let mut outcome = Outcome {
            started: Some(t),
            ok_at: vec![at(300), at(100), at(1800), at(2000)],
            ..Outcome::default()
        };
        assert_eq!(outcome.longest_outage(), Duration::from_millis(1500));
        outcome.ok_at = vec![at(900)];
        assert_eq!(outcome.longest_outage(), Duration::from_millis(900));
    }

    #[test]
    fn only_5xx_408_429_and_silence_are_retried() {
        let saved = Saved {
            transcription_id: 1,
            sequence_number: 1,
        };
        assert!(Answer::Status(500, String::new()).retryable());
        assert!(Answer::Status(408, String::new()).retryable());
        assert!(Answer::Transport("reset".into()).retryable());
        assert!(!Answer::Status(400, String::new()).retryable());
        assert!(!Answer::Created(saved).retryable());
        assert_eq!(Answer::Repeat(saved).acknowledged(), Some(saved));
        assert_eq!(Answer::Status(503, String::new()).acknowledged(), None);
    }

    #[test]
    fn a_check_fails_on_anything_lost_duplicated_or_misnumbered() {
        assert!(Check::default().ok());
        for check in [
            Check {
                lost: 1,
                ..Check::default()
            },
            Check {
                duplicated: 1,
                ..Check::default()
            },
            Check {
                gapped_calls: 1,
                ..Check::default()
            },
            Check {
                wrong_ids: 1,
                ..Check::default()
            },
        ] {
            assert!(!check.ok(), "{check:?}");
        }
    }

    /// A transcript endpoint on wiremock answering `turns` for call `EL_1`.
    async fn transcript_of(turns: serde_json::Value) -> wiremock::MockServer {
        use wiremock::matchers::{method, path};
        let server = wiremock::MockServer::start().await;
        wiremock::Mock::given(method("GET"))
            .and(path("/calls/EL_1/transcriptions"))
            .respond_with(
                wiremock::ResponseTemplate::new(200)
                    .set_body_json(json!({ "transcriptions": turns })),
            )
            .mount(&server)
            .await;
        server
    }

    fn acked(message: &str, id: i64, sequence_number: i32) -> (Delivery, Saved) {
        (
            Delivery::new(0, "EL_1", message.to_string(), "t"),
            Saved {
                transcription_id: id,
                sequence_number,
            },
        )
    }

    #[tokio::test]
    async fn the_check_finds_lost_duplicated_and_misnumbered_turns() {
        let client = reqwest::Client::new();
        let sids = ["EL_1".to_string()];
        let row = |id, n, m: &str| json!({"id": id, "sequence_number": n, "message_text": m});
        let good = transcript_of(json!([row(10, 1, "a"), row(11, 2, "b")])).await;
        let result = check(
            &client,
            &good.uri(),
            &sids,
            &[acked("a", 10, 1), acked("b", 11, 2)],
        )
        .await;
        assert!(result.ok(), "{result:?}");
        assert_eq!(result.stored, 2);
        let lost = check(&client, &good.uri(), &sids, &[acked("c", 12, 3)]).await;
        assert_eq!(lost.lost, 1);
        let wrong = check(&client, &good.uri(), &sids, &[acked("a", 99, 1)]).await;
        assert_eq!(wrong.wrong_ids, 1);

        let bad = transcript_of(json!([row(10, 1, "a"), row(11, 3, "a")])).await;
        let result = check(&client, &bad.uri(), &sids, &[acked("a", 10, 1)]).await;
        assert_eq!((result.duplicated, result.gapped_calls), (1, 1));
        assert!(!result.ok());
    }
}
