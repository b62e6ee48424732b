//! Drill 5: clients without credentials that trickle their bodies a byte at a time, and
//! clients that send 16 MiB bodies, all at once; the server's memory (VmHWM, VmRSS) and
//! how each was cut off (408, 413, 401 or a closed connection), with /readyz meanwhile.
//! The same again at the same time with the webhook secret (a leaked secret, or a broken
//! sender): those get past the 401 to the body limit and the body read timeout.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::Row;
use crate::report::Latencies;
use crate::server::Server;

const SLOW_CLIENTS: usize = 32;
const BIG_CLIENTS: usize = 32;
const BIG_BODY: usize = 16 * 1024 * 1024;
/// A trickling client sends one byte this often, for at most `TRICKLE_FOR`.
const TRICKLE_EVERY: Duration = Duration::from_millis(250);
const TRICKLE_FOR: Duration = Duration::from_secs(60);
/// The client gives up on its own after this; the server should have cut it off sooner.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(45);

#[derive(Default)]
struct Ends {
    /// How each ended: the status, or "closed" when the server hung up without one.
    by: BTreeMap<String, u64>,
    /// Time until the end, per client.
    after: Latencies,
}

impl Ends {
    fn add(&mut self, ended: &str, after: Duration) {
        *self.by.entry(ended.to_string()).or_default() += 1;
        self.after.record(after);
    }

    fn summary(&mut self) -> String {
        let by: Vec<String> = self.by.iter().map(|(s, n)| format!("{n}×{s}")).collect();
        format!("{}, ended {}", by.join(" "), self.after.p50_max())
    }
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    body: reqwest::Body,
    authenticated: bool,
) -> (String, Duration) {
    let sent = Instant::now();
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    if authenticated {
        request = request.bearer_auth(crate::load::WEBHOOK_SECRET);
    }
    let ended = match request.send().await {
        Ok(response) => response.status().as_u16().to_string(),
        Err(e) if e.is_timeout() => "client timeout".to_string(),
        Err(_) => "closed".to_string(),
    };
    (ended, sent.elapsed())
}

/// A body of `{"` and then one space per tick: valid-looking, never finished.
fn trickle() -> reqwest::Body {
    let started = Instant::now();
    let bytes = futures_util::stream::unfold(0u64, move |n| async move {
        if started.elapsed() > TRICKLE_FOR {
            return None;
        }
        if n > 0 {
            tokio::time::sleep(TRICKLE_EVERY).await;
        }
        let chunk: &'static [u8] = if n == 0 { b"{\"" } else { b" " };
        Some((Ok::<_, std::io::Error>(chunk), n + 1))
    });
    reqwest::Body::wrap_stream(bytes)
}

pub async fn drill(server: &Server) -> Result<Row> {
    let client = reqwest::Client::builder()
        .timeout(CLIENT_TIMEOUT)
        // One connection per client, as separate attackers would have.
        .pool_max_idle_per_host(0)
        .build()
        .context("building the HTTP client")?;
    let probe = crate::load::client(4)?;
    let base = server.base_url();
    let url = format!("{base}/webhooks/elevenlabs/transcription");
    let (hwm_before, rss_before) = (server.peak_rss_kib(), server.rss_kib());
    // One 16 MiB buffer shared by every big client.
    let big: &'static [u8] = Box::leak(vec![b' '; BIG_BODY].into_boxed_slice());

    let group = |authenticated: bool| {
        let (client, url) = (&client, &url);
        let slow = futures_util::future::join_all(
            (0..SLOW_CLIENTS).map(move |_| post(client, url, trickle(), authenticated)),
        );
        let huge = futures_util::future::join_all(
            (0..BIG_CLIENTS)
                .map(move |_| post(client, url, reqwest::Body::from(big), authenticated)),
        );
        async move {
            let (slow, huge) = tokio::join!(slow, huge);
            let (mut slow_ends, mut big_ends) = (Ends::default(), Ends::default());
            for (ended, after) in &slow {
                slow_ends.add(ended, *after);
            }
            for (ended, after) in &huge {
                big_ends.add(ended, *after);
            }
            (slow_ends, big_ends)
        }
    };
    let done = AtomicBool::new(false);
    let clients = async {
        let both = tokio::join!(group(false), group(true));
        done.store(true, Ordering::SeqCst);
        both
    };
    let ready = async {
        let mut latencies = Latencies::default();
        let mut failures = 0u64;
        let mut rss_peak = 0u64;
        while !done.load(Ordering::SeqCst) {
            let sent = Instant::now();
            let ok = probe
                .get(format!("{base}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            latencies.record(sent.elapsed());
            failures += u64::from(!ok);
            rss_peak = rss_peak.max(server.rss_kib().unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (latencies, failures, rss_peak)
    };
    let (
        ((mut slow_ends, mut big_ends), (mut slow_auth, mut big_auth)),
        (ready_latencies, ready_failures, rss_peak),
    ) = tokio::join!(clients, ready);
    let (hwm_after, rss_after) = (server.peak_rss_kib(), server.rss_kib());
    let mib =
        |kib: Option<u64>| kib.map_or("?".to_string(), |k| format!("{:.1}", k as f64 / 1024.0));

    let mut notes = Vec::new();
    let uncut = |ends: &Ends| {
        ends.by
            .iter()
            .filter(|(s, _)| s.as_str() == "client timeout" || s.starts_with('2'))
            .map(|(_, n)| n)
            .sum::<u64>()
    };
    let not_cut: u64 = [&slow_ends, &big_ends, &slow_auth, &big_auth]
        .into_iter()
        .map(uncut)
        .sum();
    if not_cut > 0 {
        notes.push(format!("{not_cut} clients were not cut off by the server"));
    }
    if ready_failures > 0 {
        notes.push(format!("{ready_failures} /readyz probes failed meanwhile"));
    }
    let figures = format!(
        "without credentials, {SLOW_CLIENTS} trickling 1 byte/{} ms: {}; {BIG_CLIENTS} × 16 MiB: {}; \
         at the same time with the webhook secret, {SLOW_CLIENTS} trickling: {}; {BIG_CLIENTS} × 16 MiB: {}; \
         server RSS {} MiB before, peak seen {} MiB, {} MiB after; VmHWM {} → {} MiB; /readyz meanwhile {}",
        TRICKLE_EVERY.as_millis(),
        slow_ends.summary(),
        big_ends.summary(),
        slow_auth.summary(),
        big_auth.summary(),
        mib(rss_before),
        mib(Some(rss_peak)),
        mib(rss_after),
        mib(hwm_before),
        mib(hwm_after),
        ready_latencies.p50_max(),
    );
    Ok(Row {
        drill: "5. slow and oversized clients (without credentials, and with the webhook secret)",
        acked: None,
        outage: None,
        figures,
        check: None,
        notes,
    })
}
