//! HTTP load on reqwest: a closed loop (N connections, each sending its next request when
//! the last one is answered) and a fixed rate (requests leave on a schedule whatever the
//! answers do; latency counts from the scheduled time, so a stall is not hidden).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::json;
use tokio::task::JoinSet;

use crate::batch::API_TOKEN;
use crate::cpu::PerOp;
use crate::report::{Latencies, Measure};

pub const WEBHOOK_SECRET: &str = "bench-webhook-secret";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One client for every measurement: keep-alive connections, at most `clients` idle ones.
pub fn client(clients: u32) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(clients as usize)
        .timeout(REQUEST_TIMEOUT)
        .tcp_nodelay(true)
        .build()
        .context("building the HTTP client")
}

/// What the requests are.
pub enum Workload<'a> {
    Healthz,
    /// Transcription turns to these calls, each with a message of its own.
    Webhook {
        call_sids: &'a [String],
        timestamp: String,
        tag: String,
    },
}

impl<'a> Workload<'a> {
    pub fn webhook(call_sids: &'a [String], round: u32) -> Self {
        let timestamp = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| "2025-01-01T00:00:00Z".to_string());
        Workload::Webhook {
            call_sids,
            timestamp,
            tag: format!("r{round}"),
        }
    }

    fn calls(&self) -> usize {
        match self {
            Workload::Healthz => 1,
            Workload::Webhook { call_sids, .. } => call_sids.len().max(1),
        }
    }

    /// Request `n` of `sender`, to call `call`.
    fn request(
        &self,
        client: &reqwest::Client,
        base_url: &str,
        call: usize,
        sender: usize,
        n: u64,
    ) -> reqwest::RequestBuilder {
        match self {
            Workload::Healthz => client.get(format!("{base_url}/healthz")),
            Workload::Webhook {
                call_sids,
                timestamp,
                tag,
            } => {
                let speaker = if n % 2 == 0 { "user" } else { "agent" };
                client
                    .post(format!("{base_url}/webhooks/elevenlabs/transcription"))
                    .bearer_auth(WEBHOOK_SECRET)
                    .json(&json!({
                        "call_sid": call_sids.get(call).map_or("", String::as_str),
                        "speaker": speaker,
                        "message": format!("bench turn {tag} sender {sender} number {n}"),
                        "timestamp": timestamp,
                    }))
            }
        }
    }
}

/// The ids a 201 answered with.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Saved {
    pub transcription_id: i64,
    pub sequence_number: i32,
}

/// What one measurement saw.
#[derive(Debug, Default)]
pub struct Load {
    /// 201s per call, with the ids they carried.
    created: Vec<Vec<Saved>>,
    /// Other 2xx: for turns that are all new, a 200 means a turn was taken for a repeat.
    other_2xx: u64,
    /// Webhook turns, every one new: anything but a 201 is wrong.
    expect_created: bool,
    non_2xx: u64,
    errors: u64,
    latencies: Latencies,
    pub elapsed: Duration,
    pub cpu: PerOp,
    first_problem: Option<String>,
}

impl Load {
    fn new(workload: &Workload<'_>) -> Self {
        Load {
            created: vec![Vec::new(); workload.calls()],
            expect_created: matches!(workload, Workload::Webhook { .. }),
            ..Load::default()
        }
    }

    fn merge(&mut self, other: Load) {
        for (mine, theirs) in self.created.iter_mut().zip(other.created) {
            mine.extend(theirs);
        }
        self.other_2xx += other.other_2xx;
        self.non_2xx += other.non_2xx;
        self.errors += other.errors;
        self.latencies.add(&other.latencies);
        if self.first_problem.is_none() {
            self.first_problem = other.first_problem;
        }
    }

    pub fn completed(&self) -> u64 {
        self.latencies.len()
    }

    fn created_total(&self) -> u64 {
        self.created.iter().map(|c| c.len() as u64).sum()
    }

