//! `POST /driver_data/call-elevenlabs`: the dispatcher's batch of violation calls.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use calls_domain::models::{RawBatch, RawDriver, RawViolation};
use calls_domain::service::{BatchOutcome, DriverCallResult, PlaceCallsError};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::auth::require_api_token;
use crate::errors::ApiError;
use crate::routes::{parse_json_object, read_body, require_json};
use crate::startup::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DriverView {
    #[serde(rename = "driverId")]
    pub driver_id: i64,
    #[serde(rename = "driverName")]
    pub driver_name: String,
    #[serde(rename = "phoneNumber")]
    pub phone_number: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CallResultView {
    pub call_sid: String,
    pub conversation_id: Option<String>,
    #[serde(rename = "callSid")]
    pub provider_call_sid: Option<String>,
    /// `in_progress` when placed, `failed` otherwise.
    pub status: &'static str,
    pub driver: DriverView,
    pub triggers_count: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
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

/// Collects type errors while reading the JSON into the domain's raw batch, so every
/// problem is reported at once.
struct Reader {
    problems: Vec<String>,
}

impl Reader {
    fn string(&mut self, obj: &Map<String, Value>, key: &str, at: &str) -> Option<String> {
        match obj.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                self.problems.push(format!("{at}{key}: must be a string"));
                Some(String::new())
            }
        }
    }

    fn object<'a>(&mut self, value: Option<&'a Value>, at: &str) -> Option<&'a Map<String, Value>> {
        match value {
            None | Some(Value::Null) => None,
            Some(Value::Object(o)) => Some(o),
            Some(_) => {
                self.problems.push(format!("{at}: must be an object"));
                None
            }
        }
    }

    fn array<'a>(&mut self, value: Option<&'a Value>, at: &str) -> Option<&'a Vec<Value>> {
        match value {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) => Some(a),
            Some(_) => {
                self.problems.push(format!("{at}: must be an array"));
                None
            }
        }
    }

    fn batch(&mut self, obj: &Map<String, Value>) -> RawBatch {
        let drivers = self.array(obj.get("drivers"), "drivers").map(|list| {
            list.iter()
                .enumerate()
                .map(|(i, d)| self.driver(d, &format!("drivers[{i}]")))
                .collect()
        });
        RawBatch {
            call_type: self.string(obj, "callType", ""),
            // Dispatchers that send unix seconds as a JSON number get the same call_sid as
            // with the string form.
            timestamp: match obj.get("timestamp") {
                Some(Value::Number(n)) if n.is_u64() || n.is_i64() => Some(n.to_string()),
                _ => self.string(obj, "timestamp", ""),
            },
            drivers,
        }
    }

    fn driver(&mut self, value: &Value, at: &str) -> RawDriver {
        let Some(obj) = self.object(Some(value), at) else {
            return RawDriver::default();
        };
        let field = format!("{at}.");
        let driver_id = match obj.get("driverId") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64(),
            Some(_) => {
                self.problems
                    .push(format!("{field}driverId: must be an integer"));
                Some(0)
            }
        };
        let violations = self.object(obj.get("violations"), &format!("{field}violations"));
        let trip_id =
            violations.and_then(|v| self.string(v, "tripId", &format!("{field}violations.")));
        let details = violations.and_then(|v| {
            self.array(
                v.get("violationDetails"),
                &format!("{field}violations.violationDetails"),
            )
        });
        let details = details.map(|list| {
            list.iter()
                .enumerate()
                .map(|(j, d)| {
                    let at = format!("{field}violations.violationDetails[{j}]");
                    match self.object(Some(d), &at) {
                        Some(o) => RawViolation {
                            kind: self.string(o, "type", &format!("{at}.")),
                            description: self.string(o, "description", &format!("{at}.")),
                        },
                        None => RawViolation::default(),
                    }
                })
                .collect()
        });
        RawDriver {
            driver_id,
            driver_name: self.string(obj, "driverName", &field),
            phone_number: self.string(obj, "phoneNumber", &field),
            custom_rules: self.string(obj, "customRules", &field),
            trip_id,
            violations: details,
        }
    }
}

