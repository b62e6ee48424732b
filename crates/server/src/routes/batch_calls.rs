//! `POST /driver_data/call-elevenlabs`: the dispatcher's batch of violation calls, a
//! synchronous front of the durable batches (SPEC, end of that section). The batch is
//! recorded exactly like `POST /batches`; then the drivers whose first attempt is due now
//! are claimed like the dialer claims them (so each is dialed exactly once, whoever gets
//! there first) and dialed here, within this instance's `CALL_CONCURRENCY`; the answer
//! waits for ElevenLabs. Drivers not due now are listed as `scheduled`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use calls_domain::models::{BatchId, BatchView, Due, RecipientState, RecipientView};
use calls_domain::service::DialOutcome;
use calls_domain::{Call, CallSid, CallStatus};
use serde::Serialize;
use time::OffsetDateTime;
use time::serde::rfc3339 as rfc3339_utc;

use crate::auth::ApiToken;
use crate::body::JsonBody;
use crate::dialer::dial_one;
use crate::errors::ApiError;
use crate::routes::batch_request::BatchCallRequest;
use crate::state::AppState;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DriverView {
    #[serde(rename = "driverId")]
    pub driver_id: i64,
    #[serde(rename = "driverName")]
    pub driver_name: String,
    /// E.164, as normalized.
    #[serde(rename = "phoneNumber")]
    pub phone_number: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CallResultView {
    pub call_sid: String,
    /// 1 for a driver dialed now.
    pub attempt: u32,
    pub conversation_id: Option<String>,
    /// The provider's call id (Twilio's `CA…`), when placed.
    #[serde(rename = "callSid")]
    pub provider_call_sid: Option<String>,
    /// `in_progress` when placed, `failed` when not, `scheduled` when the driver's first
    /// attempt is not due now (outside the call window, or the pre-dial check said not
    /// yet).
    pub status: &'static str,
    pub driver: DriverView,
    pub triggers_count: usize,
    /// When a `scheduled` driver's attempt is due (ISO 8601 UTC); absent otherwise.
    #[serde(with = "rfc3339_utc::option", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, nullable = false)]
    pub scheduled_for: Option<OffsetDateTime>,
    /// Why the call failed (absent when placed); phone numbers masked.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub error: Option<String>,
}

/// What happened to one driver in this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialed {
    Placed,
    Failed,
    /// Not dialed now.
    Later,
}

/// Per-driver results in request order; with exactly one driver the top level repeats that
/// call's `call_sid`, `conversation_id`, `callSid`, `driver` and `triggers_count`. A 502
/// body also carries the error envelope's `status`, `message` and `details`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"message": "Initiated 1 of 1 calls", "timestamp": "2024-11-21T10:00:00Z", "batch_id": "0193a4c2-7b1e-7d3a-9f00-1c2d3e4f5a6b", "call_sid": "EL_333_2024-11-21T10:00:00Z", "conversation_id": "conv_abc123", "callSid": "CA0123456789abcdef0123456789abcdef", "driver": {"driverId": 333, "driverName": "Test Driver", "phoneNumber": "+15551234567"}, "triggers_count": 1, "calls": [{"call_sid": "EL_333_2024-11-21T10:00:00Z", "attempt": 1, "conversation_id": "conv_abc123", "callSid": "CA0123456789abcdef0123456789abcdef", "status": "in_progress", "driver": {"driverId": 333, "driverName": "Test Driver", "phoneNumber": "+15551234567"}, "triggers_count": 1}]}))]
pub struct BatchCallResponse {
    /// `error` when every call dialed now failed (502); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub status: Option<&'static str>,
    pub message: String,
    /// The first failure's reason when every call dialed now failed (502); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub details: Option<String>,
    pub timestamp: String,
    /// The batch this request was recorded as (`GET /batches/{batch_id}`).
    pub batch_id: String,
    /// With exactly one driver: that call's call_sid (the seed's shape).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub call_sid: Option<String>,
    /// With exactly one driver: that call's conversation_id (`null` unless placed).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub conversation_id: Option<Option<String>>,
    /// With exactly one driver: the provider's call id (`null` unless placed).
    #[serde(rename = "callSid", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub provider_call_sid: Option<Option<String>>,
    /// With exactly one driver: that call's driver.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub driver: Option<DriverView>,
    /// With exactly one driver: that call's number of violations.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub triggers_count: Option<usize>,
    pub calls: Vec<CallResultView>,
}

