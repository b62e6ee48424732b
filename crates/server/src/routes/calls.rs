//! Reading Calls and their transcripts (bearer `API_TOKEN`).

use actix_web::{HttpResponse, web};
use calls_domain::{Call, CallSid, CallTranscription};
use serde::Serialize;
use time::OffsetDateTime;

use crate::auth::ApiToken;
use crate::errors::ApiError;
use crate::startup::AppState;

use time::serde::rfc3339 as rfc3339_utc;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CallView {
    pub call_sid: String,
    pub conversation_id: Option<String>,
    pub driver_id: Option<i64>,
    pub status: &'static str,
    #[serde(with = "rfc3339_utc")]
    pub call_start_time: OffsetDateTime,
    #[serde(with = "rfc3339_utc::option")]
    pub call_end_time: Option<OffsetDateTime>,
    pub failure_reason: Option<String>,
    #[serde(with = "rfc3339_utc")]
    pub created_at: OffsetDateTime,
    #[serde(with = "rfc3339_utc")]
    pub updated_at: OffsetDateTime,
}

impl From<Call> for CallView {
    fn from(call: Call) -> Self {
        Self {
            call_sid: call.call_sid.to_string(),
            conversation_id: call.conversation_id.map(|c| c.to_string()),
            driver_id: call.driver_id,
            status: call.status.as_str(),
            call_start_time: call.call_start_time,
            call_end_time: call.call_end_time,
            failure_reason: call.failure_reason,
            created_at: call.created_at,
            updated_at: call.updated_at,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TurnView {
    pub id: i64,
    pub sequence_number: i32,
    pub speaker_type: &'static str,
    pub message_text: String,
    #[serde(with = "rfc3339_utc")]
    pub timestamp: OffsetDateTime,
    #[serde(with = "rfc3339_utc")]
    pub created_at: OffsetDateTime,
}

impl From<CallTranscription> for TurnView {
    fn from(t: CallTranscription) -> Self {
        Self {
            id: t.id,
            sequence_number: t.sequence_number,
            speaker_type: t.speaker_type.as_str(),
            message_text: t.message_text,
            timestamp: t.timestamp,
            created_at: t.created_at,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TranscriptView {
    pub call_sid: String,
    pub conversation_id: Option<String>,
    pub transcriptions: Vec<TurnView>,
}

/// A path segment that cannot be a call_sid (e.g. a control character) names no Call.
fn parse_sid(raw: &str) -> Result<CallSid, ApiError> {
    CallSid::parse(raw)
        .map_err(|e| ApiError::not_found(format!("Call not found: {raw}"), e.to_string()))
}

fn unknown(call_sid: &CallSid) -> ApiError {
    ApiError::not_found(
        format!("Call not found: {call_sid}"),
        format!("No call has call_sid {call_sid}"),
    )
}

/// One Call by our call_sid.
#[utoipa::path(
    get,
    path = "/calls/{call_sid}",
    tag = "calls",
    params(("call_sid" = String, Path, min_length = 1, max_length = 255, description = "Our call id, e.g. EL_333_2024-11-21T10:00:00Z (percent-encode spaces)")),
    responses(
        (status = 200, description = "The Call", body = CallView),
        (status = 401, description = "Missing or invalid API token", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such call", body = crate::openapi::ErrorBody),
        (status = 500, description = "Database unavailable", body = crate::openapi::ErrorBody),
    ),
    security(("api_token" = []))
)]
pub async fn get_call(
    _token: ApiToken,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let call = find_call(&path, &state).await?;
    Ok(HttpResponse::Ok().json(CallView::from(call)))
}

/// What both readers share: the call_sid and the Call itself.
async fn find_call(raw_sid: &str, state: &AppState) -> Result<Call, ApiError> {
    let call_sid = parse_sid(raw_sid)?;
    tracing::Span::current().record("call_sid", call_sid.as_str());
    state
        .repository
        .get_by_call_sid(&call_sid)
        .await?
        .ok_or_else(|| unknown(&call_sid))
}

/// The Call's transcript, turns in sequence order.
#[utoipa::path(
    get,
    path = "/calls/{call_sid}/transcriptions",
    tag = "calls",
    params(("call_sid" = String, Path, min_length = 1, max_length = 255, description = "Our call id")),
    responses(
        (status = 200, description = "The transcript", body = TranscriptView),
        (status = 401, description = "Missing or invalid API token", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such call", body = crate::openapi::ErrorBody),
        (status = 500, description = "Database unavailable", body = crate::openapi::ErrorBody),
    ),
    security(("api_token" = []))
)]
pub async fn get_transcriptions(
    _token: ApiToken,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let call = find_call(&path, &state).await?;
    let call_sid = &call.call_sid;
    let turns = match state.repository.list_turns(call_sid).await {
        Ok(turns) => turns,
        Err(calls_domain::RepositoryError::NotFound) => return Err(unknown(call_sid)),
        Err(e) => return Err(e.into()),
    };
    Ok(HttpResponse::Ok().json(TranscriptView {
        call_sid: call.call_sid.to_string(),
        conversation_id: call.conversation_id.map(|c| c.to_string()),
        transcriptions: turns.into_iter().map(TurnView::from).collect(),
    }))
}
