//! The dialer loop of `serve` (SPEC "The dialer"): every `DIALER_POLL_MS` it claims due
//! recipients — at most as many as there are free outbound-call permits — and dials each
//! claim in its own task. The permits are one semaphore of `CALL_CONCURRENCY` per
//! instance, shared with the batch-call endpoint, so the two together never have more
//! outbound requests in flight than that. The steps themselves (claim, pre-dial check,
//! dial, record) are the domain's [`Dialer`]; this module only owns time and concurrency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use calls_domain::ports::ClaimedAttempt;
use calls_domain::service::{DialOutcome, Dialer};
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use crate::metrics::Metrics;

/// The sweep (settle what was missed, expire, release dead claims) runs every this many
/// polls, and at least this often.
const SWEEP_EVERY_POLLS: u32 = 5;
const SWEEP_AT_LEAST_EVERY: Duration = Duration::from_secs(30);
/// After a stop, dials in flight get this long to finish (their Calls are written; one cut
/// short is settled by the stale-call repair).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Backoff after the database failed a claim.
const CLAIM_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// The running loop; [`DialerHandle::stop`] ends it gracefully.
pub struct DialerHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl DialerHandle {
    /// Stops claiming, then waits (bounded) for the dials in flight.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "dialer loop ended abnormally");
        }
    }
}

pub fn spawn(
    dialer: Arc<Dialer>,
    permits: Arc<Semaphore>,
    poll: Duration,
    metrics: Arc<Metrics>,
) -> DialerHandle {
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(run(dialer, permits, poll, metrics, stopped));
    DialerHandle { stop, task }
}

async fn run(
    dialer: Arc<Dialer>,
    permits: Arc<Semaphore>,
    poll: Duration,
    metrics: Arc<Metrics>,
    mut stopped: watch::Receiver<bool>,
) {
    tracing::info!(poll_ms = poll.as_millis(), "dialer started");
    let mut in_flight = JoinSet::new();
    let sweep_every = (poll * SWEEP_EVERY_POLLS).min(SWEEP_AT_LEAST_EVERY);
    let mut last_sweep: Option<Instant> = None;
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => break,
        }
        while in_flight.try_join_next().is_some() {}
        if last_sweep.is_none_or(|at| at.elapsed() >= sweep_every) {
            last_sweep = Some(Instant::now());
            sweep(&dialer).await;
        }
        // Claim while recipients are due and permits free up; then wait for the next tick.
        loop {
            let reserved = reserve(&permits);
            if reserved.is_empty() {
                break;
            }
            let wanted = reserved.len();
            let limit = u32::try_from(wanted).unwrap_or(u32::MAX);
            let claims = match dialer.claim(OffsetDateTime::now_utc(), limit).await {
                Ok(claims) => claims,
                Err(e) => {
                    tracing::warn!(error.message = %e, "dialer could not claim due recipients");
                    tokio::time::sleep(CLAIM_ERROR_PAUSE).await;
                    break;
                }
            };
            let got = claims.len();
            for (claim, permit) in claims.into_iter().zip(reserved) {
                let dialer = dialer.clone();
                let metrics = metrics.clone();
                in_flight.spawn(async move { dial_one(&dialer, &metrics, claim, permit).await });
            }
            if got < wanted || *stopped.borrow() {
                break;
            }
            // Every permit got a claim: wait for one to free up and claim again at once,
            // so a large batch is dialed at CALL_CONCURRENCY, not one claim per tick.
            tokio::select! {
                permit = permits.clone().acquire_owned() => drop(permit),
                _ = stopped.changed() => break,
            }
        }
    }
    tracing::info!(
        in_flight = in_flight.len(),
        "dialer stopping; waiting for dials in flight"
    );
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while in_flight.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = in_flight.len(),
            "dials still in flight after the drain timeout; the stale-call repair settles them"
        );
        in_flight.abort_all();
    }
    tracing::info!("dialer stopped");
}

/// Takes every permit that is free now.
fn reserve(permits: &Arc<Semaphore>) -> Vec<OwnedSemaphorePermit> {
    let mut reserved = Vec::new();
    while let Ok(permit) = permits.clone().try_acquire_owned() {
        reserved.push(permit);
    }
    reserved
}

async fn sweep(dialer: &Dialer) {
    match dialer.sweep(OffsetDateTime::now_utc()).await {
        Ok(outcome) => {
            if outcome.settled + outcome.expired + outcome.released > 0 {
                tracing::info!(
                    settled = outcome.settled,
                    expired = outcome.expired,
                    released = outcome.released,
                    "dialer sweep"
                );
            }
        }
        Err(e) => tracing::warn!(error.message = %e, "dialer sweep failed"),
    }
}

/// Dials one claim while holding its permit; also used by the batch-call endpoint.
pub async fn dial_one(
    dialer: &Dialer,
    metrics: &Metrics,
    claim: ClaimedAttempt,
    permit: OwnedSemaphorePermit,
) -> DialOutcome {
    let lag = OffsetDateTime::now_utc() - claim.due_at;
    metrics.dialer_lag.observe(lag.as_seconds_f64().max(0.0));
    let outcome = dialer.dial(&claim).await;
    drop(permit);
    metrics.record_dial(&outcome);
    outcome
}
