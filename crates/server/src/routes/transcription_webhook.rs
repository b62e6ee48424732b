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

#[derive(Debug, Serialize)]
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
            TurnParseError::EmptyMessage => "message",
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
