//! ElevenLabs' account of a conversation: the post-call webhook (`{type, event_timestamp,
//! data}`) and the conversation API's answer (`GET /v1/convai/conversations/{id}`, the shape
//! of the webhook's `data`). Both are read here, into the domain's types, and nowhere else.
//!
//! The provider's payloads are large and loosely typed, so reading is lenient: a field
//! that is missing, null or of an odd type (a bare value instead of `{value, rationale}`,
//! a number sent as a string) is read as far as it makes sense and otherwise left out.
//! What cannot be stored is refused: a NUL character in any string (PostgreSQL text cannot
//! hold it) and times out of any plausible range.

use std::collections::BTreeMap;

use calls_domain::service::PostCallEvent;
use calls_domain::{
    CallOutcome, CallSid, ConversationId, ConversationReport, EventTurn, SpeakerType,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use time::OffsetDateTime;

/// Why a payload cannot be used at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("body is not valid JSON: {0}")]
    Json(String),
    #[error("'{0}' is required")]
    Missing(&'static str),
    #[error("'{0}' must be an object")]
    NotAnObject(&'static str),
    #[error("strings must not contain NUL characters")]
    NulCharacter,
    #[error("'{field}' is out of range: {value}")]
    OutOfRange { field: &'static str, value: i64 },
}

/// A post-call webhook, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostCallWebhook {
    /// `post_call_transcription` or `call_initiation_failure`.
    Event(PostCallEvent),
    /// Another type (`post_call_audio`, …): acknowledged, not used.
    Ignored { event_type: String },
}

/// The conversation API's answer, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationAnswer {
    /// `initiated`, `in-progress`, `processing`, `done`, `failed` (lower case), if given.
    pub status: Option<String>,
    pub report: ConversationReport,
    /// Why a failed conversation failed, when the answer says.
    pub failure_reason: Option<String>,
}

/// Earliest and latest plausible start of a call (2000-01-01, 2100-01-01).
const START_RANGE: std::ops::Range<i64> = 946_684_800..4_102_444_800;
/// No phone call lasts a day.
const MAX_SECS_IN_CALL: i64 = 86_400;

/// A value that is `Some` only when the JSON had the expected type.
#[derive(Debug)]
struct Lenient<T>(Option<T>);

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        Ok(Self(serde_json::from_value(value).ok()))
    }
}

/// An integer that may arrive as a number (integral or not) or a numeric string.
#[derive(Debug, Default, Clone, Copy)]
struct LenientInt(Option<i64>);

impl<'de> Deserialize<'de> for LenientInt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = match Value::deserialize(d)? {
            Value::Number(n) => n
                .as_i64()
                .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64)),
            Value::String(s) => s
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(|f| f as i64),
            _ => None,
        };
        Ok(Self(n))
    }
}

/// ElevenLabs' post-call webhook body (`post_call_transcription`, `call_initiation_failure`;
/// other types are acknowledged and ignored). `data` has the shape of the conversation
/// API's answer; only the fields docs/api.md lists are read.
#[derive(Debug, Deserialize)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(as = PostCallEvent, example = json!({"type": "post_call_transcription", "event_timestamp": 1732183300, "data": {"agent_id": "agent_x", "conversation_id": "conv_abc123", "status": "done", "transcript": [{"role": "agent", "message": "Hi, this is AGY Dispatcher.", "time_in_call_secs": 0}], "metadata": {"start_time_unix_secs": 1732183200, "call_duration_secs": 95}, "analysis": {"call_successful": "success", "transcript_summary": "…", "data_collection_results": {"violation_acknowledged": {"value": true, "rationale": "…"}}}, "conversation_initiation_client_data": {"dynamic_variables": {"call_sid": "EL_333_2024-11-21T10:00:00Z"}}}}))
)]
pub struct PostCallEnvelope {
    #[serde(rename = "type", default)]
    #[cfg_attr(feature = "openapi", schema(value_type = String, required = true))]
    kind: Lenient<String>,
    /// Unix seconds (a number or a numeric string); not used.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<i64>))]
    #[allow(dead_code)]
    event_timestamp: LenientInt,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    data: Option<Value>,
}

