//! Drill 4: one Call's row locked by another session while turns for that call pile up
//! (more of them than the pool has connections). Turns for the locked call should fail
//! fast with the error envelope (DATABASE_LOCK_TIMEOUT_MS, DATABASE_POOL_WAIT_MS); the
//! other routes should keep answering.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Deserialize;

use super::deliver::{self, Answer, Delivery};
use super::pg::RowLock;
use super::{Options, Row};
use crate::batch::API_TOKEN;
use crate::pgbench::Database;
use crate::report::Latencies;
use crate::server::Server;

/// Requests at once for the locked call: well over DATABASE_POOL_SIZE (10).
const LOCKED_SENDERS: usize = 24;
/// Each kind of other request is sent by this many loops.
const OTHER_SENDERS: usize = 2;

/// The error envelope: what a 5xx must carry.
#[derive(Deserialize)]
struct Envelope {
    status: String,
    message: String,
    details: String,
}

#[derive(Default)]
struct Seen {
    latencies: Latencies,
    /// Answers by status ("none" for no answer).
    statuses: std::collections::BTreeMap<String, u64>,
    /// 5xx whose body was not the envelope.
    bare_errors: u64,
    acked: Vec<(Delivery, crate::load::Saved)>,
}

impl Seen {
    fn merge(&mut self, other: Seen) {
        self.latencies.add(&other.latencies);
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.bare_errors += other.bare_errors;
        self.acked.extend(other.acked);
    }

    fn statuses(&self) -> String {
        self.statuses
            .iter()
            .map(|(status, n)| format!("{n}×{status}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn summary(&mut self) -> String {
        format!("{}, {}", self.latencies.p50_max(), self.statuses())
    }
}

fn is_envelope(body: &str) -> bool {
    serde_json::from_str::<Envelope>(body)
        .is_ok_and(|e| e.status == "error" && !e.message.is_empty() && !e.details.is_empty())
}

/// Turns to `sids[call]` from `senders` loops until `deadline`.
async fn turns(
    client: &reqwest::Client,
    base_url: &str,
    sids: &[String],
    call: usize,
    senders: usize,
    deadline: Instant,
    tag: &str,
) -> Seen {
    let timestamp = deliver::now_rfc3339();
    let runs = (0..senders).map(|sender| {
        let timestamp = &timestamp;
        async move {
            let mut seen = Seen::default();
            let mut n = 0;
            while Instant::now() < deadline {
                n += 1;
                let turn = Delivery::new(
                    call,
                    &sids[call],
                    format!("drill {tag} sender {sender} turn {n}"),
                    timestamp,
                );
                let sent = Instant::now();
                let answer = deliver::send(client, base_url, &turn).await;
                seen.latencies.record(sent.elapsed());
                let status = match &answer {
                    Answer::Created(_) => "201".to_string(),
                    Answer::Repeat(_) => "200".to_string(),
                    Answer::Status(status, body) => {
                        if *status >= 500 && !is_envelope(body) {
                            seen.bare_errors += 1;
                        }
                        status.to_string()
                    }
                    Answer::Transport(_) => "none".to_string(),
                };
                *seen.statuses.entry(status).or_default() += 1;
                if let Some(saved) = answer.acknowledged() {
                    seen.acked.push((turn, saved));
                }
            }
            seen
        }
    });
    let mut total = Seen::default();
    for seen in futures_util::future::join_all(runs).await {
        total.merge(seen);
    }
    total
}

/// GETs of `url` from `senders` loops until `deadline`.
async fn gets(client: &reqwest::Client, url: &str, senders: usize, deadline: Instant) -> Seen {
    let runs = (0..senders).map(|_| async move {
        let mut seen = Seen::default();
        while Instant::now() < deadline {
            let sent = Instant::now();
            let status = client
                .get(url)
                .bearer_auth(API_TOKEN)
                .send()
                .await
                .map_or_else(|_| "none".to_string(), |r| r.status().as_u16().to_string());
            seen.latencies.record(sent.elapsed());
            *seen.statuses.entry(status).or_default() += 1;
            // Back-to-back GETs would measure the client; a reader polls.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen
    });
    let mut total = Seen::default();
    for seen in futures_util::future::join_all(runs).await {
        total.merge(seen);
    }
    total
}

pub async fn drill(
    options: &Options,
    db: &Database,
    server: &Server,
    client: &reqwest::Client,
    sids: &[String],
) -> Result<Row> {
    // sids[0] is locked; sids[1] is read; sids[2..] take turns.
    let lock = RowLock::hold(db, &sids[0]).await?;
    let base = server.base_url();
    let deadline = Instant::now() + options.duration();
    let readyz = format!("{base}/readyz");
    let call = format!("{base}/calls/{}", sids[1]);
    let (mut locked, mut ready, mut read, mut others) = tokio::join!(
        turns(client, base, sids, 0, LOCKED_SENDERS, deadline, "locked"),
        gets(client, &readyz, OTHER_SENDERS, deadline),
        gets(client, &call, OTHER_SENDERS, deadline),
        async {
            let (a, b) = tokio::join!(
                turns(client, base, sids, 2, OTHER_SENDERS, deadline, "other"),
                turns(client, base, sids, 3, OTHER_SENDERS, deadline, "other"),
            );
            let mut both = a;
            both.merge(b);
            both
        }
    );
    lock.release().await?;
    let mut acked = std::mem::take(&mut locked.acked);
    acked.extend(std::mem::take(&mut others.acked));
    let check = deliver::check(client, base, sids, &acked).await;

    let mut notes = Vec::new();
    let locked_5xx: u64 = locked
        .statuses
        .iter()
        .filter(|(s, _)| s.starts_with('5'))
        .map(|(_, n)| n)
        .sum();
    if locked_5xx == 0 {
        notes.push("no 5xx for the locked call".to_string());
    }
    if locked.bare_errors + others.bare_errors > 0 {
        notes.push(format!(
            "{} 5xx without the error envelope",
            locked.bare_errors + others.bare_errors
        ));
    }
    let slowest = |s: &Seen| s.latencies.max();
    if slowest(&ready) > Duration::from_secs(3) || slowest(&read) > Duration::from_secs(3) {
        notes.push("a read route waited over 3 s".to_string());
    }
    let figures = format!(
        "{LOCKED_SENDERS} senders on the locked call: {}; /readyz: {}; GET /calls/{{other}}: {}; \
         turns to 2 other calls: {}",
        locked.summary(),
        ready.summary(),
        read.summary(),
        others.summary()
    );
    Ok(Row {
        drill: "4. a Call row locked FOR UPDATE by psql, pool saturated",
        acked: Some(acked.len() as u64),
        outage: None,
        figures,
        check: Some(check),
        notes,
    })
}
