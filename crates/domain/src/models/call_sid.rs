use std::fmt;

use super::MAX_ID_LEN;

/// Our own identifier of a call, `EL_{driverId}_{timestamp}`. It is written before
/// ElevenLabs is asked to dial and travels back to us in every webhook.
///
/// Valid (SPEC): any non-empty string of at most 255 characters without control
/// characters. Spaces are allowed: the timestamp part is the dispatcher's string as given
/// (`EL_7_2024-11-21 10:00:00`). Control characters (NUL included) are refused because
/// PostgreSQL text cannot hold NUL and the others only ever come from broken input.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CallSid(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallSidError {
    #[error("call_sid must not be empty")]
    Empty,
    #[error("call_sid must be at most {MAX_ID_LEN} characters")]
    TooLong,
    #[error("call_sid must not contain control characters")]
    ControlCharacter,
}

impl CallSid {
    pub fn parse(value: impl Into<String>) -> Result<Self, CallSidError> {
        let value = value.into();
        if value.is_empty() {
            return Err(CallSidError::Empty);
        }
        // Characters, not bytes: varchar(255) counts characters.
        if value.chars().count() > MAX_ID_LEN {
            return Err(CallSidError::TooLong);
        }
        if value.chars().any(char::is_control) {
            return Err(CallSidError::ControlCharacter);
        }
        Ok(Self(value))
    }

    /// `EL_{driver_id}_{timestamp}`, the timestamp being the batch request's string as given.
    pub fn for_driver(driver_id: i64, timestamp: &str) -> Result<Self, CallSidError> {
        Self::parse(format!("EL_{driver_id}_{timestamp}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for CallSid {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CallSid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn for_driver_follows_the_el_format() {
        let sid = CallSid::for_driver(333, "2024-11-21T10:00:00Z").expect("valid");
        assert_eq!(sid.as_str(), "EL_333_2024-11-21T10:00:00Z");
    }

    #[test]
    fn empty_control_and_overlong_values_are_rejected() {
        assert_eq!(CallSid::parse(""), Err(CallSidError::Empty));
        assert_eq!(
            CallSid::parse("EL_\n1"),
            Err(CallSidError::ControlCharacter)
        );
        assert_eq!(
            CallSid::parse("EL_\u{0}1"),
            Err(CallSidError::ControlCharacter)
        );
        assert_eq!(CallSid::parse("EL\t1"), Err(CallSidError::ControlCharacter));
        assert_eq!(CallSid::parse("x".repeat(256)), Err(CallSidError::TooLong));
        assert!(CallSid::parse("x".repeat(255)).is_ok());
    }

    #[test]
    fn the_limit_counts_characters_not_bytes() {
        assert!(CallSid::parse("é".repeat(255)).is_ok());
        assert_eq!(CallSid::parse("é".repeat(256)), Err(CallSidError::TooLong));
    }

    #[test]
    fn a_timestamp_with_a_space_makes_a_call_sid() {
        let sid = CallSid::for_driver(7, "2024-11-21 10:00:00").expect("valid");
        assert_eq!(sid.as_str(), "EL_7_2024-11-21 10:00:00");
        assert!(CallSid::parse("EL 5 bad").is_ok());
    }

    proptest! {
        #[test]
        fn every_driver_and_printable_timestamp_round_trips(id in any::<i64>(), ts in "[ -~]{1,40}") {
            let sid = CallSid::for_driver(id, &ts).expect("valid");
            prop_assert_eq!(sid.as_str(), format!("EL_{id}_{ts}"));
            prop_assert_eq!(CallSid::parse(sid.as_str().to_owned()).expect("reparse"), sid);
        }

        #[test]
        fn parse_never_accepts_a_control_character(a in "[a-z ]{0,5}", b in "[a-z ]{0,5}", c in "[\\x00-\\x1f\\x7f]") {
            let candidate = format!("{a}{c}{b}");
            prop_assert_eq!(CallSid::parse(candidate), Err(CallSidError::ControlCharacter));
        }
    }
}
