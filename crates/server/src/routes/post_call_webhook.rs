//! `POST /webhooks/elevenlabs/post-call`: ElevenLabs' own post-call webhook (signed).
//! Only 200 counts as delivered for ElevenLabs, and it disables webhooks that keep
//! failing, so events we cannot use are acknowledged with 200 and a log line.

use actix_web::{HttpRequest, HttpResponse, web};
use calls_domain::SpeakerType;
use calls_domain::service::{EventTurn, PostCallError, PostCallEvent, PostCallOutcome};
use calls_domain::{CallSid, ConversationId};
use serde_json::{Map, Value, json};

use crate::auth::{PostCallHook, VerifiedWebhook};
use crate::body::{parse_json_object, require_json};
use crate::errors::ApiError;
use crate::startup::AppState;

fn ok(message: String) -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "success", "message": message}))
}

fn call_sid_of(data: &Map<String, Value>) -> Option<CallSid> {
    data.get("conversation_initiation_client_data")?
        .get("dynamic_variables")?
        .get("call_sid")?
        .as_str()
        .and_then(|s| CallSid::parse(s).ok())
}

fn conversation_of(data: &Map<String, Value>) -> Option<ConversationId> {
    data.get("conversation_id")?
        .as_str()
        .and_then(|s| ConversationId::parse(s).ok())
}

/// `data.transcript[]`: `{role: user|agent, message: string|null, time_in_call_secs}`;
/// turns without text (tool calls) or with another role are skipped.
fn transcript_of(data: &Map<String, Value>) -> Vec<EventTurn> {
    let Some(turns) = data.get("transcript").and_then(Value::as_array) else {
        return Vec::new();
    };
    turns
        .iter()
        .filter_map(|t| {
            let speaker = match t.get("role")?.as_str()? {
                "agent" => SpeakerType::Agent,
                "user" => SpeakerType::Driver,
                _ => return None,
            };
            let message = t.get("message")?.as_str()?.to_owned();
            Some(EventTurn {
                speaker,
                message,
                time_in_call_secs: int(t.get("time_in_call_secs")).unwrap_or(0),
            })
        })
        .collect()
}

fn int(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
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
    let object = parse_json_object(&body)?;
    let kind = object
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("Invalid post-call event", "'type' is required"))?;
    let data = object
        .get("data")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            ApiError::bad_request("Invalid post-call event", "'data' must be an object")
        })?;

    let event = match kind {
        "post_call_transcription" => {
            let conversation_id = conversation_of(data).ok_or_else(|| {
                ApiError::bad_request(
                    "Invalid post-call event",
                    "'data.conversation_id' is required",
                )
            })?;
            let metadata = data.get("metadata");
            PostCallEvent::Transcription {
                conversation_id,
                call_sid: call_sid_of(data),
                start_unix_secs: int(metadata.and_then(|m| m.get("start_time_unix_secs"))),
                duration_secs: int(metadata.and_then(|m| m.get("call_duration_secs"))),
                transcript: transcript_of(data),
            }
        }
        "call_initiation_failure" => PostCallEvent::InitiationFailure {
            conversation_id: conversation_of(data),
            call_sid: call_sid_of(data),
            reason: data
                .get("failure_reason")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_owned(),
        },
        other => {
            tracing::info!(
                event_type = other,
                "post-call event acknowledged and ignored"
            );
            return Ok(ok(format!("Event type {other} acknowledged")));
        }
    };
    if let PostCallEvent::Transcription {
        call_sid: Some(sid),
        ..
    }
    | PostCallEvent::InitiationFailure {
        call_sid: Some(sid),
        ..
    } = &event
    {
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
        PostCallOutcome::Completed(sid) => ok(format!("Call {sid} completed")),
        PostCallOutcome::Failed(sid) => ok(format!("Call {sid} marked failed")),
        PostCallOutcome::Unchanged(sid) => ok(format!("Call {sid} already final; nothing changed")),
        PostCallOutcome::UnknownCall => {
            tracing::warn!(event_type = kind, "post-call event for an unknown call");
            ok("No matching call; event acknowledged".to_owned())
        }
    })
}
