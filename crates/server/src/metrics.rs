//! The service's metrics: typed families registered once in a `prometheus-client`
//! registry, passed to whoever records them (no global state), rendered by `GET /metrics`.
//! Names, labels and meanings are documented in docs/operations.md ("Metrics").

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
        Self {
            registry,
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
