//! The console's templates (`templates/console/`) and the view structs they render: every
//! value is prepared here as text, so templates only lay it out.

use askama::Template;
use calls_domain::{Call, CallStatus, CallTranscription, SpeakerType};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

/// What every page's frame needs.
pub struct Layout {
    /// The session's form token (for the logout form); `None` before login.
    pub form_token: Option<String>,
    pub section: &'static str,
    pub insecure_dev: bool,
}

impl Layout {
    pub fn anonymous(insecure_dev: bool) -> Self {
        Self {
            form_token: None,
            section: "",
            insecure_dev,
        }
    }

    pub fn logged_in(form_token: String, section: &'static str, insecure_dev: bool) -> Self {
        Self {
            form_token: Some(form_token),
            section,
            insecure_dev,
        }
    }
}

#[derive(Template)]
#[template(path = "console/error.html")]
pub struct ErrorPage<'a> {
    pub layout: Layout,
    pub title: &'a str,
    pub detail: &'a str,
}

#[derive(Template)]
#[template(path = "console/login.html")]
pub struct LoginPage {
    pub layout: Layout,
    pub message: Option<String>,
}

/// One filter of the call listing: its value as sent and its error, shown next to it.
pub struct FilterField {
    pub name: &'static str,
    pub label: &'static str,
    pub hint: &'static str,
    pub value: String,
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "console/calls.html")]
pub struct CallsPage {
    pub layout: Layout,
    pub fields: Vec<FilterField>,
    pub general_error: Option<String>,
    /// A filter was refused: nothing is listed.
    pub filter_invalid: bool,
    pub status_options: [(&'static str, &'static str); 4],
    pub calls: Vec<CallItem>,
    pub previous_href: Option<String>,
    pub next_href: Option<String>,
}

pub const STATUS_OPTIONS: [(&str, &str); 4] = [
    ("", "Any"),
    ("in_progress", "In progress"),
    ("completed", "Completed"),
    ("failed", "Failed"),
];

/// One row of the listing.
pub struct CallItem {
    pub call_sid: String,
    pub href: String,
    pub driver: String,
    pub status: &'static str,
    pub status_label: &'static str,
    pub outcome: String,
    pub started: String,
    pub started_iso: String,
    pub duration: String,
}

#[derive(Template)]
#[template(path = "console/call.html")]
pub struct CallPage {
    pub layout: Layout,
    pub call: CallDetail,
    pub turns: Vec<TurnItem>,
    pub live: bool,
    pub last_seq: i32,
    pub events_href: String,
}

/// The Call part of the call page, also sent alone to live pages when it changes.
#[derive(Template)]
#[template(path = "console/call_state.html")]
pub struct CallStateFragment<'a> {
    pub call: &'a CallDetail,
}

#[derive(Template)]
#[template(path = "console/turn.html")]
pub struct TurnFragment<'a> {
    pub turn: &'a TurnItem,
}

#[derive(Clone)]
pub struct BatchLink {
    pub id: String,
    pub href: String,
    pub attempt: u32,
}

impl BatchLink {
    pub fn new(batch_id: &calls_domain::models::BatchId, attempt: u32) -> Self {
        Self {
            id: batch_id.to_string(),
            href: format!("/console/batches/{batch_id}"),
            attempt,
        }
    }
}

pub struct CallDetail {
    pub call_sid: String,
    pub status: &'static str,
    pub status_label: &'static str,
    pub driver: String,
    pub conversation_id: String,
    pub started: String,
    pub started_iso: String,
    pub ended: String,
    pub failure_reason: Option<String>,
    pub outcome: Option<OutcomeDetail>,
    pub batch: Option<BatchLink>,
}

pub struct OutcomeDetail {
    pub result: &'static str,
    pub result_label: &'static str,
    pub summary: String,
    pub termination_reason: String,
    pub duration: String,
    /// Data collection: item name → value as text.
    pub data: Vec<(String, String)>,
}

pub struct TurnItem {
    pub seq: i32,
    pub speaker: &'static str,
    pub speaker_label: &'static str,
    pub at: String,
    pub at_iso: String,
    pub text: String,
}

const NONE: &str = "—";

pub fn status_label(status: CallStatus) -> &'static str {
    match status {
        CallStatus::InProgress => "In progress",
        CallStatus::Completed => "Completed",
        CallStatus::Failed => "Failed",
    }
}

/// `2024-11-21 10:00:05` (UTC; the column headers say so).
pub fn show_time(t: OffsetDateTime) -> String {
    let utc = t.to_offset(time::UtcOffset::UTC);
    utc.format(format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second]"
    ))
    .unwrap_or_else(|_| utc.to_string())
}

