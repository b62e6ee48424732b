//! `POST /webhooks/elevenlabs/post-call`: ElevenLabs' own post-call webhook (signed).
//! Only 200 counts as delivered for ElevenLabs, and it disables webhooks that keep
//! failing, so events we cannot use are acknowledged with 200 and a log line.

use actix_web::{HttpRequest, HttpResponse, web};
use calls_domain::service::{PostCallError, PostCallOutcome};
use calls_elevenlabs::{PostCallWebhook, parse_post_call};
use serde_json::json;
use time::OffsetDateTime;

use crate::auth::{WebhookAuth, verify_webhook};
use crate::errors::ApiError;
use crate::routes::{read_body, require_json};
use crate::startup::AppState;

fn ok(message: String) -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "success", "message": message}))
}

/// ElevenLabs' post-call webhook: `post_call_transcription` completes the Call (end time =
/// start + duration), `call_initiation_failure` fails it; repeats change nothing; unknown
/// calls and other event types are acknowledged with 200.
#[utoipa::path(
    post,
    path = "/webhooks/elevenlabs/post-call",
    tag = "webhooks",
    request_body(content = crate::openapi::PostCallEventBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Event applied or acknowledged", body = crate::openapi::Ack),
        (status = 400, description = "Malformed event", body = crate::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid ElevenLabs-Signature", body = crate::openapi::ErrorBody),
        (status = 500, description = "Database unavailable after retries", body = crate::openapi::ErrorBody),
    ),
    security(("elevenlabs_signature" = []))
)]
pub async fn receive(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // post_call_audio events can be large; they are acknowledged without being kept.
    let limit = state.settings.max_body_bytes.max(16 * 1024 * 1024);
    let body = read_body(&req, payload, limit).await?;
    verify_webhook(
        &req,
        &body,
        state.settings.webhook_secret.as_ref(),
        WebhookAuth::SignatureOnly,
        OffsetDateTime::now_utc().unix_timestamp(),
    )?;
    require_json(&req)?;
    let event = match parse_post_call(&body) {
        Ok(PostCallWebhook::Event(event)) => event,
        Ok(PostCallWebhook::Ignored { event_type }) => {
            tracing::info!(%event_type, "post-call event acknowledged and ignored");
            return Ok(ok(format!("Event type {event_type} acknowledged")));
        }
        Err(e) => {
            return Err(ApiError::bad_request(
                "Invalid post-call event",
                e.to_string(),
            ));
        }
    };
    if let Some(sid) = event.call_sid() {
        tracing::Span::current().record("call_sid", sid.as_str());
    }
    let outcome = state
        .post_call
        .execute(&event)
        .await
        .map_err(|e| match &e {
            PostCallError::Unavailable(_) => ApiError::db_unavailable(&e),
            PostCallError::Unexpected(_) => ApiError::internal(&e),
        })?;
    Ok(match outcome {
        PostCallOutcome::Completed {
            call_sid,
            turns_inserted,
        } => ok(format!(
            "Call {call_sid} completed; {turns_inserted} missing turns restored"
        )),
        PostCallOutcome::Updated {
            call_sid,
            turns_inserted,
        } => ok(format!(
            "Call {call_sid} already completed; transcript updated ({turns_inserted} turns restored)"
        )),
        PostCallOutcome::Failed(sid) => ok(format!("Call {sid} marked failed")),
        PostCallOutcome::Unchanged(sid) => ok(format!("Call {sid} already final; nothing changed")),
        PostCallOutcome::UnknownCall => {
            tracing::warn!("post-call event for an unknown call");
            ok("No matching call; event acknowledged".to_owned())
        }
    })
}