impl BatchCallResponse {
    /// The status counts the drivers dialed now: all placed 200, some failed 207, all
    /// failed 502, none dialed now 202.
    fn new(
        timestamp: &str,
        batch_id: String,
        results: Vec<(Dialed, CallResultView)>,
    ) -> (StatusCode, Self) {
        let count = |kind| results.iter().filter(|(d, _)| *d == kind).count();
        let (placed, failed, later) = (
            count(Dialed::Placed),
            count(Dialed::Failed),
            count(Dialed::Later),
        );
        let dialed = placed + failed;
        let status = if dialed == 0 {
            StatusCode::ACCEPTED
        } else if failed == 0 {
            StatusCode::OK
        } else if placed == 0 {
            StatusCode::BAD_GATEWAY
        } else {
            StatusCode::MULTI_STATUS
        };
        let all_failed = status == StatusCode::BAD_GATEWAY;
        let details = all_failed.then(|| {
            results
                .iter()
                .find_map(|(_, c)| c.error.clone())
                .unwrap_or_default()
        });
        let calls: Vec<CallResultView> = results.into_iter().map(|(_, c)| c).collect();
        let single = match calls.as_slice() {
            [only] => Some(only),
            _ => None,
        };
        let mut message = if all_failed {
            format!("All {dialed} calls failed")
        } else {
            format!("Initiated {placed} of {dialed} calls")
        };
        if later > 0 {
            message.push_str(&format!("; {later} scheduled for later"));
        }
        let body = Self {
            status: all_failed.then_some("error"),
            message,
            details,
            timestamp: timestamp.to_owned(),
            batch_id,
            call_sid: single.map(|c| c.call_sid.clone()),
            conversation_id: single.map(|c| c.conversation_id.clone()),
            provider_call_sid: single.map(|c| c.provider_call_sid.clone()),
            driver: single.map(|c| c.driver.clone()),
            triggers_count: single.map(|c| c.triggers_count),
            calls,
        };
        (status, body)
    }
}