pub fn iso(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

fn show_duration(secs: i64) -> String {
    if secs < 60 {
        format!("{secs} s")
    } else {
        format!("{} min {} s", secs / 60, secs % 60)
    }
}

fn duration_of(call: &Call) -> String {
    if let Some(secs) = call.outcome.as_ref().and_then(|o| o.duration_secs) {
        return show_duration(secs);
    }
    match call.call_end_time {
        Some(end) if end >= call.call_start_time => {
            show_duration((end - call.call_start_time).whole_seconds())
        }
        _ => NONE.to_owned(),
    }
}

fn result_of(call_successful: Option<&str>) -> (&'static str, &'static str) {
    match call_successful {
        Some("success") => ("success", "Successful"),
        Some("failure") => ("failure", "Not successful"),
        _ => ("unknown", "Unknown"),
    }
}

/// A path segment: every byte but the unreserved ones percent-encoded (call_sids may hold
/// spaces and `#`).
pub fn path_segment(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn call_href(call_sid: &str) -> String {
    format!("/console/calls/{}", path_segment(call_sid))
}

fn driver_of(call: &Call) -> String {
    call.driver_id
        .map_or_else(|| NONE.to_owned(), |id| id.to_string())
}

impl CallItem {
    pub fn from_call(call: &Call) -> Self {
        let outcome = match (call.status, &call.outcome) {
            (CallStatus::Failed, _) => match &call.failure_reason {
                Some(reason) => format!("Failed: {reason}"),
                None => "Failed".to_owned(),
            },
            (_, Some(o)) => result_of(o.call_successful.as_deref()).1.to_owned(),
            (CallStatus::InProgress, None) => NONE.to_owned(),
            (CallStatus::Completed, None) => "No outcome".to_owned(),
        };
        Self {
            call_sid: call.call_sid.to_string(),
            href: call_href(call.call_sid.as_str()),
            driver: driver_of(call),
            status: call.status.as_str(),
            status_label: status_label(call.status),
            outcome,
            started: show_time(call.call_start_time),
            started_iso: iso(call.call_start_time),
            duration: duration_of(call),
        }
    }
}

/// A data-collection value as text: strings as they are, anything else as JSON.
fn value_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => NONE.to_owned(),
        other => other.to_string(),
    }
}

impl CallDetail {
    pub fn from_call(call: &Call) -> Self {
        let outcome = call.outcome.as_ref().map(|o| {
            let (result, result_label) = result_of(o.call_successful.as_deref());
            OutcomeDetail {
                result,
                result_label,
                summary: o.summary.clone().unwrap_or_else(|| NONE.to_owned()),
                termination_reason: o
                    .termination_reason
                    .clone()
                    .unwrap_or_else(|| NONE.to_owned()),
                duration: o
                    .duration_secs
                    .map_or_else(|| NONE.to_owned(), show_duration),
                data: o
                    .data_collection
                    .iter()
                    .map(|(name, value)| (name.clone(), value_text(value)))
                    .collect(),
            }
        });
        Self {
            call_sid: call.call_sid.to_string(),
            status: call.status.as_str(),
            status_label: status_label(call.status),
            driver: driver_of(call),
            conversation_id: call
                .conversation_id
                .as_ref()
                .map_or_else(|| NONE.to_owned(), |c| c.to_string()),
            started: show_time(call.call_start_time),
            started_iso: iso(call.call_start_time),
            ended: call
                .call_end_time
                .map_or_else(|| NONE.to_owned(), show_time),
            failure_reason: call.failure_reason.clone(),
            outcome,
            batch: None,
        }
    }
}

impl TurnItem {
    pub fn from_turn(turn: &CallTranscription) -> Self {
        let (speaker, speaker_label) = match turn.speaker_type {
            SpeakerType::Agent => ("agent", "Agent"),
            SpeakerType::Driver => ("driver", "Driver"),
        };
        Self {
            seq: turn.sequence_number,
            speaker,
            speaker_label,
            at: show_time(turn.timestamp),
            at_iso: iso(turn.timestamp),
            text: turn.message_text.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_encode_spaces_hashes_and_slashes() {
        assert_eq!(
            path_segment("EL_7_2024-11-21 10:00:00#2"),
            "EL_7_2024-11-21%2010%3A00%3A00%232"
        );
        assert_eq!(path_segment("a/b"), "a%2Fb");
    }

    #[test]
    fn durations_read_as_minutes_and_seconds() {
        assert_eq!(show_duration(42), "42 s");
        assert_eq!(show_duration(125), "2 min 5 s");
    }
}