fn invalid(problems: &[String]) -> ApiError {
    ApiError::bad_request("Invalid batch request", problems.join("; "))
}

/// Place one call per driver: the Call is written before ElevenLabs is asked to dial.
///
/// The whole batch is validated first; drivers are dialed concurrently (`CALL_CONCURRENCY`).
#[utoipa::path(
    post,
    path = "/driver_data/call-elevenlabs",
    tag = "calls",
    request_body(content = crate::openapi::BatchCallRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Every call placed", body = crate::openapi::BatchCallResponse),
        (status = 207, description = "Some calls failed (see each call's status and error)", body = crate::openapi::BatchCallResponse),
        (status = 400, description = "Invalid batch; nothing written, nobody dialed", body = crate::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid API token", body = crate::openapi::ErrorBody),
        (status = 409, description = "A call_sid exists already (a retried request); nobody dialed", body = crate::openapi::ErrorBody),
        (status = 502, description = "Every call failed; the Calls exist as failed", body = crate::openapi::BatchCallResponse),
    ),
    security(("api_token" = []))
)]
pub async fn place(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_api_token(&req, state.settings.api_token.as_ref())?;
    let body = read_body(&req, payload, state.settings.max_body_bytes).await?;
    require_json(&req)?;
    let object = parse_json_object(&body)?;
    let mut reader = Reader {
        problems: Vec::new(),
    };
    let raw = reader.batch(&object);
    let validated = raw.validate();
    let mut problems = reader.problems;
    if let Err(e) = &validated {
        problems.extend(e.problems.iter().cloned());
    }
    if !problems.is_empty() {
        problems.dedup();
        return Err(invalid(&problems));
    }
    let batch = validated.map_err(|e| invalid(&e.problems))?;

    let outcome = state
        .place_calls
        .execute(&batch)
        .await
        .map_err(|e| match e {
            PlaceCallsError::AlreadyExists { ref call_sids } => ApiError::conflict(
                "Call already exists",
                format!(
                    "call_sid already exists (a retried request?); nobody was dialed: {}",
                    call_sids
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            PlaceCallsError::Unavailable(ref inner) => ApiError::db_unavailable(inner.as_ref()),
            PlaceCallsError::Unexpected(ref inner) => ApiError::internal(inner.as_ref()),
        })?;
    Ok(respond(&batch.timestamp, &outcome))
}

fn respond(timestamp: &str, outcome: &BatchOutcome) -> HttpResponse {
    let calls: Vec<CallResultView> = outcome.results.iter().map(CallResultView::from).collect();
    let (placed, total) = (outcome.placed(), outcome.results.len());
    let status = if placed == total {
        StatusCode::OK
    } else if placed == 0 {
        StatusCode::BAD_GATEWAY
    } else {
        StatusCode::MULTI_STATUS
    };
    let mut body = Map::new();
    if status == StatusCode::BAD_GATEWAY {
        // All failed: the error envelope, plus the per-call results.
        body.insert("status".into(), "error".into());
        body.insert("message".into(), format!("All {total} calls failed").into());
        let first = outcome
            .results
            .iter()
            .find_map(|r| r.error.clone())
            .unwrap_or_default();
        body.insert("details".into(), first.into());
    } else {
        body.insert(
            "message".into(),
            format!("Initiated {placed} of {total} calls").into(),
        );
    }
    body.insert("timestamp".into(), timestamp.into());
    if let [only] = calls.as_slice() {
        // The seed's response shape for a single driver.
        body.insert("call_sid".into(), only.call_sid.clone().into());
        body.insert(
            "conversation_id".into(),
            only.conversation_id.clone().into(),
        );
        body.insert("callSid".into(), only.provider_call_sid.clone().into());
        body.insert(
            "driver".into(),
            serde_json::to_value(&only.driver).unwrap_or_default(),
        );
        body.insert("triggers_count".into(), only.triggers_count.into());
    }
    body.insert(
        "calls".into(),
        serde_json::to_value(&calls).unwrap_or_default(),
    );
    HttpResponse::build(status).json(Value::Object(body))
}
