//! `POST /driver_data/call-elevenlabs`: the dispatcher's batch of violation calls.
//!
//! Wire types: [`BatchCallRequest`] (the seed's BatchCallRequest) and
//! [`BatchCallResponse`]. Request fields are `Option`s so that serde only checks types;
//! the domain's `RawBatch::validate` then reports every missing or invalid field at once.

use std::fmt;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use calls_domain::models::{RawBatch, RawDriver, RawViolation};
use calls_domain::service::{BatchOutcome, DriverCallResult};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::auth::ApiToken;
use crate::body::{BodyLimits, JsonBody, JsonRequest};
use crate::errors::ApiError;
use crate::startup::AppState;

/// The dispatcher's batch (the seed's BatchCallRequest).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"callType": "violation", "timestamp": "2024-11-21T10:00:00Z", "drivers": [{"driverId": 333, "driverName": "Test Driver", "phoneNumber": "+15551234567", "customRules": "", "violations": {"tripId": "trip_123", "violationDetails": [{"type": "temperature", "description": "Temperature out of range"}]}}]}))]
pub struct BatchCallRequest {
    #[schema(required = true, nullable = false, min_length = 1)]
    pub call_type: Option<String>,
    /// Used as given in `call_sid = EL_{driverId}_{timestamp}`; an integer is used as its
    /// decimal text. No control characters; spaces are kept (`2024-11-21 10:00:00`).
    #[schema(required = true, nullable = false, value_type = String, min_length = 1)]
    pub timestamp: Option<BatchTimestamp>,
    #[schema(required = true, nullable = false, min_items = 1)]
    pub drivers: Option<Vec<DriverData>>,
}

