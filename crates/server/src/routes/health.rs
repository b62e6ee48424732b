use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::errors::{ApiError, ErrorKind};
use crate::state::AppState;

/// The process is up and serving.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Up", example = json!({"status": "ok"}))))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// The database answers; 503 otherwise (a load balancer stops routing here).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", example = json!({"status": "ready"})),
        (status = 503, description = "Database unreachable", body = crate::openapi::ErrorBody),
    ))]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    match state.repository.ping().await {
        Ok(()) => Ok(HttpResponse::Ok().json(json!({"status": "ready"}))),
        Err(e) => {
            tracing::warn!(error.message = %e, "not ready: database unreachable");
            Err(ApiError::new(
                actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
                ErrorKind::Unavailable,
                "Service not ready",
                "Database unreachable",
            ))
        }
    }
}