/// Record the batch, dial the drivers due now (the Call is written before ElevenLabs is
/// asked to dial), wait for the answers.
///
/// The whole batch is validated first; drivers are dialed concurrently, within this
/// instance's `CALL_CONCURRENCY` (shared with the dialer).
#[utoipa::path(
    post,
    path = "/driver_data/call-elevenlabs",
    tag = "calls",
    request_body(content = BatchCallRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Every call dialed now was placed", body = BatchCallResponse),
        (status = 202, description = "No driver was due now: all are scheduled (see scheduled_for)", body = BatchCallResponse),
        (status = 207, description = "Some calls failed (see each call's status and error); failed first attempts are re-dialed later", body = BatchCallResponse),
        (status = 400, description = "Invalid batch (every problem listed) or malformed JSON; nothing written, nobody dialed", body = crate::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid API token; the body is not read", body = crate::openapi::ErrorBody),
        (status = 408, description = "The body did not arrive within the body read timeout", body = crate::openapi::ErrorBody),
        (status = 409, description = "A call_sid exists already (a retried request); nothing written, nobody dialed", body = crate::openapi::ErrorBody),
        (status = 413, description = "Body larger than MAX_BODY_BYTES", body = crate::openapi::ErrorBody),
        (status = 415, description = "Not application/json", body = crate::openapi::ErrorBody),
        (status = 500, description = "Database unavailable, or busy past its timeouts", body = crate::openapi::ErrorBody),
        (status = 502, description = "Every call dialed now failed; the Calls exist as failed", body = BatchCallResponse),
    ),
    security(("api_token" = []))
)]
// `ApiToken` comes first: extractors run in order, so an unauthenticated body is never read.
pub async fn place(
    _token: ApiToken,
    body: JsonBody<BatchCallRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let now = OffsetDateTime::now_utc();
    let batch = body.0.into_batch(now)?;
    let created = state.create_batch.execute(&batch, now).await?;
    let batch_id = created.batch_id;
    let limit = u32::try_from(created.drivers.len()).unwrap_or(u32::MAX);
    let claimed_at = OffsetDateTime::now_utc();
    let mut claims = state
        .dialer
        .claim_batch(&batch_id, claimed_at, limit)
        .await?;
    // A dialer's claim that locked a due driver and then gave it up (its transaction
    // failed) makes ours skip that row: try again briefly, so a driver due now is dialed
    // now. A driver a dialer did take is reported from its Call below.
    let due_now = created
        .drivers
        .iter()
        .filter(|r| {
            r.state == RecipientState::Scheduled
                && r.next_attempt_at.is_some_and(|at| at <= claimed_at)
        })
        .count();
    for _ in 0..CLAIM_RETRIES {
        if claims.len() >= due_now {
            break;
        }
        tokio::time::sleep(CLAIM_RETRY_PAUSE).await;
        let rest = u32::try_from(due_now - claims.len()).unwrap_or(u32::MAX);
        claims.extend(
            state
                .dialer
                .claim_batch(&batch_id, claimed_at, rest)
                .await?,
        );
    }
    // Each dial runs in a task of its own, so a client that hangs up cannot cut a dial
    // short between its Call and its answer.
    let tasks: Vec<_> = claims
        .into_iter()
        .map(|claim| {
            let state = state.clone();
            let driver_id = claim.driver.driver_id;
            let provider_ids = tokio::spawn(async move {
                let permit = state.dial_permits.clone().acquire_owned().await;
                match permit {
                    Ok(permit) => dial_one(&state.dialer, &state.metrics, claim, permit).await,
                    // The semaphore is never closed; should it be, the claim is released
                    // by the dialer's sweep and nobody was dialed.
                    Err(_) => DialOutcome::StoreFailed {
                        reason: "shutting down".to_owned(),
                    },
                }
            });
            (driver_id, provider_ids)
        })
        .collect();
    let mut outcomes = HashMap::with_capacity(tasks.len());
    for (driver_id, task) in tasks {
        match task.await {
            Ok(outcome) => {
                outcomes.insert(driver_id, outcome);
            }
            Err(e) => tracing::error!(error = %e, driver_id, "dial task failed"),
        }
    }
    // Drivers not dialed here are read back: scheduled for later (or, rarely, taken by a
    // dialer between our create and our claim).
    let current = if outcomes.len() < created.drivers.len() {
        settled_view(&state, &batch_id, &outcomes)
            .await?
            .unwrap_or(created)
    } else {
        created
    };
    // A driver another instance's dialer took is reported from its Call, as it stands.
    let mut taken = HashMap::new();
    for recipient in &current.drivers {
        if outcomes.contains_key(&recipient.driver_id) {
            continue;
        }
        if let Some(attempt) = recipient.attempts.first() {
            if let Some(call) = answered_call(&state, &attempt.call_sid).await? {
                taken.insert(recipient.driver_id, call);
            }
        }
    }
    let results = results(&batch, &current, &outcomes, &taken);
    let (status, response) =
        BatchCallResponse::new(batch.timestamp(), batch_id.to_string(), results);
    Ok(HttpResponse::build(status).json(response))
}

/// Extra claims for drivers due now that a concurrent claim had locked (see `place`).
const CLAIM_RETRIES: usize = 5;
const CLAIM_RETRY_PAUSE: Duration = Duration::from_millis(20);

/// How long the answer waits for a driver that was due now but claimed by a dialer (of any
/// instance) between this request's create and its claim: about one outbound request.
const TAKEN_WAIT: Duration = Duration::from_secs(30);