/// `data` of a post-call event = the conversation API's answer.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ConversationData {
    conversation_id: Lenient<String>,
    status: Lenient<String>,
    transcript: Lenient<Vec<Lenient<TranscriptTurn>>>,
    metadata: Lenient<Metadata>,
    analysis: Lenient<Analysis>,
    conversation_initiation_client_data: Lenient<ClientData>,
    failure_reason: Lenient<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TranscriptTurn {
    role: Lenient<String>,
    message: Lenient<String>,
    time_in_call_secs: LenientInt,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Metadata {
    start_time_unix_secs: LenientInt,
    call_duration_secs: LenientInt,
    termination_reason: Lenient<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Analysis {
    call_successful: Lenient<String>,
    transcript_summary: Lenient<String>,
    data_collection_results: Lenient<BTreeMap<String, Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ClientData {
    dynamic_variables: Lenient<BTreeMap<String, Value>>,
}

fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

/// Reads a whole body as JSON, refusing NUL characters anywhere in it.
fn json(body: &[u8]) -> Result<Value, PayloadError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| PayloadError::Json(e.to_string()))?;
    if contains_nul(&value) {
        return Err(PayloadError::NulCharacter);
    }
    Ok(value)
}

/// `{value, rationale, …}` → value; a bare value is kept as it is.
fn unwrap_result(entry: Value) -> Value {
    match entry {
        Value::Object(mut map) if map.contains_key("value") => {
            map.remove("value").unwrap_or(Value::Null)
        }
        other => other,
    }
}

/// Problems that make the times unusable; `strict` refuses them, otherwise the field is
/// dropped.
struct Reader {
    strict: bool,
}

impl Reader {
    fn range(
        &self,
        field: &'static str,
        value: Option<i64>,
        ok: impl Fn(i64) -> bool,
    ) -> Result<Option<i64>, PayloadError> {
        match value {
            Some(v) if !ok(v) => {
                if self.strict {
                    Err(PayloadError::OutOfRange { field, value: v })
                } else {
                    Ok(None)
                }
            }
            other => Ok(other),
        }
    }

    fn report(
        &self,
        data: &ConversationData,
        conversation_id: ConversationId,
    ) -> Result<ConversationReport, PayloadError> {
        let metadata = data.metadata.0.as_ref();
        let start = self.range(
            "data.metadata.start_time_unix_secs",
            metadata.and_then(|m| m.start_time_unix_secs.0),
            |s| START_RANGE.contains(&s),
        )?;
        let duration = self.range(
            "data.metadata.call_duration_secs",
            metadata.and_then(|m| m.call_duration_secs.0),
            |d| (0..=MAX_SECS_IN_CALL).contains(&d),
        )?;
        let mut transcript = Vec::new();
        for turn in data.transcript.0.iter().flatten() {
            let Some(turn) = &turn.0 else { continue };
            let speaker = match turn.role.0.as_deref() {
                Some("agent") => SpeakerType::Agent,
                Some("user") => SpeakerType::Driver,
                _ => continue,
            };
            let secs = self.range(
                "data.transcript[].time_in_call_secs",
                turn.time_in_call_secs.0,
                |s| (0..=MAX_SECS_IN_CALL).contains(&s),
            )?;
            transcript.push(EventTurn {
                speaker,
                message: turn.message.0.clone().unwrap_or_default(),
                time_in_call_secs: secs.unwrap_or(0),
            });
        }
        let analysis = data.analysis.0.as_ref();
        let outcome = CallOutcome {
            call_successful: analysis
                .and_then(|a| a.call_successful.0.clone())
                .filter(|s| matches!(s.as_str(), "success" | "failure" | "unknown")),
            summary: analysis
                .and_then(|a| a.transcript_summary.0.clone())
                .filter(|s| !s.trim().is_empty()),
            data_collection: analysis
                .and_then(|a| a.data_collection_results.0.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|(name, entry)| (name, unwrap_result(entry)))
                .collect(),
            termination_reason: metadata
                .and_then(|m| m.termination_reason.0.clone())
                .filter(|s| !s.trim().is_empty()),
            duration_secs: duration,
        };
        Ok(ConversationReport {
            conversation_id,
            call_sid: call_sid_of(data),
            start_time: start.and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok()),
            duration_secs: duration,
            transcript,
            outcome,
        })
    }
}

