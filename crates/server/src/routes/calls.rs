//! Reading Calls and their transcripts (bearer `API_TOKEN`).

use actix_web::{HttpRequest, HttpResponse, web};
use calls_domain::{Call, CallOutcome, CallSid, CallTranscription};
use serde::Serialize;
use time::OffsetDateTime;

use crate::auth::ApiToken;
use crate::errors::ApiError;
use crate::state::AppState;

use time::serde::rfc3339 as rfc3339_utc;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CallView {
    pub id: i64,
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
    /// ElevenLabs' post-call analysis; null until a post-call event brought one.
    pub outcome: Option<OutcomeView>,
}

/// The outcome of a call, from ElevenLabs' post-call analysis. Every field may be null.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OutcomeView {
    /// `success`, `failure` or `unknown`.
    pub call_successful: Option<String>,
    pub summary: Option<String>,
    /// Each data-collection item configured on the agent: name → value.
    #[schema(value_type = Object)]
    pub data_collection: serde_json::Map<String, serde_json::Value>,
    pub termination_reason: Option<String>,
    pub duration_secs: Option<i64>,
}

impl From<CallOutcome> for OutcomeView {
    fn from(o: CallOutcome) -> Self {
        Self {
            call_successful: o.call_successful,
            summary: o.summary,
            data_collection: o.data_collection.into_iter().collect(),
            termination_reason: o.termination_reason,
            duration_secs: o.duration_secs,
        }
    }
}

impl From<Call> for CallView {
    fn from(call: Call) -> Self {
        Self {
            id: call.id,
            call_sid: call.call_sid.to_string(),
            conversation_id: call.conversation_id.map(|c| c.to_string()),
            driver_id: call.driver_id,
            status: call.status.as_str(),
            call_start_time: call.call_start_time,
            call_end_time: call.call_end_time,
            failure_reason: call.failure_reason,
            created_at: call.created_at,
            updated_at: call.updated_at,
            outcome: call.outcome.map(OutcomeView::from),
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

// ---- GET /calls: the listing (parameters and cursor in calls/listing.rs) ----

pub(crate) mod listing;

pub use listing::ListCallsParams;

/// One page of Calls, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CallListView {
    /// Each Call exactly as `GET /calls/{call_sid}` returns it.
    pub calls: Vec<CallView>,
    /// Send it back as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Calls newest first (`call_start_time`, then `id`, both descending), one page at a time.
/// Filters combine with AND; pages are cut by position (keyset), so Calls written while a
/// client walks the pages neither repeat nor shift them.
#[utoipa::path(
    get,
    path = "/calls",
    tag = "calls",
    params(ListCallsParams),
    responses(
        (status = 200, description = "One page of Calls", body = CallListView),
        (status = 400, description = "An invalid or unknown query parameter, or a cursor that is not one of ours", body = crate::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid API token", body = crate::openapi::ErrorBody),
        (status = 500, description = "Database unavailable", body = crate::openapi::ErrorBody),
    ),
    security(("api_token" = []))
)]
pub async fn list_calls(
    _token: ApiToken,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = listing::parse(req.query_string())?;
    let page = state.repository.list_calls(&query).await?;
    let next_cursor = page.next.map(|next| listing::cursor_after(&query, next));
    Ok(HttpResponse::Ok().json(CallListView {
        calls: page.calls.into_iter().map(CallView::from).collect(),
        next_cursor,
    }))
}
