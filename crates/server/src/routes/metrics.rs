use actix_web::{HttpResponse, web};

use crate::metrics::Gauge;
use crate::startup::AppState;

/// Prometheus text format: HTTP, webhook outcomes, calls placed, ElevenLabs latency, pool, retries.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain")))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let mut gauges = Vec::new();
    if let Some(pool) = &state.pool {
        let stats = pool.stats();
        for (label, value) in [
            ("max", stats.max_size),
            ("open", stats.size),
            ("in_use", stats.in_use),
            ("idle", stats.available),
        ] {
            gauges.push(Gauge {
                name: "db_pool_connections",
                kind: "gauge",
                help: "Database pool connections by state",
                labels: vec![("state", label.to_owned())],
                value: value as f64,
            });
        }
        gauges.push(Gauge {
            name: "db_pool_waiters",
            kind: "gauge",
            help: "Requests waiting for a database connection",
            labels: vec![],
            value: stats.waiting as f64,
        });
    }
    gauges.push(Gauge {
        name: "db_retries_total",
        kind: "counter",
        help: "Database operations retried after a transient failure",
        labels: vec![],
        value: calls_store_postgres::retries_taken() as f64,
    });
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render(&gauges))
}
