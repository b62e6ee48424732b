use actix_web::{HttpResponse, web};

use crate::metrics::StateLabel;
use crate::state::AppState;

/// Prometheus text format: HTTP, webhook outcomes, calls placed, ElevenLabs latency, pool, retries.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "application/openmetrics-text")))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let m = &state.metrics;
    if let Some(pool) = &state.pool {
        let stats = pool.stats();
        for (label, value) in [
            ("max", stats.max_size),
            ("open", stats.size),
            ("in_use", stats.in_use),
            ("idle", stats.available),
        ] {
            m.db_pool_connections
                .get_or_create(&StateLabel { state: label })
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        }
        m.db_pool_waiters
            .set(i64::try_from(stats.waiting).unwrap_or(i64::MAX));
    }
    // The repository counts its own retries; bring the counter up to its total.
    if let Some(retries) = &state.db_retries {
        m.db_retries
            .inc_by(retries.get().saturating_sub(m.db_retries.get()));
    }
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(m.render())
}
