//! The service's metrics: typed families registered once in a `prometheus-client`
//! registry, passed to whoever records them (no global state), rendered by `GET /metrics`.
//! Names, labels and meanings are documented in docs/operations.md ("Metrics").

use calls_domain::service::DialOutcome;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Latency buckets in seconds, from 1 ms to 30 s.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route pattern (`/calls/{call_sid}`), or `unmatched`.
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_request_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub webhook_transcription_outcomes: Family<OutcomeLabel, Counter>,
    pub calls_placed: Family<OutcomeLabel, Counter>,
    pub elevenlabs_request_duration: Histogram,
    /// Set from the pool's status when scraped.
    pub db_pool_connections: Family<StateLabel, Gauge>,
    pub db_pool_waiters: Gauge,
    pub db_retries: Counter,
    pub calls_reconciled: Family<ResultLabel, Counter>,
    pub reconcile_passes: Family<OutcomeLabel, Counter>,
    /// Claimed batch attempts by what became of them (see [`Metrics::record_dial`]).
    pub dial_attempts: Family<ResultLabel, Counter>,
    /// Pre-dial checks by answer: `eligible`, `not_eligible`, `failed`.
    pub predial_checks: Family<ResultLabel, Counter>,
    /// Batch recipients by state, all batches; set from the database when scraped.
    pub batch_recipients: Family<StateLabel, Gauge>,
    /// From an attempt's due time to its dial starting (claim, wait for a permit).
    pub dialer_lag: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let http_requests = Family::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            http_requests.clone(),
        );
        let http_request_duration =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register_with_unit(
            "http_request_duration",
            "HTTP request latency by route and method",
            Unit::Seconds,
            http_request_duration.clone(),
        );
        let webhook_transcription_outcomes = Family::default();
        registry.register(
            "webhook_transcription_outcomes",
            "Transcription webhook deliveries by outcome",
            webhook_transcription_outcomes.clone(),
        );
        let calls_placed = Family::default();
        registry.register(
            "calls_placed",
            "Outbound calls by outcome",
            calls_placed.clone(),
        );
        let elevenlabs_request_duration = latency_histogram();
        registry.register_with_unit(
            "elevenlabs_request_duration",
            "Latency of outbound-call requests to the telephony provider",
            Unit::Seconds,
            elevenlabs_request_duration.clone(),
        );
        let db_pool_connections = Family::default();
        registry.register(
            "db_pool_connections",
            "Database pool connections by state",
            db_pool_connections.clone(),
        );
        let db_pool_waiters = Gauge::default();
        registry.register(
            "db_pool_waiters",
            "Requests waiting for a database connection",
            db_pool_waiters.clone(),
        );
        let db_retries = Counter::default();
        registry.register(
            "db_retries",
            "Database operations retried after a transient failure",
            db_retries.clone(),
        );
        let calls_reconciled = Family::default();
        registry.register(
            "calls_reconciled",
            "Stale Calls examined by the reconciler, by result",
            calls_reconciled.clone(),
        );
        let reconcile_passes = Family::default();
        registry.register(
            "reconcile_passes",
            "Stale-call reconciliation passes: ran, skipped (another instance held the lock), error",
            reconcile_passes.clone(),
        );
        let dial_attempts = Family::default();
        registry.register(
            "dial_attempts",
            "Claimed batch attempts by result: placed, failed (re-dialable), rejected (not re-dialable), not_dialed (pre-dial check), abandoned (cancelled), store_failed",
            dial_attempts.clone(),
        );
        let predial_checks = Family::default();
        registry.register(
            "predial_checks",
            "Pre-dial checks by result: eligible, not_eligible, failed",
            predial_checks.clone(),
        );
        let batch_recipients = Family::default();
        registry.register(
            "batch_recipients",
            "Batch recipients by state, all batches (read from the database when scraped)",
            batch_recipients.clone(),
        );
        let dialer_lag = Histogram::new([
            0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
        ]);
        registry.register_with_unit(
            "dialer_lag",
            "Delay from a batch attempt's due time to its dial starting",
            Unit::Seconds,
            dialer_lag.clone(),
        );
        Self {
            registry,
            dial_attempts,
            predial_checks,
            batch_recipients,
            dialer_lag,
            http_requests,
            http_request_duration,
            webhook_transcription_outcomes,
            calls_placed,
            elevenlabs_request_duration,
            db_pool_connections,
            db_pool_waiters,
            db_retries,
            calls_reconciled,
            reconcile_passes,
        }
    }

    /// The OpenMetrics text exposition of every family.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; a failure would only truncate the scrape.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }

    pub fn webhook_outcome(&self, outcome: &'static str) {
        self.webhook_transcription_outcomes
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    pub fn call_placed(&self, outcome: &'static str) {
        self.calls_placed
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    pub fn call_reconciled(&self, result: &'static str) {
        self.calls_reconciled
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Counts one claimed attempt by its outcome.
    pub fn record_dial(&self, outcome: &DialOutcome) {
        let result = match outcome {
            DialOutcome::Placed { .. } => "placed",
            DialOutcome::Failed {
                redialable: true, ..
            } => "failed",
            DialOutcome::Failed {
                redialable: false, ..
            } => "rejected",
            DialOutcome::NotDialed { .. } => "not_dialed",
            DialOutcome::Abandoned => "abandoned",
            DialOutcome::StoreFailed { .. } => "store_failed",
        };
        self.dial_attempts
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    pub fn predial_check(&self, result: &'static str) {
        self.predial_checks
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    pub fn reconcile_pass(&self, outcome: &'static str) {
        self.reconcile_passes
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_with_their_documented_names() {
        let m = Metrics::new();
        m.webhook_outcome("stored");
        m.call_placed("placed");
        m.elevenlabs_request_duration.observe(0.003);
        m.http_requests
            .get_or_create(&HttpLabels {
                route: "/calls/{call_sid}".into(),
                method: "GET".into(),
                status: 200,
            })
            .inc();
        m.http_request_duration
            .get_or_create(&RouteLabels {
                route: "/healthz".into(),
                method: "GET".into(),
            })
            .observe(0.002);
        m.db_pool_waiters.set(3);

        let text = m.render();

        for line in [
            "# TYPE webhook_transcription_outcomes counter",
            "webhook_transcription_outcomes_total{outcome=\"stored\"} 1",
            "calls_placed_total{outcome=\"placed\"} 1",
            "http_requests_total{route=\"/calls/{call_sid}\",method=\"GET\",status=\"200\"} 1",
            "http_request_duration_seconds_bucket{le=\"0.0025\",route=\"/healthz\",method=\"GET\"} 1",
            "elevenlabs_request_duration_seconds_count 1",
            "db_pool_waiters 3",
            "db_retries_total 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
