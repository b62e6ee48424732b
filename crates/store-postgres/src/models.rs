//! Row types, private to the adapter; converted into domain entities at the boundary.

use calls_domain::{Call, CallSid, CallTranscription, ConversationId};
use diesel::prelude::*;
use time::OffsetDateTime;

use crate::schema::{call_transcriptions, calls};

#[derive(Debug, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = calls, check_for_backend(diesel::pg::Pg))]
pub(crate) struct CallRow {
    pub id: i64,
    pub call_sid: String,
    pub conversation_id: Option<String>,
    pub driver_id: Option<i64>,
    pub call_start_time: OffsetDateTime,
    pub call_end_time: Option<OffsetDateTime>,
    pub status: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub failure_reason: Option<String>,
    pub outcome: Option<serde_json::Value>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = calls)]
pub(crate) struct NewCallRow<'a> {
    pub call_sid: &'a str,
    pub driver_id: Option<i64>,
    pub call_start_time: OffsetDateTime,
    pub status: &'a str,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = call_transcriptions, check_for_backend(diesel::pg::Pg))]
pub(crate) struct TranscriptionRow {
    pub id: i64,
    pub conversation_id: String,
    pub speaker_type: String,
    pub message_text: String,
    pub timestamp: OffsetDateTime,
    pub sequence_number: i32,
    pub created_at: OffsetDateTime,
}

/// A row that violates the domain's invariants (e.g. written by hand) is a data error.
#[derive(Debug, thiserror::Error)]
#[error("invalid row in {table}: {reason}")]
pub(crate) struct InvalidRow {
    pub table: &'static str,
    pub reason: String,
}

impl TryFrom<CallRow> for Call {
    type Error = InvalidRow;

    fn try_from(row: CallRow) -> Result<Self, Self::Error> {
        let invalid = |reason: String| InvalidRow {
            table: "calls",
            reason,
        };
        Ok(Call {
            id: row.id,
            call_sid: CallSid::parse(row.call_sid).map_err(|e| invalid(e.to_string()))?,
            conversation_id: row
                .conversation_id
                .map(ConversationId::parse)
                .transpose()
                .map_err(|e| invalid(e.to_string()))?,
            driver_id: row.driver_id,
            call_start_time: row.call_start_time,
            call_end_time: row.call_end_time,
            status: row
                .status
                .parse()
                .map_err(|e: calls_domain::models::UnknownCallStatus| invalid(e.to_string()))?,
            failure_reason: row.failure_reason,
            outcome: row
                .outcome
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| invalid(format!("outcome: {e}")))?,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

impl TryFrom<TranscriptionRow> for CallTranscription {
    type Error = InvalidRow;

    fn try_from(row: TranscriptionRow) -> Result<Self, Self::Error> {
        let invalid = |reason: String| InvalidRow {
            table: "call_transcriptions",
            reason,
        };
        Ok(CallTranscription {
            id: row.id,
            conversation_id: ConversationId::parse(row.conversation_id)
                .map_err(|e| invalid(e.to_string()))?,
            speaker_type: row
                .speaker_type
                .parse()
                .map_err(|e: calls_domain::models::UnknownSpeaker| invalid(e.to_string()))?,
            message_text: row.message_text,
            timestamp: row.timestamp,
            sequence_number: row.sequence_number,
            created_at: row.created_at,
        })
    }
}
