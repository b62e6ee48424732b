//! `POST /webhooks/elevenlabs/transcription`: one dialogue turn for our call_sid.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use calls_domain::{AppendOutcome, NewTurn, TurnParseError};
use serde::Serialize;
use time::OffsetDateTime;

use crate::auth::{WebhookAuth, verify_webhook};
use crate::errors::ApiError;
use crate::routes::{parse_json_object, read_body, require_json, string_field};
use crate::startup::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"status": "success", "message": "Transcription saved successfully for call_sid EL_123_2024-11-21T10:00:00Z", "transcription_id": 456, "sequence_number": 1}))]
pub struct TranscriptionSaved {
    pub status: &'static str,
    pub message: String,
    pub transcription_id: i64,
    pub sequence_number: i32,
}

fn outcome(state: &AppState, outcome: &'static str) {
    state.metrics.inc(
        "webhook_transcription_outcomes_total",
        "Transcription webhook deliveries by outcome",
        vec![("outcome", outcome.to_owned())],
    );
}

/// Store one dialogue turn for our call_sid (call_sid → Call → conversation_id → turn).
///
/// A turn for a Call still waiting for its conversation_id waits up to
/// `WEBHOOK_CONVERSATION_WAIT_MS`. Sequence numbers are 1, 2, 3, … per call in arrival order.
#[utoipa::path(
    post,
    path = "/webhooks/elevenlabs/transcription",
    tag = "webhooks",
    request_body(content = crate::openapi::TranscriptionRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Turn stored", body = TranscriptionSaved),
        (status = 200, description = "Repeated delivery: nothing stored, the original ids", body = TranscriptionSaved,
            example = json!({"status": "success", "message": "Transcription already saved for call_sid EL_123_2024-11-21T10:00:00Z", "transcription_id": 456, "sequence_number": 1})),
        (status = 400, description = "Unknown or incomplete call_sid, or malformed input", body = crate::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid signature / secret", body = crate::openapi::ErrorBody),
        (status = 413, description = "Body too large", body = crate::openapi::ErrorBody),
        (status = 415, description = "Not application/json", body = crate::openapi::ErrorBody),
        (status = 500, description = "Database unavailable after retries", body = crate::openapi::ErrorBody,
            example = json!({"status": "error", "message": "Database connection error. Please retry.", "details": "Database temporarily unavailable"})),
    ),
    security(("elevenlabs_signature" = []), ("webhook_bearer" = []))
)]
pub async fn receive(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let result = handle(&req, payload, &state).await;
    match &result {
        Ok(r) if r.status() == StatusCode::CREATED => outcome(&state, "stored"),
        Ok(_) => outcome(&state, "duplicate"),
        Err(e) => outcome(
            &state,
            match e.status() {
                StatusCode::UNAUTHORIZED => "unauthenticated",
                StatusCode::BAD_REQUEST if e.message().starts_with("Call record not found") => {
                    "unknown_call"
                }
                s if s.is_client_error() => "invalid",
                _ => "error",
            },
        ),
    }
    result
}

async fn handle(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(req, payload, state.settings.max_body_bytes).await?;
    // Authenticate the exact bytes before looking at them.
    verify_webhook(
        req,
        &body,
        state.settings.webhook_secret.as_ref(),
        WebhookAuth::SignatureOrBearer,
        OffsetDateTime::now_utc().unix_timestamp(),
    )?;
    require_json(req)?;
    let object = parse_json_object(&body)?;
    let call_sid = string_field(&object, "call_sid")?;
    tracing::Span::current().record("call_sid", call_sid);
    let turn = NewTurn::parse(
        call_sid,
        string_field(&object, "speaker")?,
        string_field(&object, "message")?,
        string_field(&object, "timestamp")?,
    )
    .map_err(|e| {
        let field = match e {
            TurnParseError::CallSid(_) => "call_sid",
            TurnParseError::Speaker(_) => "speaker",
            TurnParseError::EmptyMessage | TurnParseError::NulInMessage => "message",
            TurnParseError::Timestamp(_) => "timestamp",
        };
        ApiError::bad_request(
            format!("Invalid request: invalid field '{field}'"),
            e.to_string(),
        )
    })?;

    let outcome = state.record_turn.execute(&turn).await?;
    let stored = outcome.stored();
    let (status, message) = match outcome {
        AppendOutcome::Created(_) => (
            StatusCode::CREATED,
            format!(
                "Transcription saved successfully for call_sid {}",
                turn.call_sid
            ),
        ),
        AppendOutcome::Duplicate(_) => (
            StatusCode::OK,
            format!("Transcription already saved for call_sid {}", turn.call_sid),
        ),
    };
    tracing::info!(
        sequence_number = stored.sequence_number,
        transcription_id = stored.transcription_id,
        duplicate = status == StatusCode::OK,
        "turn recorded"
    );
    Ok(HttpResponse::build(status).json(TranscriptionSaved {
        status: "success",
        message,
        transcription_id: stored.transcription_id,
        sequence_number: stored.sequence_number,
    }))
}