fn call_sid_of(data: &ConversationData) -> Option<CallSid> {
    let vars = data.conversation_initiation_client_data.0.as_ref()?;
    let sid = vars
        .dynamic_variables
        .0
        .as_ref()?
        .get("call_sid")?
        .as_str()?;
    CallSid::parse(sid).ok()
}

fn conversation_id_of(data: &ConversationData) -> Option<ConversationId> {
    data.conversation_id
        .0
        .as_deref()
        .and_then(|c| ConversationId::parse(c).ok())
}

/// Reads ElevenLabs' post-call webhook body. Times out of range are refused here (the
/// event would otherwise be applied with a nonsense end time).
///
/// # Errors
/// Malformed JSON, a missing `type`/`data`/`data.conversation_id` (for a transcription
/// event), a NUL character, or a time out of range.
pub fn parse_post_call(body: &[u8]) -> Result<PostCallWebhook, PayloadError> {
    let envelope: PostCallEnvelope =
        serde_json::from_value(json(body)?).map_err(|e| PayloadError::Json(e.to_string()))?;
    let kind = envelope.kind.0.ok_or(PayloadError::Missing("type"))?;
    let data_value = match envelope.data {
        Some(v @ Value::Object(_)) => v,
        Some(_) => return Err(PayloadError::NotAnObject("data")),
        None => return Err(PayloadError::Missing("data")),
    };
    let reader = Reader { strict: true };
    let event = match kind.as_str() {
        "post_call_transcription" => {
            let data: ConversationData = serde_json::from_value(data_value)
                .map_err(|e| PayloadError::Json(e.to_string()))?;
            let conversation_id =
                conversation_id_of(&data).ok_or(PayloadError::Missing("data.conversation_id"))?;
            PostCallEvent::Transcription(reader.report(&data, conversation_id)?)
        }
        "call_initiation_failure" => {
            let data: ConversationData = serde_json::from_value(data_value)
                .map_err(|e| PayloadError::Json(e.to_string()))?;
            PostCallEvent::InitiationFailure {
                conversation_id: conversation_id_of(&data),
                call_sid: call_sid_of(&data),
                failure_reason: data
                    .failure_reason
                    .0
                    .filter(|r| !r.trim().is_empty())
                    .unwrap_or_else(|| "unknown".to_owned()),
            }
        }
        _ => return Ok(PostCallWebhook::Ignored { event_type: kind }),
    };
    Ok(PostCallWebhook::Event(event))
}

