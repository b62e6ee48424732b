//! `POST /webhooks/elevenlabs/post-call`: ElevenLabs' own post-call webhook (signed).
//! Only 200 counts as delivered for ElevenLabs, and it disables webhooks that keep
//! failing, so events we cannot use are acknowledged with 200 and a log line.

use actix_web::{HttpRequest, HttpResponse, web};
use calls_domain::service::PostCallOutcome;
use calls_elevenlabs::{PostCallWebhook, parse_post_call};
use serde::Serialize;

use crate::auth::{PostCallHook, VerifiedWebhook};
use crate::body::require_json;
use crate::errors::ApiError;
use crate::state::AppState;

/// The answer to every event we accept (ElevenLabs counts only 200 as delivered).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"status": "success", "message": "Call EL_333_2024-11-21T10:00:00Z completed; 0 missing turns restored"}))]
pub struct Ack {
    pub status: &'static str,
    pub message: String,
}

fn ok(message: String) -> HttpResponse {
    HttpResponse::Ok().json(Ack {
        status: "success",
        message,
    })
}

/// ElevenLabs' post-call webhook: `post_call_transcription` completes the Call (end time =
/// start + duration), `call_initiation_failure` fails it; repeats change nothing; unknown
/// calls and other event types are acknowledged with 200.
#[utoipa::path(
    post,
    path = "/webhooks/elevenlabs/post-call",
    tag = "webhooks",
    request_body(content = calls_elevenlabs::PostCallEnvelope, content_type = "application/json"),
    responses(
        (status = 200, description = "Event applied or acknowledged", body = Ack),
        (status = 400, description = "Malformed event", body = crate::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid ElevenLabs-Signature", body = crate::openapi::ErrorBody),
        (status = 408, description = "The body did not arrive within the body read timeout", body = crate::openapi::ErrorBody),
        (status = 413, description = "Body larger than POST_CALL_MAX_BODY_BYTES", body = crate::openapi::ErrorBody),
        (status = 415, description = "Not application/json", body = crate::openapi::ErrorBody),
        (status = 500, description = "Database unavailable after retries", body = crate::openapi::ErrorBody),
    ),
    security(("elevenlabs_signature" = []))
)]
pub async fn receive(
    req: HttpRequest,
    body: VerifiedWebhook<PostCallHook>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
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
    let outcome = state.post_call.execute(&event).await?;
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
