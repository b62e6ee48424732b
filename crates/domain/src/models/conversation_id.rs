use std::fmt;

use super::MAX_ID_LEN;

/// ElevenLabs' identifier of a conversation; the link between a Call and its turns.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConversationId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversationIdError {
    #[error("conversation_id must not be empty")]
    Empty,
    #[error("conversation_id must be at most {MAX_ID_LEN} characters")]
    TooLong,
    #[error("conversation_id must not contain whitespace or control characters")]
    InvalidCharacter,
}

impl ConversationId {
    pub fn parse(value: impl Into<String>) -> Result<Self, ConversationIdError> {
        let value = value.into();
        if value.is_empty() {
            return Err(ConversationIdError::Empty);
        }
        if value.len() > MAX_ID_LEN {
            return Err(ConversationIdError::TooLong);
        }
        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ConversationIdError::InvalidCharacter);
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ConversationId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_empty_long_and_spaced_values() {
        assert_eq!(ConversationId::parse(""), Err(ConversationIdError::Empty));
        assert_eq!(
            ConversationId::parse("a b"),
            Err(ConversationIdError::InvalidCharacter)
        );
        assert_eq!(
            ConversationId::parse("c".repeat(300)),
            Err(ConversationIdError::TooLong)
        );
    }

    proptest! {
        #[test]
        fn elevenlabs_like_ids_parse(id in "conv_[0-9a-z]{1,40}") {
            let parsed = ConversationId::parse(id.clone()).expect("valid");
            prop_assert_eq!(parsed.as_str(), id.as_str());
        }
    }
}