    /// Answers other than the expected ones, and transport errors.
    pub fn failures(&self) -> u64 {
        let unexpected = if self.expect_created {
            self.other_2xx
        } else {
            0
        };
        self.non_2xx + self.errors + unexpected
    }

    pub fn measure(&self) -> Measure {
        let done = self.completed() as f64;
        Measure {
            per_second: done / self.elapsed.as_secs_f64().max(1e-9),
            p50_ms: self.latencies.percentile_ms(50.0),
            p99_ms: self.latencies.percentile_ms(99.0),
            cpu_us: self.cpu,
            errors: self.failures(),
            peak_rss_mib: None,
        }
    }

    /// The first thing that went wrong, named.
    pub fn problem(&self, what: &str) -> Option<String> {
        let first = self.first_problem.as_deref().unwrap_or("");
        (self.failures() > 0).then(|| {
            format!(
                "{what}: {} non-2xx, {} transport errors, {} unexpected 2xx (first: {first})",
                self.non_2xx,
                self.errors,
                self.failures() - self.non_2xx - self.errors
            )
        })
    }

    async fn record(
        &mut self,
        call: usize,
        sent: Instant,
        result: reqwest::Result<reqwest::Response>,
    ) {
        let answer = match result {
            Ok(response) => {
                let status = response.status().as_u16();
                response.text().await.map(|body| (status, body))
            }
            Err(e) => Err(e),
        };
        match answer {
            Ok((status, body)) => {
                self.latencies.record(sent.elapsed());
                match status {
                    201 => match serde_json::from_str::<Saved>(&body) {
                        Ok(saved) => {
                            if let Some(call) = self.created.get_mut(call) {
                                call.push(saved);
                            }
                        }
                        Err(e) => self.problem_seen(format!("201 without ids ({e}): {body}")),
                    },
                    200..=299 => {
                        self.other_2xx += 1;
                        if self.expect_created {
                            self.first_problem.get_or_insert_with(|| {
                                format!("HTTP {status} for a new turn: {}", clip(&body))
                            });
                        }
                    }
                    _ => {
                        self.non_2xx += 1;
                        self.first_problem
                            .get_or_insert_with(|| format!("HTTP {status}: {}", clip(&body)));
                    }
                }
            }
            Err(e) => {
                self.errors += 1;
                self.first_problem.get_or_insert_with(|| e.to_string());
            }
        }
    }

    fn problem_seen(&mut self, problem: String) {
        self.non_2xx += 1;
        self.first_problem.get_or_insert(problem);
    }
}

/// The start of a response body, enough to say what went wrong.
fn clip(text: &str) -> String {
    text.chars().take(300).collect()
}

/// The call that request `n` (1, 2, ...) of sender `sender` goes to. With no more calls
/// than senders, sender i always posts to call i % calls; with more, the calls are split
/// among the senders (sender i owns i, i + senders, ...) and each cycles through its own,
/// so every call gets turns and, when calls is a multiple of senders, no two senders share one.
fn call_for(sender: usize, n: u64, senders: usize, calls: usize) -> usize {
    let calls = calls.max(1);
    let senders = senders.max(1);
    let sender = sender % senders;
    if calls <= senders {
        return sender % calls;
    }
    let owned = (calls - sender).div_ceil(senders);
    let turn = usize::try_from(n.saturating_sub(1) % owned as u64).unwrap_or(0);
    sender + senders * turn
}

/// Where the requests go and what they are.
pub struct Target<'a> {
    pub client: &'a reqwest::Client,
    pub base_url: &'a str,
    pub workload: &'a Workload<'a>,
}

/// How the requests leave.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// This many senders, each sending its next request when the last is answered.
    Closed { clients: u32 },
    /// This many requests per second on a schedule, whatever the answers do.
    Rate(u32),
}

