use std::fmt;
use std::str::FromStr;

use time::format_description::well_known::{Iso8601, Rfc3339};
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

use super::{CallSid, CallSidError, ConversationId};

/// Who spoke, as ElevenLabs names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    Agent,
    User,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("speaker must be 'agent' or 'user', got {0:?}")]
pub struct UnknownSpeaker(pub String);

impl FromStr for Speaker {
    type Err = UnknownSpeaker;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "agent" => Ok(Self::Agent),
            "user" => Ok(Self::User),
            other => Err(UnknownSpeaker(other.to_owned())),
        }
    }
}

/// Who spoke, as we store it: the person on the phone is our driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpeakerType {
    Agent,
    Driver,
}

impl SpeakerType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Driver => "driver",
        }
    }
}

impl From<Speaker> for SpeakerType {
    fn from(speaker: Speaker) -> Self {
        match speaker {
            Speaker::Agent => Self::Agent,
            Speaker::User => Self::Driver,
        }
    }
}

impl FromStr for SpeakerType {
    type Err = UnknownSpeaker;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "agent" => Ok(Self::Agent),
            "driver" => Ok(Self::Driver),
            other => Err(UnknownSpeaker(other.to_owned())),
        }
    }
}

impl fmt::Display for SpeakerType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stored dialogue turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallTranscription {
    pub id: i64,
    pub conversation_id: ConversationId,
    pub speaker_type: SpeakerType,
    pub message_text: String,
    pub timestamp: OffsetDateTime,
    pub sequence_number: i32,
    pub created_at: OffsetDateTime,
}

