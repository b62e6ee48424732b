//! What ElevenLabs reports about a conversation, in the domain's terms. The post-call
//! webhook and the conversation API (`GET /v1/convai/conversations/{id}`) carry the same
//! `data`; the ElevenLabs adapter turns either into these types.

use time::OffsetDateTime;

use super::{CallOutcome, CallSid, ConversationId, SpeakerType};

/// One turn of ElevenLabs' own transcript of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTurn {
    pub speaker: SpeakerType,
    /// Empty when the provider's `message` was null (a tool call, say): such turns are
    /// skipped by the reconciliation.
    pub message: String,
    pub time_in_call_secs: i64,
}

/// A finished conversation: ElevenLabs' `post_call_transcription` data, or a `done`
/// answer of the conversation API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationReport {
    pub conversation_id: ConversationId,
    /// Our call_sid from the conversation's dynamic variables, when present.
    pub call_sid: Option<CallSid>,
    /// `metadata.start_time_unix_secs`, when present and plausible.
    pub start_time: Option<OffsetDateTime>,
    /// `metadata.call_duration_secs`, when present and not negative.
    pub duration_secs: Option<i64>,
    pub transcript: Vec<EventTurn>,
    pub outcome: super::CallOutcome,
}

impl ConversationReport {
    /// A report with nothing but its id (tests and partial answers).
    pub fn bare(conversation_id: ConversationId) -> Self {
        Self {
            conversation_id,
            call_sid: None,
            start_time: None,
            duration_secs: None,
            transcript: Vec::new(),
            outcome: CallOutcome::default(),
        }
    }
}

/// A finished one-turn conversation for unit tests: started 2024-11-21 10:00:00 UTC,
/// lasting `duration_secs`, judged a success.
#[cfg(test)]
pub(crate) fn sample_report(conversation_id: &str, duration_secs: i64) -> ConversationReport {
    ConversationReport {
        start_time: Some(time::macros::datetime!(2024-11-21 10:00:00 UTC)),
        duration_secs: Some(duration_secs),
        transcript: vec![EventTurn {
            speaker: SpeakerType::Agent,
            message: "Hi".into(),
            time_in_call_secs: 0,
        }],
        outcome: CallOutcome {
            call_successful: Some("success".into()),
            ..CallOutcome::default()
        },
        ..ConversationReport::bare(ConversationId::parse(conversation_id).expect("conv"))
    }
}