impl Target<'_> {
    /// Requests for `duration` (at a fixed rate: the last one leaves then; all are awaited).
    pub async fn run(&self, mode: Mode, duration: Duration) -> Load {
        match mode {
            Mode::Closed { clients } => self.closed_loop(clients, duration).await,
            Mode::Rate(rate) => self.fixed_rate(rate, duration).await,
        }
    }

    /// `clients` senders, each sending its next request when the last is answered.
    async fn closed_loop(&self, clients: u32, duration: Duration) -> Load {
        let (client, base_url, workload) = (self.client, self.base_url, self.workload);
        let senders = clients as usize;
        let calls = workload.calls();
        let deadline = Instant::now() + duration;
        let runs = (0..senders).map(|sender| async move {
            let mut load = Load::new(workload);
            let mut n = 0;
            while Instant::now() < deadline {
                n += 1;
                let call = call_for(sender, n, senders, calls);
                let sent = Instant::now();
                let result = workload
                    .request(client, base_url, call, sender, n)
                    .send()
                    .await;
                let failed = result.is_err();
                load.record(call, sent, result).await;
                if failed {
                    // Don't spin if the server has gone away.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            load
        });
        let mut total = Load::new(workload);
        for load in futures_util::future::join_all(runs).await {
            total.merge(load);
        }
        total
    }

    /// `rate` requests per second on a schedule: request k leaves at k / rate seconds, to
    /// call k % calls, whether or not the earlier ones were answered.
    async fn fixed_rate(&self, rate: u32, duration: Duration) -> Load {
        let (client, base_url, workload) = (self.client, self.base_url, self.workload);
        let calls = workload.calls();
        let total = (duration.as_secs_f64() * f64::from(rate)) as u64;
        let start = tokio::time::Instant::now();
        let mut in_flight = JoinSet::new();
        for k in 0..total {
            let at = start + Duration::from_secs_f64(k as f64 / f64::from(rate));
            tokio::time::sleep_until(at).await;
            let call = (k as usize) % calls;
            let request = workload.request(client, base_url, call, 0, k + 1);
            let mut load = Load::new(workload);
            in_flight.spawn(async move {
                let result = request.send().await;
                load.record(call, at.into_std(), result).await;
                load
            });
        }
        let mut total_load = Load::new(workload);
        while let Some(done) = in_flight.join_next().await {
            match done {
                Ok(load) => total_load.merge(load),
                Err(e) => total_load.problem_seen(format!("a request task failed: {e}")),
            }
        }
        total_load
    }
}

#[derive(Deserialize)]
struct Transcript {
    transcriptions: Vec<Turn>,
}

#[derive(Deserialize)]
pub struct Turn {
    pub id: i64,
    pub sequence_number: i32,
    pub message_text: String,
}

/// Every call's stored transcript against the 201s it got: numbers exactly 1..=n in
/// order, no message twice, and the ids of every 201 among the stored rows (and no others).
pub async fn check_transcripts(
    client: &reqwest::Client,
    base_url: &str,
    call_sids: &[String],
    load: &Load,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (call_sid, created) in call_sids.iter().zip(&load.created) {
        if let Err(problem) = check_transcript(client, base_url, call_sid, created).await {
            problems.push(format!("transcript of {call_sid}: {problem}"));
        }
    }
    if problems.is_empty() && load.created_total() == 0 && !call_sids.is_empty() {
        problems.push("no turn was stored at all".to_string());
    }
    problems
}

/// A call's stored turns, in sequence order, through `GET /calls/{sid}/transcriptions`.
pub async fn transcript(
    client: &reqwest::Client,
    base_url: &str,
    call_sid: &str,
) -> Result<Vec<Turn>, String> {
    let transcript: Transcript = client
        .get(format!("{base_url}/calls/{call_sid}/transcriptions"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    Ok(transcript.transcriptions)
}

async fn check_transcript(
    client: &reqwest::Client,
    base_url: &str,
    call_sid: &str,
    created: &[Saved],
) -> Result<(), String> {
    let turns = transcript(client, base_url, call_sid).await?;
    sequence_problem(&turns, created).map_or(Ok(()), Err)
}

/// What is wrong with `turns`, if anything, given the 201s that created them.
fn sequence_problem(turns: &[Turn], created: &[Saved]) -> Option<String> {
    let mut messages = HashSet::new();
    for (expected, turn) in (1..).zip(turns) {
        if turn.sequence_number != expected {
            return Some(format!(
                "turn {expected} has sequence_number {}",
                turn.sequence_number
            ));
        }
        if !messages.insert(turn.message_text.as_str()) {
            return Some(format!("message `{}` is stored twice", turn.message_text));
        }
    }
    let mut stored: Vec<Saved> = turns
        .iter()
        .map(|t| Saved {
            transcription_id: t.id,
            sequence_number: t.sequence_number,
        })
        .collect();
    let mut answered = created.to_vec();
    stored.sort_unstable();
    answered.sort_unstable();
    if stored != answered {
        return Some(format!(
            "{} turns stored but {} answered 201, or their ids differ",
            stored.len(),
            answered.len()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_senders_over_calls() {
        assert!((0..16).all(|s| (1..50).all(|n| call_for(s, n, 16, 1) == 0)));
        for sender in 0..32 {
            assert!((1..20).all(|n| call_for(sender, n, 32, 16) == sender % 16));
        }
        // More calls than senders: together they cover every call once per cycle.
        for (senders, calls) in [(32, 64), (3, 8), (1, 5)] {
            let mut owner = vec![None; calls];
            for sender in 0..senders {
                let owned = (calls - sender).div_ceil(senders) as u64;
                for n in 1..=owned {
                    let call = call_for(sender, n, senders, calls);
                    assert_eq!(call_for(sender, n + owned, senders, calls), call);
                    assert_eq!(owner[call].replace(sender), None, "call {call} owned twice");
                }
            }
            assert!(owner.iter().all(Option::is_some));
        }
    }

    fn turn(id: i64, sequence_number: i32, message: &str) -> Turn {
        Turn {
            id,
            sequence_number,
            message_text: message.to_string(),
        }
    }

    fn saved(transcription_id: i64, sequence_number: i32) -> Saved {
        Saved {
            transcription_id,
            sequence_number,
        }
    }

    #[test]
    fn checks_transcripts_against_the_201s() {
        let good = [turn(10, 1, "a"), turn(12, 2, "b")];
        assert_eq!(sequence_problem(&good, &[saved(12, 2), saved(10, 1)]), None);
        assert!(
            sequence_problem(&good, &[saved(10, 1)]).is_some(),
            "a row nobody got"
        );
        assert!(
            sequence_problem(&good, &[saved(10, 1), saved(11, 2)]).is_some(),
            "other ids"
        );
        let gap = [turn(10, 1, "a"), turn(12, 3, "b")];
        assert!(sequence_problem(&gap, &[saved(10, 1), saved(12, 3)]).is_some());
        let twice = [turn(10, 1, "a"), turn(12, 2, "a")];
        assert!(sequence_problem(&twice, &[saved(10, 1), saved(12, 2)]).is_some());
    }

    #[test]
    fn a_load_counts_what_went_wrong() {
        let sids = ["a".to_string(), "b".to_string()];
        let mut load = Load::new(&Workload::webhook(&sids, 1));
        for us in [1000, 3000, 2000] {
            load.latencies.record_us(us);
        }
        load.elapsed = Duration::from_secs(1);
        load.other_2xx = 1;
        let m = load.measure();
        assert_eq!((m.per_second, m.p50_ms, m.errors), (3.0, Some(2.0), 1));
        assert!(load.problem("x").is_some());
        let mut health = Load::new(&Workload::Healthz);
        health.other_2xx = 1;
        assert_eq!((health.measure().errors, health.problem("x")), (0, None));
        load.problem_seen("boom".to_string());
        assert!(load.problem("x").is_some_and(|p| p.contains("boom")));
    }
}
