//! Durable batches (SPEC "Batches"): `POST /batches` records a batch and answers 202 at
//! once (the dialer places the calls); `GET /batches/{batch_id}`, `GET /batches` and
//! `POST /batches/{batch_id}/cancel` read and cancel it. Bearer `API_TOKEN`.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use calls_domain::models::BatchId;
use time::OffsetDateTime;

use crate::auth::ApiToken;
use crate::body::JsonBody;
use crate::errors::ApiError;
use crate::routes::batch_request::BatchCallRequest;
use crate::state::AppState;

mod listing;
pub mod views;

pub use listing::ListBatchesParams;
use views::{BatchListView, BatchSummaryView, BatchViewBody};

/// A path segment that is no batch id names no batch: 404, like an unknown one.
fn parse_id(raw: &str) -> Result<BatchId, ApiError> {
    BatchId::parse(raw).map_err(|_| unknown(raw))
}

fn unknown(raw: &str) -> ApiError {
    ApiError::not_found(
        format!("Batch not found: {raw}"),
        format!("No batch has batch_id {raw}"),
    )
}

/// Record a batch: every driver becomes a recipient with its first due time, committed
/// before the answer. Nothing is dialed inside the request.
#[utoipa::path(
    post,
    path = "/batches",
    tag = "batches",
    request_body(content = BatchCallRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Recorded; the dialer places the calls when due", body = BatchViewBody,
            headers(("Location" = String, description = "/batches/{batch_id}"))),
        (status = 400, description = "Invalid batch (every problem listed with its field) or malformed JSON; nothing written", body = crate::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid API token; the body is not read", body = crate::openapi::ErrorBody),
        (status = 408, description = "The body did not arrive within the body read timeout", body = crate::openapi::ErrorBody),
        (status = 409, description = "An attempt-1 call_sid is taken (a retried request); nothing written", body = crate::openapi::ErrorBody),
        (status = 413, description = "Body larger than MAX_BODY_BYTES", body = crate::openapi::ErrorBody),
        (status = 415, description = "Not application/json", body = crate::openapi::ErrorBody),
        (status = 500, description = "Database unavailable, or busy past its timeouts", body = crate::openapi::ErrorBody),
    ),
    security(("api_token" = []))
)]
// `ApiToken` comes first: extractors run in order, so an unauthenticated body is never read.
pub async fn create(
    _token: ApiToken,
    body: JsonBody<BatchCallRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let now = OffsetDateTime::now_utc();
    let batch = body.0.into_batch(now)?;
    let view = state.create_batch.execute(&batch, now).await?;
    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, format!("/batches/{}", view.batch_id)))
        .json(BatchViewBody::from(view)))
}

/// One batch with every recipient and attempt.
#[utoipa::path(
    get,
    path = "/batches/{batch_id}",
    tag = "batches",
    params(("batch_id" = String, Path, description = "The batch's id (a UUID)")),
    responses(
        (status = 200, description = "The batch", body = BatchViewBody),
        (status = 401, description = "Missing or invalid API token", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such batch (or not a batch id)", body = crate::openapi::ErrorBody),
        (status = 500, description = "Database unavailable", body = crate::openapi::ErrorBody),
    ),
    security(("api_token" = []))
)]
pub async fn get_batch(
    _token: ApiToken,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let batch_id = parse_id(&path)?;
    let view = state
        .read_batches
        .get(&batch_id)
        .await?
        .ok_or_else(|| unknown(&path))?;
    Ok(HttpResponse::Ok().json(BatchViewBody::from(view)))
}

/// Batches newest first (`created_at`, then `batch_id`, both descending), one page at a
/// time; pages are cut by position, as on `GET /calls`.
#[utoipa::path(
    get,
    path = "/batches",
    tag = "batches",
    params(ListBatchesParams),
    responses(
        (status = 200, description = "One page of batches", body = BatchListView),
        (status = 400, description = "An invalid or unknown query parameter, or a cursor that is not one of ours", body = crate::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid API token", body = crate::openapi::ErrorBody),
        (status = 500, description = "Database unavailable", body = crate::openapi::ErrorBody),
    ),
    security(("api_token" = []))
)]
pub async fn list_batches(
    _token: ApiToken,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = listing::parse(req.query_string())?;
    let page = state.read_batches.list(&query).await?;
    let next_cursor = page.next.map(|next| listing::cursor_after(&query, next));
    Ok(HttpResponse::Ok().json(BatchListView {
        batches: page
            .batches
            .into_iter()
            .map(BatchSummaryView::from)
            .collect(),
        next_cursor,
    }))
}

/// Cancel: every `scheduled` recipient becomes `cancelled`; one `dialing` or `in_call`
/// finishes its call but is never re-dialed. Asking again changes nothing.
#[utoipa::path(
    post,
    path = "/batches/{batch_id}/cancel",
    tag = "batches",
    params(("batch_id" = String, Path, description = "The batch's id (a UUID)")),
    responses(
        (status = 200, description = "The batch after the cancel (also when it was cancelled before)", body = BatchViewBody),
        (status = 401, description = "Missing or invalid API token", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such batch (or not a batch id)", body = crate::openapi::ErrorBody),
        (status = 500, description = "Database unavailable", body = crate::openapi::ErrorBody),
    ),
    security(("api_token" = []))
)]
pub async fn cancel(
    _token: ApiToken,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let batch_id = parse_id(&path)?;
    let view = state
        .cancel_batch
        .execute(&batch_id, OffsetDateTime::now_utc())
        .await?
        .ok_or_else(|| unknown(&path))?;
    tracing::info!(%batch_id, "batch cancelled");
    Ok(HttpResponse::Ok().json(BatchViewBody::from(view)))
}
