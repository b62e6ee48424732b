//! JSON shapes of ElevenLabs' `POST /v1/convai/twilio/outbound-call`, kept private so the
//! rest of the crate (and the domain) never depends on the provider's field names.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize)]
pub(crate) struct OutboundCallRequest<'a> {
    pub agent_id: &'a str,
    pub agent_phone_number_id: &'a str,
    pub to_number: &'a str,
    pub conversation_initiation_client_data: ClientData<'a>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ClientData<'a> {
    pub dynamic_variables: &'a BTreeMap<String, String>,
    pub conversation_config_override: ConfigOverride<'a>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ConfigOverride<'a> {
    pub agent: AgentOverride<'a>,
}

#[derive(Debug, Serialize)]
pub(crate) struct AgentOverride<'a> {
    pub prompt: PromptOverride<'a>,
}

#[derive(Debug, Serialize)]
pub(crate) struct PromptOverride<'a> {
    pub prompt: &'a str,
}

impl<'a> OutboundCallRequest<'a> {
    pub(crate) fn new(
        agent_id: &'a str,
        agent_phone_number_id: &'a str,
        to_number: &'a str,
        dynamic_variables: &'a BTreeMap<String, String>,
        prompt: &'a str,
    ) -> Self {
        Self {
            agent_id,
            agent_phone_number_id,
            to_number,
            conversation_initiation_client_data: ClientData {
                dynamic_variables,
                conversation_config_override: ConfigOverride {
                    agent: AgentOverride {
                        prompt: PromptOverride { prompt },
                    },
                },
            },
        }
    }
}

/// `TwilioOutboundCallResponse`. Everything but `success` is optional here: the schema
/// makes `conversation_id`/`callSid` nullable, and a missing `message` is no reason to
/// lose a call that was placed.
#[derive(Debug, Deserialize)]
pub(crate) struct OutboundCallResponse {
    pub success: bool,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub conversation_id: Option<String>,
    #[serde(default, rename = "callSid")]
    pub call_sid: Option<String>,
}

/// Error bodies: FastAPI's `{"detail": [...]}` (422), ElevenLabs' own
/// `{"detail": {"status", "message"}}`, or a plain `{"detail": "..."}`.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    detail: serde_json::Value,
}

/// A one-line summary of an error body, for logs and the failure reason of a Call.
/// Falls back to the raw text when the body is not one of the known shapes.
pub(crate) fn error_detail(body: &[u8]) -> String {
    let summary = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|b| summarize_detail(&b.detail))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
    // Bodies may be HTML error pages or contain newlines; keep one log-friendly line.
    let one_line = summary.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.is_empty() {
        "(empty body)".to_owned()
    } else {
        one_line
    }
}

fn summarize_detail(detail: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match detail {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().filter_map(summarize_validation_item).collect();
            (!parts.is_empty()).then(|| parts.join("; "))
        }
        Value::Object(map) => {
            let status = map.get("status").and_then(Value::as_str);
            let message = map.get("message").and_then(Value::as_str);
            match (status, message) {
                (Some(s), Some(m)) => Some(format!("{s}: {m}")),
                (Some(s), None) => Some(s.to_owned()),
                (None, Some(m)) => Some(m.to_owned()),
                (None, None) => None,
            }
        }
        _ => None,
    }
}

/// `{"loc": ["body", "to_number"], "msg": "...", "type": "..."}` → `body.to_number: ...`.
/// Pydantic's `input` field is left out on purpose: it echoes the submitted value, which
/// may be the driver's phone number.
fn summarize_validation_item(item: &serde_json::Value) -> Option<String> {
    let msg = item.get("msg").and_then(serde_json::Value::as_str)?;
    let loc = item
        .get("loc")
        .and_then(serde_json::Value::as_array)
        .map(|parts| {
            parts
                .iter()
                .map(|p| match p {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(".")
        })
        .filter(|loc| !loc.is_empty());
    Some(match loc {
        Some(loc) => format!("{loc}: {msg}"),
        None => msg.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_serializes_to_the_documented_shape() {
        let vars = BTreeMap::from([("call_sid".to_owned(), "EL_1_2".to_owned())]);
        let req = OutboundCallRequest::new("agent", "phone", "+15551234567", &vars, "be nice");
        let json = serde_json::to_value(&req).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({
                "agent_id": "agent",
                "agent_phone_number_id": "phone",
                "to_number": "+15551234567",
                "conversation_initiation_client_data": {
                    "dynamic_variables": {"call_sid": "EL_1_2"},
                    "conversation_config_override": {"agent": {"prompt": {"prompt": "be nice"}}}
                }
            })
        );
    }

    #[test]
    fn response_is_lenient_about_optional_fields() {
        let r: OutboundCallResponse =
            serde_json::from_str(r#"{"success":true,"conversation_id":"c","callSid":"CA1"}"#)
                .expect("parses");
        assert!(r.success);
        assert_eq!(r.message, None);
        assert_eq!(r.conversation_id.as_deref(), Some("c"));
        assert_eq!(r.call_sid.as_deref(), Some("CA1"));
        assert!(serde_json::from_str::<OutboundCallResponse>(r#"{"message":"x"}"#).is_err());
    }

    #[test]
    fn fastapi_validation_detail_is_summarized_without_input() {
        let body = br#"{"detail":[{"loc":["body","to_number"],"msg":"Field required","type":"missing","input":"+15551234567"},{"loc":["body",0],"msg":"bad"}]}"#;
        let detail = error_detail(body);
        assert_eq!(detail, "body.to_number: Field required; body.0: bad");
    }

    #[test]
    fn elevenlabs_status_detail_and_plain_bodies_are_summarized() {
        assert_eq!(
            error_detail(br#"{"detail":{"status":"quota_exceeded","message":"No credits"}}"#),
            "quota_exceeded: No credits"
        );
        assert_eq!(error_detail(br#"{"detail":"Not Found"}"#), "Not Found");
        assert_eq!(
            error_detail(b"<h1>Bad\n  Gateway</h1>\n"),
            "<h1>Bad Gateway</h1>"
        );
        assert_eq!(error_detail(b""), "(empty body)");
        assert_eq!(error_detail(br#"{"detail":{}}"#), r#"{"detail":{}}"#);
    }
}