impl JsonRequest for BatchCallRequest {
    fn limit(limits: &BodyLimits) -> usize {
        limits.batch
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DriverData {
    /// Unique within the batch, ≥ 0.
    #[schema(required = true, nullable = false, minimum = 0)]
    pub driver_id: Option<i64>,
    #[schema(required = true, nullable = false, min_length = 1)]
    pub driver_name: Option<String>,
    /// Any format the phone-number library can normalise to E.164 (no `+`: a US number).
    #[schema(required = true, nullable = false, min_length = 1)]
    pub phone_number: Option<String>,
    #[schema(nullable = false)]
    pub custom_rules: Option<String>,
    #[schema(required = true, nullable = false)]
    pub violations: Option<Violations>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Violations {
    #[schema(required = true, nullable = false, min_length = 1)]
    pub trip_id: Option<String>,
    #[schema(required = true, nullable = false, min_items = 1)]
    pub violation_details: Option<Vec<ViolationDetail>>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ViolationDetail {
    #[serde(rename = "type")]
    #[schema(required = true, nullable = false, min_length = 1)]
    pub kind: Option<String>,
    #[schema(required = true, nullable = false, min_length = 1)]
    pub description: Option<String>,
}

/// The batch timestamp: a JSON string, or an integer (unix seconds) taken as its decimal
/// text, so that both forms give the same call_sid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchTimestamp(pub String);

impl<'de> Deserialize<'de> for BatchTimestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;
        impl Visitor<'_> for Text {
            type Value = BatchTimestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(BatchTimestamp(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(BatchTimestamp(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(BatchTimestamp(v.to_string()))
            }
        }
        deserializer.deserialize_any(Text)
    }
}

impl From<BatchCallRequest> for RawBatch {
    fn from(request: BatchCallRequest) -> Self {
        Self {
            call_type: request.call_type,
            timestamp: request.timestamp.map(|t| t.0),
            drivers: request
                .drivers
                .map(|drivers| drivers.into_iter().map(RawDriver::from).collect()),
        }
    }
}

impl From<DriverData> for RawDriver {
    fn from(driver: DriverData) -> Self {
        let (trip_id, details) = driver
            .violations
            .map(|v| (v.trip_id, v.violation_details))
            .unwrap_or_default();
        Self {
            driver_id: driver.driver_id,
            driver_name: driver.driver_name,
            phone_number: driver.phone_number,
            custom_rules: driver.custom_rules,
            trip_id,
            violations: details.map(|list| {
                list.into_iter()
                    .map(|d| RawViolation {
                        kind: d.kind,
                        description: d.description,
                    })
                    .collect()
            }),
        }
    }
}

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
    pub conversation_id: Option<String>,
    /// The provider's call id (Twilio's `CA…`), when placed.
    #[serde(rename = "callSid")]
    pub provider_call_sid: Option<String>,
    /// `in_progress` when placed, `failed` otherwise.
    pub status: &'static str,
    pub driver: DriverView,
    pub triggers_count: usize,
    /// Why the call failed (absent when placed); phone numbers masked.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub error: Option<String>,
}

impl From<&DriverCallResult> for CallResultView {
    fn from(r: &DriverCallResult) -> Self {
        Self {
            call_sid: r.driver.call_sid.to_string(),
            conversation_id: r.conversation_id.as_ref().map(ToString::to_string),
            provider_call_sid: r.provider_call_id.clone(),
            status: r.status.as_str(),
            driver: DriverView {
                driver_id: r.driver.driver_id,
                driver_name: r.driver.driver_name.clone(),
                phone_number: r.driver.phone_number.to_string(),
            },
            triggers_count: r.driver.violations.len(),
            error: r.error.clone(),
        }
    }
}

/// Per-driver results in request order; with exactly one driver the top level repeats that
/// call's `call_sid`, `conversation_id`, `callSid`, `driver` and `triggers_count`. A 502
/// body also carries the error envelope's `status`, `message` and `details`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"message": "Initiated 1 of 1 calls", "timestamp": "2024-11-21T10:00:00Z", "call_sid": "EL_333_2024-11-21T10:00:00Z", "conversation_id": "conv_abc123", "callSid": "CA0123456789abcdef0123456789abcdef", "driver": {"driverId": 333, "driverName": "Test Driver", "phoneNumber": "+15551234567"}, "triggers_count": 1, "calls": [{"call_sid": "EL_333_2024-11-21T10:00:00Z", "conversation_id": "conv_abc123", "callSid": "CA0123456789abcdef0123456789abcdef", "status": "in_progress", "driver": {"driverId": 333, "driverName": "Test Driver", "phoneNumber": "+15551234567"}, "triggers_count": 1}]}))]
pub struct BatchCallResponse {
    /// `error` when every call failed (502); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub status: Option<&'static str>,
    pub message: String,
    /// The first failure's reason when every call failed (502); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub details: Option<String>,
    pub timestamp: String,
    /// With exactly one driver: that call's call_sid (the seed's shape).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub call_sid: Option<String>,
    /// With exactly one driver: that call's conversation_id (`null` when it failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub conversation_id: Option<Option<String>>,
    /// With exactly one driver: the provider's call id (`null` when it failed).
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
    fn new(timestamp: &str, outcome: &BatchOutcome) -> (StatusCode, Self) {
        let calls: Vec<CallResultView> = outcome.results.iter().map(CallResultView::from).collect();
        let (placed, total) = (outcome.placed(), outcome.results.len());
        let status = if placed == total {
            StatusCode::OK
        } else if placed == 0 {
            StatusCode::BAD_GATEWAY
        } else {
            StatusCode::MULTI_STATUS
        };
        let all_failed = status == StatusCode::BAD_GATEWAY;
        let single = match calls.as_slice() {
            [only] => Some(only),
            _ => None,
        };
        let body = Self {
            status: all_failed.then_some("error"),
            message: if all_failed {
                format!("All {total} calls failed")
            } else {
                format!("Initiated {placed} of {total} calls")
            },
            details: all_failed.then(|| {
                outcome
                    .results
                    .iter()
                    .find_map(|r| r.error.clone())
                    .unwrap_or_default()
            }),
            timestamp: timestamp.to_owned(),
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

/// Place one call per driver: the Call is written before ElevenLabs is asked to dial.
///
/// The whole batch is validated first; drivers are dialed concurrently (`CALL_CONCURRENCY`).
#[utoipa::path(
    post,
    path = "/driver_data/call-elevenlabs",
    tag = "calls",
    request_body(content = BatchCallRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Every call placed", body = BatchCallResponse),
        (status = 207, description = "Some calls failed (see each call's status and error)", body = BatchCallResponse),
        (status = 400, description = "Invalid batch (every problem listed) or malformed JSON; nothing written, nobody dialed", body = crate::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid API token; the body is not read", body = crate::openapi::ErrorBody),
        (status = 408, description = "The body did not arrive within the body read timeout", body = crate::openapi::ErrorBody),
        (status = 409, description = "A call_sid exists already (a retried request); nobody dialed", body = crate::openapi::ErrorBody),
        (status = 413, description = "Body larger than MAX_BODY_BYTES", body = crate::openapi::ErrorBody),
        (status = 415, description = "Not application/json", body = crate::openapi::ErrorBody),
        (status = 500, description = "Database unavailable, or busy past its timeouts", body = crate::openapi::ErrorBody),
        (status = 502, description = "Every call failed; the Calls exist as failed", body = BatchCallResponse),
    ),
    security(("api_token" = []))
)]
// `ApiToken` comes first: extractors run in order, so an unauthenticated body is never read.
pub async fn place(
    _token: ApiToken,
    body: JsonBody<BatchCallRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let batch = RawBatch::from(body.0).validate()?;
    let outcome = state.place_calls.execute(&batch).await?;
    let (status, response) = BatchCallResponse::new(&batch.timestamp, &outcome);
    Ok(HttpResponse::build(status).json(response))
}