/// Reads the conversation API's answer about `asked` (the id we asked for stands in when
/// the answer omits it). Lenient: an implausible time is dropped, not refused.
///
/// # Errors
/// Malformed JSON, an answer that is not an object, or a NUL character.
pub fn parse_conversation(
    body: &[u8],
    asked: &ConversationId,
) -> Result<ConversationAnswer, PayloadError> {
    let value = json(body)?;
    if !value.is_object() {
        return Err(PayloadError::NotAnObject("answer"));
    }
    let data: ConversationData =
        serde_json::from_value(value).map_err(|e| PayloadError::Json(e.to_string()))?;
    let conversation_id = conversation_id_of(&data).unwrap_or_else(|| asked.clone());
    let report = Reader { strict: false }.report(&data, conversation_id)?;
    Ok(ConversationAnswer {
        status: data.status.0.map(|s| s.to_ascii_lowercase()),
        failure_reason: data.failure_reason.0.filter(|r| !r.trim().is_empty()),
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(kind: &str, data: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"type": kind, "event_timestamp": 1_732_183_300, "data": data}))
            .expect("json")
    }

    fn transcription(body: &[u8]) -> ConversationReport {
        match parse_post_call(body).expect("parses") {
            PostCallWebhook::Event(PostCallEvent::Transcription(r)) => r,
            other => panic!("not a transcription: {other:?}"),
        }
    }

    #[test]
    fn a_full_transcription_event_is_read_into_report_and_outcome() {
        let body = event(
            "post_call_transcription",
            json!({
                "agent_id": "agent_1",
                "conversation_id": "conv_1",
                "status": "done",
                "transcript": [
                    {"role": "agent", "message": "Hi", "time_in_call_secs": 0},
                    {"role": "user", "message": null, "time_in_call_secs": 2, "tool_calls": []},
                    {"role": "user", "message": "Yes", "time_in_call_secs": 3.7}
                ],
                "metadata": {"start_time_unix_secs": 1_732_183_200, "call_duration_secs": 95,
                             "termination_reason": "end_call tool was called."},
                "analysis": {
                    "call_successful": "success",
                    "transcript_summary": "Driver acknowledged.",
                    "data_collection_results": {
                        "acknowledged": {"data_collection_id": "acknowledged", "value": true, "rationale": "said yes"},
                        "fix_eta": "noon"
                    }
                },
                "conversation_initiation_client_data": {"dynamic_variables": {"call_sid": "EL_7_1732183200"}}
            }),
        );
        let r = transcription(&body);
        assert_eq!(r.conversation_id.as_str(), "conv_1");
        assert_eq!(
            r.call_sid.as_ref().map(CallSid::as_str),
            Some("EL_7_1732183200")
        );
        assert_eq!(
            r.start_time.map(|t| t.unix_timestamp()),
            Some(1_732_183_200)
        );
        assert_eq!(r.duration_secs, Some(95));
        assert_eq!(r.transcript.len(), 3);
        assert_eq!(r.transcript[1].message, "", "null message read as empty");
        assert_eq!(r.transcript[2].time_in_call_secs, 3);
        assert_eq!(r.transcript[2].speaker, SpeakerType::Driver);
        assert_eq!(r.outcome.call_successful.as_deref(), Some("success"));
        assert_eq!(r.outcome.summary.as_deref(), Some("Driver acknowledged."));
        assert_eq!(r.outcome.data_collection["acknowledged"], json!(true));
        assert_eq!(r.outcome.data_collection["fix_eta"], json!("noon"));
        assert_eq!(
            r.outcome.termination_reason.as_deref(),
            Some("end_call tool was called.")
        );
        assert_eq!(r.outcome.duration_secs, Some(95));
    }

    #[test]
    fn oddly_typed_fields_are_read_as_far_as_they_make_sense() {
        let body = serde_json::to_vec(&json!({
            "type": "post_call_transcription",
            "event_timestamp": "1732183300",
            "data": {
                "conversation_id": "conv_1",
                "transcript": [{"role": "agent", "message": 5}, "garbage", {"role": "robot", "message": "x"}],
                "metadata": {"start_time_unix_secs": "1732183200", "call_duration_secs": null},
                "analysis": {"call_successful": "maybe", "data_collection_results": ["not", "a", "map"]},
                "conversation_initiation_client_data": {"dynamic_variables": {"call_sid": 42}}
            }
        }))
        .expect("json");
        let r = transcription(&body);
        assert_eq!(
            r.start_time.map(|t| t.unix_timestamp()),
            Some(1_732_183_200)
        );
        assert_eq!(r.duration_secs, None);
        assert_eq!(r.call_sid, None);
        assert_eq!(r.transcript.len(), 1, "the agent turn, with no text");
        assert_eq!(r.transcript[0].message, "");
        assert_eq!(r.outcome, CallOutcome::default());
    }

    #[test]
    fn nul_characters_anywhere_are_refused() {
        let body = event(
            "post_call_transcription",
            json!({"conversation_id": "conv_1", "transcript": [{"role": "agent", "message": "a\u{0}b"}]}),
        );
        assert_eq!(parse_post_call(&body), Err(PayloadError::NulCharacter));
        assert_eq!(
            parse_conversation(
                br#"{"status":"done","analysis":{"transcript_summary":"x\u0000"}}"#,
                &ConversationId::parse("c").expect("c")
            ),
            Err(PayloadError::NulCharacter)
        );
    }

    #[test]
    fn implausible_times_are_refused_in_events_and_dropped_in_answers() {
        for (field, value) in [
            ("start_time_unix_secs", -300_000_000_000_i64),
            ("start_time_unix_secs", -210_000_000_000),
            ("call_duration_secs", -5),
            ("call_duration_secs", 10_000_000),
        ] {
            let data = json!({"conversation_id": "conv_1", "metadata": {field: value}});
            let err = parse_post_call(&event("post_call_transcription", data.clone()));
            assert!(
                matches!(err, Err(PayloadError::OutOfRange { .. })),
                "{field}={value}"
            );
            let answer = parse_conversation(
                &serde_json::to_vec(&data).expect("json"),
                &ConversationId::parse("conv_1").expect("c"),
            )
            .expect("lenient");
            assert_eq!(answer.report.start_time, None);
            assert_eq!(answer.report.duration_secs, None);
        }
    }

    #[test]
    fn structural_problems_are_refused() {
        assert!(matches!(parse_post_call(b"{"), Err(PayloadError::Json(_))));
        assert_eq!(
            parse_post_call(br#"{"data":{}}"#),
            Err(PayloadError::Missing("type"))
        );
        assert_eq!(
            parse_post_call(br#"{"type":"post_call_transcription","data":[]}"#),
            Err(PayloadError::NotAnObject("data"))
        );
        assert_eq!(
            parse_post_call(br#"{"type":"post_call_transcription","data":{}}"#),
            Err(PayloadError::Missing("data.conversation_id"))
        );
    }

    #[test]
    fn an_initiation_failure_keeps_its_reason() {
        let body = event(
            "call_initiation_failure",
            json!({"agent_id": "a", "conversation_id": "conv_9", "failure_reason": "no-answer",
                   "metadata": {"type": "twilio", "body": {}},
                   "conversation_initiation_client_data": {"dynamic_variables": {"call_sid": "EL_9_1"}}}),
        );
        let PostCallWebhook::Event(PostCallEvent::InitiationFailure {
            conversation_id,
            call_sid,
            failure_reason,
        }) = parse_post_call(&body).expect("parses")
        else {
            panic!("not a failure");
        };
        assert_eq!(
            conversation_id.map(|c| c.to_string()).as_deref(),
            Some("conv_9")
        );
        assert_eq!(call_sid.map(|c| c.to_string()).as_deref(), Some("EL_9_1"));
        assert_eq!(failure_reason, "no-answer");

        let bare = event("call_initiation_failure", json!({"failure_reason": null}));
        assert!(matches!(
            parse_post_call(&bare),
            Ok(PostCallWebhook::Event(PostCallEvent::InitiationFailure { failure_reason, .. })) if failure_reason == "unknown"
        ));
    }

    #[test]
    fn other_event_types_are_ignored() {
        assert_eq!(
            parse_post_call(br#"{"type":"post_call_audio","data":{"full_audio":"..."}}"#),
            Ok(PostCallWebhook::Ignored {
                event_type: "post_call_audio".into()
            })
        );
    }

    #[test]
    fn a_conversation_answer_carries_its_status() {
        let asked = ConversationId::parse("conv_5").expect("c");
        let answer = parse_conversation(
            br#"{"status":"DONE","transcript":[{"role":"user","message":"ok","time_in_call_secs":1}]}"#,
            &asked,
        )
        .expect("parses");
        assert_eq!(answer.status.as_deref(), Some("done"));
        assert_eq!(answer.report.conversation_id, asked);
        assert_eq!(answer.report.transcript.len(), 1);
        assert!(matches!(
            parse_conversation(b"[1]", &asked),
            Err(PayloadError::NotAnObject(_))
        ));
        assert!(matches!(
            parse_conversation(b"<html>", &asked),
            Err(PayloadError::Json(_))
        ));
    }
}
