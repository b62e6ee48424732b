//! Issue 15's rows: `POST /batches` with `--batch-drivers` drivers (time to the 202, the
//! service's peak RSS), then the dialer's placement rate against a fake ElevenLabs of its
//! own, over a bounded window from the first outbound call; one instance, then two on the
//! same database. Each measurement gets fresh servers, so the peak RSS is the batch's alone,
//! and cancels its batch at the end so nothing dials on afterwards.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::json;

use crate::Options;
use crate::batch::{API_TOKEN, Batch};
use crate::fake::FakeElevenLabs;
use crate::server::{Launch, Server, free_port};

/// How often each instance's dialer looks for due attempts (the server's default is 1 s).
pub const DIALER_POLL_MS: &str = "100";
/// Driver ids of the dialer batches start here, clear of the other batches.
pub const FIRST_DRIVER: u32 = 2_000_001;
/// The wait for the first outbound call after the 202.
const FIRST_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// One dialer measurement.
#[derive(Clone, Copy, Debug)]
pub struct Dialing {
    pub instances: u32,
    pub drivers: u32,
    /// From sending `POST /batches` to its 202.
    pub accepted: Duration,
    /// The most VmHWM of any instance at the end, in MiB.
    pub peak_rss_mib: Option<f64>,
    /// Outbound calls that arrived within `window` of the first one.
    pub placed: usize,
    pub window: Duration,
    pub concurrency: u32,
    pub delay: Duration,
}

impl Dialing {
    pub fn rate(&self) -> f64 {
        self.placed as f64 / self.window.as_secs_f64().max(1e-9)
    }

    /// `CALL_CONCURRENCY / latency` per instance.
    pub fn ideal(&self) -> f64 {
        f64::from(self.instances * self.concurrency) / self.delay.as_secs_f64().max(1e-3)
    }
}

#[derive(Deserialize)]
struct Accepted {
    batch_id: String,
}

/// `instances` fresh servers on `schema`, one batch of `--batch-drivers` drivers posted to
/// the first; the 202's time, the placement rate over `--dialer-seconds`, the peak RSS.
pub async fn measure(
    options: &Options,
    schema: &str,
    instances: u32,
    first_driver: u32,
) -> Result<Dialing> {
    let delay = Duration::from_millis(options.delay_ms);
    let fake = FakeElevenLabs::start(delay).await;
    let mut batch = Batch::new(first_driver, options.batch_drivers);
    // Any hour and no re-dial: the bench runs at whatever time it is, and measures first attempts.
    batch.body["schedule"] = json!({"window": "any", "redialDelaysSecs": []});
    let body = serde_json::to_vec(&batch.body).context("serializing the batch")?;
    let mut env = vec![
        ("DIALER_POLL_MS", DIALER_POLL_MS.to_string()),
        ("MAX_BODY_BYTES", (body.len() * 2).to_string()),
    ];
    if let Some(n) = options.call_concurrency {
        env.push(("CALL_CONCURRENCY", n.to_string()));
    }
    let launch = Launch {
        bin: options.server_bin.clone(),
        database_url: options.database_url.clone(),
        schema: schema.to_string(),
        fake_uri: fake.uri(),
        env,
    };
    let mut servers = Vec::new();
    for _ in 0..instances {
        servers.push(Server::launch(launch.clone(), free_port()?).await?);
    }
    let result = dial(options, &servers, &fake, body, delay).await;
    for server in &mut servers {
        server.stop().await;
    }
    let (accepted, peak_rss_mib, placed) = result?;
    Ok(Dialing {
        instances,
        drivers: options.batch_drivers,
        accepted,
        peak_rss_mib,
        placed,
        window: options.dialer_window(),
        concurrency: options
            .call_concurrency
            .unwrap_or(crate::SERVER_DEFAULT_CONCURRENCY),
        delay,
    })
}

/// Post the batch, count the placements in the window, cancel the batch: the time to the
/// 202, the instances' peak RSS in MiB, the placements.
async fn dial(
    options: &Options,
    servers: &[Server],
    fake: &FakeElevenLabs,
    body: Vec<u8>,
    delay: Duration,
) -> Result<(Duration, Option<f64>, usize)> {
    let Some(first) = servers.first() else {
        bail!("no server to post the batch to");
    };
    let client = reqwest::Client::new();
    let started = Instant::now();
    let response = client
        .post(format!("{}/batches", first.base_url()))
        .bearer_auth(API_TOKEN)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .context("POST /batches")?;
    let accepted = started.elapsed();
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if status.as_u16() != 202 {
        bail!(
            "POST /batches of {} drivers: expected 202, got {status}: {}",
            options.batch_drivers,
            text.chars().take(300).collect::<String>()
        );
    }
    let batch: Accepted = serde_json::from_str(&text).context("the 202's batch_id")?;

    let first_call = loop {
        if let Some(t) = fake.arrivals_since(started).first() {
            break *t;
        }
        if started.elapsed() > FIRST_CALL_TIMEOUT {
            bail!("no outbound call within {FIRST_CALL_TIMEOUT:?} of the batch's 202");
        }
        tokio::time::sleep(delay.min(Duration::from_millis(20))).await;
    };
    let window = options.dialer_window();
    tokio::time::sleep_until((first_call + window).into()).await;
    let placed = fake
        .arrivals_since(first_call)
        .iter()
        .filter(|t| t.duration_since(first_call) < window)
        .count();
    let peak_rss = servers
        .iter()
        .filter_map(Server::peak_rss_kib)
        .max()
        .map(|kib| kib as f64 / 1024.0);
    let cancel = client
        .post(format!(
            "{}/batches/{}/cancel",
            first.base_url(),
            batch.batch_id
        ))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status);
    if let Err(e) = cancel {
        bail!("cancelling the dialer's batch: {e}");
    }
    Ok((accepted, peak_rss, placed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ideal_rate_is_concurrency_over_latency_per_instance() {
        let d = Dialing {
            instances: 2,
            drivers: 10,
            accepted: Duration::ZERO,
            peak_rss_mib: None,
            placed: 640,
            window: Duration::from_secs(10),
            concurrency: 8,
            delay: Duration::from_millis(200),
        };
        assert!((d.ideal() - 80.0).abs() < 1e-9);
        assert!((d.rate() - 64.0).abs() < 1e-9);
    }
}
