//! Batch placement: `POST /driver_data/call-elevenlabs` for one driver (the baseline) and
//! for `--drivers` drivers, against the fake ElevenLabs' fixed answer delay.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::json;

use crate::Options;
use crate::fake::FakeElevenLabs;

pub const API_TOKEN: &str = "bench-api-token";
/// Generous: a small CALL_CONCURRENCY dials the drivers nearly one after another.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Driver ids of the large batch start here (the baseline is driver 1).
const LARGE_FIRST_DRIVER: u32 = 1001;

/// One batch request, built up front so its size is known before the server starts.
pub struct Batch {
    pub body: serde_json::Value,
    pub call_sids: Vec<String>,
}

#[derive(Deserialize)]
struct BatchResponse {
    calls: Vec<PlacedCall>,
}

#[derive(Deserialize)]
struct PlacedCall {
    conversation_id: Option<String>,
}

impl Batch {
    /// Drivers `first_id..first_id + drivers`, each with its own phone number (`+1555` and
    /// the id in 7 digits), under a timestamp no other batch of this run has.
    pub fn new(first_id: u32, drivers: u32) -> Self {
        // Digits only: the timestamp becomes part of each call_sid.
        let timestamp = time::OffsetDateTime::now_utc()
            .unix_timestamp_nanos()
            .to_string();
        let ids: Vec<u32> = (first_id..first_id + drivers).collect();
        let drivers: Vec<_> = ids
            .iter()
            .map(|id| {
                json!({
                    "driverId": id,
                    "driverName": format!("Bench Driver {id}"),
                    "phoneNumber": format!("+1555{id:07}"),
                    "customRules": "",
                    "violations": {
                        "tripId": format!("TRIP-{id}"),
                        "violationDetails": [{"type": "temperature", "description": "Reefer at 45F, required 34-38F"}],
                    },
                })
            })
            .collect();
        Batch {
            body: json!({"callType": "violation", "timestamp": timestamp, "drivers": drivers}),
            call_sids: ids
                .iter()
                .map(|id| format!("EL_{id}_{timestamp}"))
                .collect(),
        }
    }

    /// Post the batch and check that every call was placed; returns the wall time.
    pub async fn post(
        &self,
        client: &reqwest::Client,
        base_url: &str,
        delay: Duration,
    ) -> Result<Duration> {
        let n = u32::try_from(self.call_sids.len()).unwrap_or(u32::MAX);
        let timeout = REQUEST_TIMEOUT + delay.saturating_mul(n).saturating_mul(2);
        let started = Instant::now();
        // Never retried: a retry would get 409.
        let response = client
            .post(format!("{base_url}/driver_data/call-elevenlabs"))
            .bearer_auth(API_TOKEN)
            .json(&self.body)
            .timeout(timeout)
            .send()
            .await
            .context("POST /driver_data/call-elevenlabs")?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let elapsed = started.elapsed();
        if status.as_u16() != 200 {
            bail!("batch of {n} drivers: expected HTTP 200, got {status}: {text}");
        }
        let answer: BatchResponse =
            serde_json::from_str(&text).with_context(|| format!("batch response: {text}"))?;
        let placed = answer
            .calls
            .iter()
            .filter(|c| c.conversation_id.is_some())
            .count();
        if placed != self.call_sids.len() {
            bail!("batch: {placed} of {n} calls got a conversation_id: {text}");
        }
        Ok(elapsed)
    }
}

/// One round's batch-placement figures.
#[derive(Clone, Copy, Debug)]
pub struct Placement {
    pub baseline: Duration,
    pub large: Duration,
    pub drivers: u32,
    pub concurrency: u32,
    pub peak: usize,
}

pub async fn placement(
    client: &reqwest::Client,
    base_url: &str,
    fake: &FakeElevenLabs,
    options: &Options,
) -> Result<Placement> {
    let delay = Duration::from_millis(options.delay_ms);
    // Ids 1 and 1001.. repeat across rounds; the timestamps keep the call_sids apart.
    let baseline = Batch::new(1, 1).post(client, base_url, delay).await?;
    let since = Instant::now();
    let large = Batch::new(LARGE_FIRST_DRIVER, options.drivers)
        .post(client, base_url, delay)
        .await?;
    Ok(Placement {
        baseline,
        large,
        drivers: options.drivers,
        concurrency: options
            .call_concurrency
            .unwrap_or(crate::SERVER_DEFAULT_CONCURRENCY),
        peak: fake.peak_since(since),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_have_distinct_drivers_phones_and_call_sids() {
        let batch = Batch::new(1001, 2);
        let phones: Vec<_> = batch.body["drivers"]
            .as_array()
            .map(|d| d.iter().filter_map(|d| d["phoneNumber"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(phones, ["+15550001001", "+15550001002"]);
        let timestamp = batch.body["timestamp"].as_str().unwrap_or_default();
        assert_eq!(
            batch.call_sids,
            [
                format!("EL_1001_{timestamp}"),
                format!("EL_1002_{timestamp}")
            ]
        );
        assert_ne!(
            Batch::new(1001, 1).call_sids[0],
            Batch::new(1001, 1).call_sids[0]
        );
    }
}
