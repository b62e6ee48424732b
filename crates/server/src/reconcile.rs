//! The stale-call repair in the service: a timer that runs one pass per tick (when this
//! instance gets the reconciler lock), the metrics of a pass, and the line printed per
//! Call by `calls-server reconcile`. The rules themselves are in the domain
//! (`ReconcileStale`).

use std::sync::Arc;
use std::time::Duration;

use calls_domain::service::{PassOutcome, ReconcileError, ReconcileStale, Reconciled};
use tokio::task::JoinHandle;

use crate::metrics::Metrics;

/// Runs one pass and counts what it did.
///
/// # Errors
/// The database could not be asked for the lock or the stale Calls.
pub async fn run_pass(
    reconciler: &ReconcileStale,
    metrics: &Metrics,
    older_than: Duration,
) -> Result<PassOutcome, ReconcileError> {
    let outcome = reconciler.execute(older_than).await;
    let pass = match &outcome {
        Ok(PassOutcome::Ran(lines)) => {
            for line in lines {
                metrics.call_reconciled(line.result.label());
            }
            if !lines.is_empty() {
                let count =
                    |label: &str| lines.iter().filter(|l| l.result.label() == label).count();
                tracing::info!(
                    examined = lines.len(),
                    completed = count("completed"),
                    failed = count("failed") + count("not_found"),
                    pending = count("pending"),
                    errors = count("error"),
                    "stale-call reconciliation pass done"
                );
            }
            "ran"
        }
        Ok(PassOutcome::Skipped) => "skipped",
        Err(_) => "error",
    };
    metrics.reconcile_pass(pass);
    outcome
}

/// One line of `calls-server reconcile`: call_sid, result, detail, tab-separated (a
/// call_sid may contain spaces, never a tab).
pub fn line(reconciled: &Reconciled) -> String {
    format!(
        "{}\t{}\t{}",
        reconciled.call_sid,
        reconciled.result.label(),
        reconciled.result.detail().replace(['\t', '\n', '\r'], " ")
    )
}

/// Every `interval` (the first time one interval after the start), one pass over the
/// Calls older than `older_than`. Nothing stops the loop: a failed or panicking pass is
/// logged and the next tick tries again.
pub fn spawn_timer(
    reconciler: Arc<ReconcileStale>,
    metrics: Arc<Metrics>,
    interval: Duration,
    older_than: Duration,
) -> JoinHandle<()> {
    tracing::info!(
        interval_secs = interval.as_secs(),
        older_than_secs = older_than.as_secs(),
        "stale-call reconciliation timer started"
    );
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        // A pass longer than the interval delays the next one instead of bunching them.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let reconciler = reconciler.clone();
            let metrics = metrics.clone();
            // Its own task, so even a panic in a pass cannot end the timer.
            let pass =
                tokio::spawn(async move { run_pass(&reconciler, &metrics, older_than).await });
            match pass.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(
                    error.cause_chain = ?e,
                    error.message = %e,
                    "stale-call reconciliation pass failed; retrying at the next tick"
                ),
                Err(e) => tracing::error!(
                    error = %e,
                    "stale-call reconciliation pass panicked; retrying at the next tick"
                ),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use calls_domain::CallSid;
    use calls_domain::service::ReconcileResult;

    #[test]
    fn a_line_is_call_sid_result_and_detail_separated_by_tabs() {
        let reconciled = Reconciled {
            call_sid: CallSid::parse("EL_7_2024-11-21T10:00:00Z").expect("sid"),
            result: ReconcileResult::Error {
                error: "HTTP 500\twith\ncontrol characters".into(),
            },
        };
        assert_eq!(
            line(&reconciled),
            "EL_7_2024-11-21T10:00:00Z\terror\tHTTP 500 with control characters"
        );
    }
}
