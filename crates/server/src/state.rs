//! What every request shares, at the bottom of the server: routes, extractors and
//! middleware depend on it; it depends on no other module of the server but the settings
//! and the metrics, so dependencies point one way (startup → routes → extractors/state).

use std::sync::Arc;

use actix_web::{HttpRequest, web};
use calls_domain::ports::BatchRepository;
use calls_domain::service::{
    ApplyPostCall, CancelBatch, CreateBatch, Dialer, ReadBatches, ReconcileStale, RecordTurn,
};
use calls_domain::{CallRepository, Telephony};
use calls_store_postgres::{DbPool, RetryCounter};

use crate::config::Settings;
use crate::errors::ApiError;
use crate::limits::Limits;
use crate::metrics::Metrics;

/// Shared by every request.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub repository: Arc<dyn CallRepository>,
    pub telephony: Arc<dyn Telephony>,
    pub record_turn: RecordTurn,
    pub post_call: ApplyPostCall,
    pub batches: Arc<dyn BatchRepository>,
    pub create_batch: CreateBatch,
    pub read_batches: ReadBatches,
    pub cancel_batch: CancelBatch,
    pub dialer: Arc<Dialer>,
    /// Outbound-call requests in flight on this instance (`CALL_CONCURRENCY`), shared by
    /// the dialer and the batch-call endpoint.
    pub dial_permits: Arc<tokio::sync::Semaphore>,
    pub reconcile_stale: Arc<ReconcileStale>,
    pub metrics: Arc<Metrics>,
    /// For pool gauges; `None` when the repository is not PostgreSQL (tests with mocks).
    pub pool: Option<DbPool>,
    /// The PostgreSQL repository's retries, for `db_retries_total`.
    pub db_retries: Option<RetryCounter>,
    /// Bounds on bodies, requests in flight and requests per call (`limits.rs`).
    pub limits: web::Data<Limits>,
    pub console: crate::console::ConsoleState,
}

/// The state, for extractors (handlers take `web::Data<AppState>` directly).
pub(crate) fn app_state(req: &HttpRequest) -> Result<web::Data<AppState>, ApiError> {
    req.app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| {
            ApiError::internal(&std::io::Error::other(
                "application state is not registered",
            ))
        })
}
