use std::fmt;

/// A phone number normalized to E.164 (`+15551234567`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct PhoneNumber(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("phone number {masked} cannot be normalized to E.164")]
pub struct InvalidPhoneNumber {
    /// Masked: phone numbers are not written to logs or error bodies in full.
    pub masked: String,
}

impl PhoneNumber {
    /// Parses with libphonenumber's metadata; numbers without a `+` are read as US
    /// numbers (the dispatcher's home region). Numbers the library deems possible pass.
    pub fn parse(raw: &str) -> Result<Self, InvalidPhoneNumber> {
        let invalid = || InvalidPhoneNumber { masked: mask(raw) };
        let trimmed = raw.trim();
        // The library tolerates stray letters (vanity numbers) and repeated '+'; a driver's
        // number has digits, separators and at most one leading '+'.
        let body = trimmed.strip_prefix('+').unwrap_or(trimmed);
        if body.is_empty()
            || !body
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '(' | ')' | '-' | '.'))
        {
            return Err(invalid());
        }
        let parsed = phonenumber::parse(Some(phonenumber::country::Id::US), trimmed)
            .map_err(|_| invalid())?;
        if !phonenumber::is_viable(trimmed) || !possible(&parsed) {
            return Err(invalid());
        }
        Ok(Self(
            parsed.format().mode(phonenumber::Mode::E164).to_string(),
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `+1555***4567`: enough to tell numbers apart in logs, not enough to dial.
    pub fn masked(&self) -> String {
        mask(&self.0)
    }
}

/// libphonenumber's "possible" test: the national number has one of the lengths that
/// numbers of its country can have (E.164 caps the whole at 15 digits).
fn possible(number: &phonenumber::PhoneNumber) -> bool {
    let national = number.national().value().to_string();
    let length = u16::try_from(national.len()).unwrap_or(u16::MAX);
    // By country code, not by region: a number in an unassigned area code (the seed's
    // +1 555…) has no region but is still possible.
    let code = number.code().value();
    phonenumber::metadata::DATABASE
        .by_code(&code)
        .unwrap_or_default()
        .iter()
        .any(|meta| {
            let d = meta.descriptors();
            // The crate's metadata keeps the lengths on each number type, not on `general`.
            [
                Some(d.general()),
                d.fixed_line(),
                d.mobile(),
                d.toll_free(),
                d.premium_rate(),
                d.shared_cost(),
                d.personal_number(),
                d.voip(),
                d.pager(),
                d.uan(),
                d.voicemail(),
            ]
            .into_iter()
            .flatten()
            .any(|desc| {
                desc.possible_length().contains(&length)
                    || desc.possible_local_length().contains(&length)
            })
        })
}

/// Keeps the first five and the last four characters of longer numbers.
pub fn mask(raw: &str) -> String {
    let chars: Vec<char> = raw.chars().collect();
    if chars.len() <= 6 {
        return "*".repeat(chars.len());
    }
    let (keep_head, keep_tail) = if chars.len() >= 10 {
        (5, 4)
    } else {
        (chars.len() / 3, chars.len() / 3)
    };
    let head: String = chars.iter().take(keep_head).collect();
    let tail: String = chars.iter().skip(chars.len() - keep_tail).collect();
    format!("{head}***{tail}")
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_number_and_common_formats_normalize_to_e164() {
        for (raw, e164) in [
            ("+15551234567", "+15551234567"),
            ("(555) 123-4567", "+15551234567"),
            ("555.123.4567", "+15551234567"),
            ("+1 212 555 0100", "+12125550100"),
            ("+44 20 7946 0958", "+442079460958"),
            ("+49 30 901820", "+4930901820"),
        ] {
            assert_eq!(
                PhoneNumber::parse(raw).map(|p| p.0),
                Ok(e164.to_owned()),
                "{raw}"
            );
        }
    }

    #[test]
    fn letters_too_short_and_too_long_are_rejected() {
        for raw in [
            "",
            "abc",
            "+1555CALLNOW",
            "555-CALL",
            "123",
            "+1 23",
            "+1555123456789012",
            "++15551234567",
        ] {
            assert!(PhoneNumber::parse(raw).is_err(), "{raw} should be rejected");
        }
    }

    #[test]
    fn masking_hides_the_middle() {
        assert_eq!(mask("+15551234567"), "+1555***4567");
        assert_eq!(mask("12345"), "*****");
        let err = PhoneNumber::parse("+1555CALLNOW").expect_err("invalid");
        assert!(!err.to_string().contains("CALLNOW"));
    }
}