/// A validated dialogue turn as ElevenLabs delivers it, addressed by our call_sid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTurn {
    pub call_sid: CallSid,
    pub speaker: SpeakerType,
    pub message: String,
    /// UTC, truncated to microseconds (PostgreSQL's precision) so that a repeated
    /// delivery compares equal to the stored turn.
    pub timestamp: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TurnParseError {
    #[error("invalid call_sid: {0}")]
    CallSid(#[from] CallSidError),
    #[error(transparent)]
    Speaker(#[from] UnknownSpeaker),
    #[error("message must not be empty")]
    EmptyMessage,
    /// PostgreSQL text cannot hold NUL; refusing it here keeps the answer a 400, not a 500.
    #[error("message must not contain NUL characters")]
    NulInMessage,
    #[error("timestamp must be a valid ISO8601 date-time, got {0:?}")]
    Timestamp(String),
}

impl NewTurn {
    /// Parses the four webhook fields.
    pub fn parse(
        call_sid: &str,
        speaker: &str,
        message: &str,
        timestamp: &str,
    ) -> Result<Self, TurnParseError> {
        let call_sid = CallSid::parse(call_sid)?;
        let speaker: Speaker = speaker.parse()?;
        if message.trim().is_empty() {
            return Err(TurnParseError::EmptyMessage);
        }
        if message.contains('\0') {
            return Err(TurnParseError::NulInMessage);
        }
        let timestamp = parse_timestamp(timestamp)
            .ok_or_else(|| TurnParseError::Timestamp(timestamp.into()))?;
        Ok(Self {
            call_sid,
            speaker: speaker.into(),
            message: message.to_owned(),
            timestamp,
        })
    }
}

/// ISO 8601 / RFC 3339 with `Z`, an offset or (like the legacy system) no offset, which
/// is taken as UTC. The result is in UTC with microsecond precision.
pub fn parse_timestamp(value: &str) -> Option<OffsetDateTime> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    // Python's fromisoformat (the legacy system) also accepts a space between date and time.
    let with_t;
    let value = if value.as_bytes().get(10) == Some(&b' ') {
        with_t = format!("{}T{}", &value[..10], &value[11..]);
        with_t.as_str()
    } else {
        value
    };
    let parsed = OffsetDateTime::parse(value, &Rfc3339)
        .or_else(|_| OffsetDateTime::parse(value, &Iso8601::DEFAULT))
        .or_else(|_| PrimitiveDateTime::parse(value, &Iso8601::DEFAULT).map(|t| t.assume_utc()))
        .ok()?;
    // Checked: the same instant in UTC can fall outside the supported years
    // (`9999-12-31T23:59:59-23:59`), and `to_offset` would panic on hostile input.
    let utc = parsed.checked_to_offset(UtcOffset::UTC)?;
    let micros = utc.nanosecond() / 1_000 * 1_000;
    utc.replace_nanosecond(micros).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    #[test]
    fn user_is_stored_as_driver_and_agent_as_agent() {
        assert_eq!(SpeakerType::from(Speaker::User), SpeakerType::Driver);
        assert_eq!(SpeakerType::from(Speaker::Agent), SpeakerType::Agent);
        assert!("driver".parse::<Speaker>().is_err());
        assert!("AGENT".parse::<Speaker>().is_err());
    }

    #[test]
    fn z_offsets_and_fractions_are_the_same_instant_in_utc() {
        let z = parse_timestamp("2024-11-21T10:30:00Z").expect("z");
        let offset = parse_timestamp("2024-11-21T12:30:00+02:00").expect("offset");
        let negative = parse_timestamp("2024-11-21T05:30:00-05:00").expect("negative");
        let naive = parse_timestamp("2024-11-21T10:30:00").expect("naive");
        let spaced = parse_timestamp("2024-11-21 10:30:00").expect("space separator");
        let basic = parse_timestamp("2024-11-21T10:30:00+0000").expect("basic offset");
        assert_eq!(spaced, datetime!(2024-11-21 10:30:00 UTC));
        assert_eq!(basic, datetime!(2024-11-21 10:30:00 UTC));
        assert_eq!(z, datetime!(2024-11-21 10:30:00 UTC));
        assert_eq!(offset, z);
        assert_eq!(negative, z);
        assert_eq!(naive, z);
        assert_eq!(offset.offset(), UtcOffset::UTC);
        let frac = parse_timestamp("2024-11-21T10:30:00.123456789Z").expect("fraction");
        assert_eq!(frac, datetime!(2024-11-21 10:30:00.123456 UTC));
    }

    #[test]
    fn garbage_timestamps_are_rejected() {
        for bad in [
            "9999-12-31T23:59:59-23:59",
            "+10000-01-01T00:00:00Z",
            "",
            "yesterday",
            "2024-13-01T00:00:00Z",
            "2024-11-21T25:00:00Z",
            "1700000000",
        ] {
            assert!(parse_timestamp(bad).is_none(), "{bad} should not parse");
        }
    }

    #[test]
    fn parse_reports_the_first_bad_field() {
        let ok = NewTurn::parse("EL_1_2", "user", "hi", "2024-11-21T10:30:00Z").expect("valid");
        assert_eq!(ok.speaker, SpeakerType::Driver);
        assert!(matches!(
            NewTurn::parse("", "user", "hi", "2024-11-21T10:30:00Z"),
            Err(TurnParseError::CallSid(_))
        ));
        assert!(matches!(
            NewTurn::parse("EL_1_2", "bot", "hi", "2024-11-21T10:30:00Z"),
            Err(TurnParseError::Speaker(_))
        ));
        assert_eq!(
            NewTurn::parse("EL_1_2", "agent", "   ", "2024-11-21T10:30:00Z"),
            Err(TurnParseError::EmptyMessage)
        );
        assert!(matches!(
            NewTurn::parse("EL_1_2", "agent", "hi", "noon"),
            Err(TurnParseError::Timestamp(_))
        ));
        assert_eq!(
            NewTurn::parse("EL_1_2", "agent", "a\u{0}b", "2024-11-21T10:30:00Z"),
            Err(TurnParseError::NulInMessage)
        );
        assert!(matches!(
            NewTurn::parse("EL_1\u{0}2", "agent", "hi", "2024-11-21T10:30:00Z"),
            Err(TurnParseError::CallSid(_))
        ));
        assert!(matches!(
            NewTurn::parse("EL_1_2", "agent", "hi", "2024-11-21T10:30:00Z\u{0}"),
            Err(TurnParseError::Timestamp(_))
        ));
    }

    proptest! {
        #[test]
        fn any_offset_maps_to_the_same_utc_instant(secs in 0i64..4_000_000_000, off_min in -720i32..=840) {
            let instant = OffsetDateTime::from_unix_timestamp(secs).expect("in range");
            let offset = UtcOffset::from_whole_seconds(off_min * 60).expect("offset");
            let text = instant.to_offset(offset).format(&Rfc3339).expect("format");
            prop_assert_eq!(parse_timestamp(&text), Some(instant));
        }
    }
}
