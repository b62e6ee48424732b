//! `POST /webhooks/elevenlabs/transcription`: one dialogue turn for our call_sid.
//!
//! Wire types: [`TranscriptionRequest`] (the body the ElevenLabs webhook tool sends, as
//! `calls-server elevenlabs-tool-config` configures it) and [`TranscriptionSaved`].

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use calls_domain::{AppendOutcome, NewTurn};
use serde::{Deserialize, Serialize};

use crate::auth::{TranscriptionHook, VerifiedWebhook};
use crate::errors::ApiError;
use crate::state::AppState;

/// One dialogue turn, as the ElevenLabs webhook tool sends it. Every field is required;
/// a missing field, `null` or another type is a 400 naming the field. Other fields are
/// ignored.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"call_sid": "EL_123_2024-11-21T10:00:00Z", "speaker": "agent", "message": "Hello, how are you doing?", "timestamp": "2024-11-21T10:30:00Z"}))]
pub struct TranscriptionRequest {
    /// Our call id, from the `call_sid` dynamic variable: any non-empty string of at most
    /// 255 characters without control characters (spaces allowed).
    #[schema(min_length = 1, max_length = 255)]
    pub call_sid: String,
    /// `agent` or `user` (stored as `driver`).
    #[schema(pattern = "^(agent|user)$")]
    pub speaker: String,
    /// The words spoken; not blank, no NUL characters.
    #[schema(min_length = 1)]
    pub message: String,
    /// ISO 8601 with `Z` or an offset (without one: UTC); stored in UTC, microseconds.
    #[schema(format = DateTime)]
    pub timestamp: String,
}

impl TranscriptionRequest {
    fn into_turn(self) -> Result<NewTurn, ApiError> {
        Ok(NewTurn::parse(
            &self.call_sid,
            &self.speaker,
            &self.message,
            &self.timestamp,
        )?)
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"status": "success", "message": "Transcription saved successfully for call_sid EL_123_2024-11-21T10:00:00Z", "transcription_id": 456, "sequence_number": 1}))]
pub struct TranscriptionSaved {
    /// Always `success`.
    pub status: &'static str,
    pub message: String,
    pub transcription_id: i64,
    pub sequence_number: i32,
}

fn count_outcome(state: &AppState, outcome: &'static str) {
    state.metrics.webhook_outcome(outcome);
}

/// Store one dialogue turn for our call_sid (call_sid → Call → conversation_id → turn).
///
/// A turn for a Call still waiting for its conversation_id waits up to
/// `WEBHOOK_CONVERSATION_WAIT_MS`. Sequence numbers are 1, 2, 3, … per call in arrival order.
#[utoipa::path(
    post,
    path = "/webhooks/elevenlabs/transcription",
    tag = "webhooks",
    request_body(content = TranscriptionRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Turn stored", body = TranscriptionSaved),
        (status = 200, description = "Repeated delivery: nothing stored, the original ids", body = TranscriptionSaved,
            example = json!({"status": "success", "message": "Transcription already saved for call_sid EL_123_2024-11-21T10:00:00Z", "transcription_id": 456, "sequence_number": 1})),
        (status = 400, description = "Unknown or incomplete call_sid, or malformed input (a NUL character in a string included)", body = crate::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid signature / secret; the body is not read", body = crate::openapi::ErrorBody),
        (status = 408, description = "The body did not arrive within the body read timeout", body = crate::openapi::ErrorBody),
        (status = 413, description = "Body larger than TRANSCRIPTION_MAX_BODY_BYTES", body = crate::openapi::ErrorBody),
        (status = 415, description = "Not application/json", body = crate::openapi::ErrorBody),
        (status = 500, description = "Database unavailable after retries, or busy past its timeouts", body = crate::openapi::ErrorBody,
            example = json!({"status": "error", "message": "Database connection error. Please retry.", "details": "Database temporarily unavailable"})),
    ),
    security(("elevenlabs_signature" = []), ("webhook_bearer" = []))
)]
pub async fn receive(
    body: Result<VerifiedWebhook<TranscriptionHook>, ApiError>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // The extractor's own failures (401, 413, 408) are counted too.
    let result = match body {
        Ok(body) => handle(body, &state).await,
        Err(e) => Err(e),
    };
    count_outcome(
        &state,
        match &result {
            Ok(r) if r.status() == StatusCode::CREATED => "stored",
            Ok(_) => "duplicate",
            Err(e) => e.kind().outcome_label(),
        },
    );
    result
}

async fn handle(
    body: VerifiedWebhook<TranscriptionHook>,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    let request: TranscriptionRequest = body.json()?;
    let turn = request.into_turn()?;
    // Only a validated call_sid goes into the logs.
    tracing::Span::current().record("call_sid", turn.call_sid.as_str());
    // Requests of one Call queue here rather than each holding a pooled connection.
    let _pass = state.limits.enter_call(turn.call_sid.as_str()).await?;

    let outcome = state.record_turn.execute(&turn).await?;
    if matches!(outcome, AppendOutcome::Created(_)) {
        // Live console pages, on every instance (queued; sent after this commit).
        state.console.turn_stored(turn.call_sid.as_str());
    }
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