/// The batch once no driver this request did not dial is still `dialing`, so that such a
/// driver is reported with its answer like the others (bounded by [`TAKEN_WAIT`]).
async fn settled_view(
    state: &AppState,
    batch_id: &BatchId,
    outcomes: &HashMap<i64, DialOutcome>,
) -> Result<Option<BatchView>, ApiError> {
    let started = Instant::now();
    loop {
        let view = state.read_batches.get(batch_id).await?;
        let pending = view.as_ref().is_some_and(|v| {
            v.drivers
                .iter()
                .any(|r| !outcomes.contains_key(&r.driver_id) && r.state == RecipientState::Dialing)
        });
        if !pending || started.elapsed() >= TAKEN_WAIT {
            return Ok(view);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The attempt's Call once its outbound request was answered (a conversation_id, or
/// failed), or as it stands after [`TAKEN_WAIT`].
async fn answered_call(state: &AppState, call_sid: &CallSid) -> Result<Option<Call>, ApiError> {
    let started = Instant::now();
    loop {
        let call = state.repository.get_by_call_sid(call_sid).await?;
        let waiting = call
            .as_ref()
            .is_some_and(|c| c.status == CallStatus::InProgress && c.conversation_id.is_none());
        if !waiting || started.elapsed() >= TAKEN_WAIT {
            return Ok(call);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One entry per driver, in request order.
fn results(
    batch: &calls_domain::models::Batch,
    view: &BatchView,
    outcomes: &HashMap<i64, DialOutcome>,
    taken: &HashMap<i64, Call>,
) -> Vec<(Dialed, CallResultView)> {
    batch
        .drivers()
        .iter()
        .filter_map(|driver| {
            let recipient = view
                .drivers
                .iter()
                .find(|r| r.driver_id == driver.driver_id)?;
            let mut entry = CallResultView {
                call_sid: first_call_sid(recipient, batch.timestamp(), driver.driver_id),
                attempt: 1,
                conversation_id: None,
                provider_call_sid: None,
                status: CallStatus::Failed.as_str(),
                driver: DriverView {
                    driver_id: driver.driver_id,
                    driver_name: driver.driver_name.clone(),
                    phone_number: driver.phone_number.to_string(),
                },
                triggers_count: driver.violations.len(),
                scheduled_for: None,
                error: None,
            };
            let dialed = match outcomes.get(&driver.driver_id) {
                Some(outcome) => apply(&mut entry, outcome),
                None => from_view(&mut entry, recipient, taken.get(&driver.driver_id)),
            };
            Some((dialed, entry))
        })
        .collect()
}

fn first_call_sid(recipient: &RecipientView, timestamp: &str, driver_id: i64) -> String {
    recipient
        .attempts
        .first()
        .map(|a| a.call_sid.to_string())
        .unwrap_or_else(|| format!("EL_{driver_id}_{timestamp}"))
}

fn apply(entry: &mut CallResultView, outcome: &DialOutcome) -> Dialed {
    match outcome {
        DialOutcome::Placed {
            conversation_id,
            provider_call_id,
        } => {
            entry.status = CallStatus::InProgress.as_str();
            entry.conversation_id = Some(conversation_id.to_string());
            entry.provider_call_sid = provider_call_id.clone();
            Dialed::Placed
        }
        DialOutcome::Failed { reason, .. } => {
            entry.error = Some(reason.clone());
            Dialed::Failed
        }
        DialOutcome::NotDialed { next, .. } => match next {
            Due::At(at) => {
                entry.status = "scheduled";
                entry.scheduled_for = Some(*at);
                Dialed::Later
            }
            Due::Expired => {
                entry.error = Some(calls_domain::models::EXPIRED.to_owned());
                Dialed::Later
            }
        },
        DialOutcome::Abandoned => {
            entry.error = Some("the batch was cancelled before this driver was dialed".into());
            Dialed::Later
        }
        DialOutcome::StoreFailed { reason } => {
            entry.error = Some(reason.clone());
            Dialed::Failed
        }
    }
}

/// A driver this request did not dial, as the batch view and its Call show it now.
fn from_view(entry: &mut CallResultView, recipient: &RecipientView, call: Option<&Call>) -> Dialed {
    match call {
        // Another instance's dialer got there first: its attempt, as it stands.
        Some(call) => {
            entry.status = call.status.as_str();
            entry.conversation_id = call.conversation_id.as_ref().map(ToString::to_string);
            entry.error = call.failure_reason.clone();
            if call.status == CallStatus::Failed {
                Dialed::Failed
            } else {
                Dialed::Placed
            }
        }
        None => {
            entry.status = "scheduled";
            entry.scheduled_for = recipient.next_attempt_at;
            entry.error = recipient.failure_reason.clone();
            Dialed::Later
        }
    }
}
