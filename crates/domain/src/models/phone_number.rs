use std::fmt;

/// A phone number normalized to E.164 (`+15551234567`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PhoneNumber(String);

/// The input is not repeated: phone numbers are not written to logs or error bodies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("phone number cannot be normalized to E.164")]
pub struct InvalidPhoneNumber;

/// The longest input [`PhoneNumber::parse`] looks at.
const MAX_RAW_LEN: usize = 40;

impl PhoneNumber {
    /// Parses with libphonenumber's metadata; numbers without a `+` are read as US
    /// numbers (the dispatcher's home region). Numbers the library deems possible pass.
    pub fn parse(raw: &str) -> Result<Self, InvalidPhoneNumber> {
        let invalid = || InvalidPhoneNumber;
        let trimmed = raw.trim();
        // E.164 has at most 15 digits; with a `+`, a trunk prefix and separators a real
        // number stays well under this. Longer input would only cost the parser time.
        if trimmed.chars().count() > MAX_RAW_LEN {
            return Err(invalid());
        }
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

    /// `+*******4567`: enough to tell numbers apart in logs, not enough to dial.
    pub fn masked(&self) -> String {
        mask_phone_numbers(&self.0)
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

/// Masks every phone number found in `text`, in any common form: E.164 with or without
/// `+` (`+15551234567`, `15551234567`), national (`(555) 123-4567`), digits with separators
/// (`555-123-4567`, `555.123.4567`, `+44 20 7946 0958`). Each digit but the last four
/// becomes `*`; separators and everything else stay, so `call +1 (555) 123-4567 now`
/// reads `call +* (***) ***-4567 now`.
///
/// The one masking rule for logs, stored failure reasons and response texts. A number is a
/// run of 7 to 15 digits (E.164's maximum) with single separators (space, `-`, `.`, `(`,
/// `)`) between them, not glued to a letter, digit or `_` (so ids such as
/// `EL_333_1700000000` stay readable). ISO dates (`2024-11-21`) and dotted IPv4 addresses
/// are left alone; any other long digit run is masked (a unix timestamp is
/// indistinguishable from a national number, and masking it is the safe mistake).
pub fn mask_phone_numbers(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let glued = i > 0 && is_word(chars[i - 1]);
        match (!glued).then(|| number_run(&chars, i)).flatten() {
            Some(end) => {
                let run = &chars[i..end];
                if looks_like_phone(run) {
                    let digits = run.iter().filter(|c| c.is_ascii_digit()).count();
                    let mut seen = 0;
                    for &c in run {
                        if c.is_ascii_digit() {
                            seen += 1;
                            out.push(if seen + 4 > digits { c } else { '*' });
                        } else {
                            out.push(c);
                        }
                    }
                } else {
                    out.extend(run);
                }
                i = end;
            }
            None => {
                out.push(chars[i]);
                i += 1;
            }
        }
    }
    out
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn is_separator(c: char) -> bool {
    matches!(c, ' ' | '-' | '.' | '(' | ')')
}

/// The end of the longest run at `start` that could be a number: an optional `+`, then
/// digits, `(` and separators, ending with a digit that no letter, digit or `_` follows.
fn number_run(chars: &[char], start: usize) -> Option<usize> {
    let mut i = start;
    if chars.get(i) == Some(&'+') {
        i += 1;
    }
    if !chars
        .get(i)
        .is_some_and(|c| c.is_ascii_digit() || *c == '(')
    {
        return None;
    }
    let mut last_digit_end = None;
    let mut separators_in_a_row = 0;
    while let Some(&c) = chars.get(i) {
        if c.is_ascii_digit() {
            separators_in_a_row = 0;
            last_digit_end = Some(i + 1);
        } else if is_separator(c) && separators_in_a_row < 2 {
            // `) ` and ` (` are two separators in a row; more ends the run.
            separators_in_a_row += 1;
        } else {
            break;
        }
        i += 1;
    }
    let end = last_digit_end?;
    if chars.get(end).is_some_and(|c| is_word(*c)) {
        return None;
    }
    Some(end)
}

fn looks_like_phone(run: &[char]) -> bool {
    let text: String = run.iter().collect();
    let groups: Vec<&str> = text
        .split(|c: char| !c.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .collect();
    let digits: usize = groups.iter().map(|g| g.len()).sum();
    if !(7..=15).contains(&digits) {
        return false;
    }
    let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    let iso_date = lengths.len() >= 3
        && lengths[..3] == [4, 2, 2]
        && !text.starts_with('+')
        && text.chars().nth(4) == Some('-');
    let ipv4 = lengths.len() == 4
        && lengths.iter().all(|&n| n <= 3)
        && text.chars().all(|c| c.is_ascii_digit() || c == '.');
    // `1 2 3 4 5 6 7` is a list, not a number: only a leading country code may be one digit.
    let list = lengths.iter().skip(1).any(|&n| n == 1);
    !(iso_date || ipv4 || list)
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
            &"5".repeat(41),
            &"5".repeat(100_000),
        ] {
            assert!(PhoneNumber::parse(raw).is_err(), "{raw} should be rejected");
        }
    }

    #[test]
    fn masking_keeps_the_last_four_digits_of_every_form() {
        for (text, masked) in [
            ("+15551234567", "+*******4567"),
            ("15551234567", "*******4567"),
            ("5551234567", "******4567"),
            ("(555) 123-4567", "(***) ***-4567"),
            ("555-123-4567", "***-***-4567"),
            ("555.123.4567", "***.***.4567"),
            ("+1 (555) 123-4567", "+* (***) ***-4567"),
            ("+44 20 7946 0958", "+** ** **** 0958"),
            (
                "Invalid to_number 15551234567 (was +1 555 123 4567).",
                "Invalid to_number *******4567 (was +* *** *** 4567).",
            ),
        ] {
            assert_eq!(mask_phone_numbers(text), masked, "{text}");
        }
        let number = PhoneNumber::parse("+15551234567").expect("valid");
        assert_eq!(number.masked(), "+*******4567");
    }

    #[test]
    fn ids_dates_addresses_and_short_numbers_are_left_alone() {
        for text in [
            "EL_333_1700000000",
            "EL_7_2024-11-21 10:00:00",
            "at 2024-11-21T10:30:00Z",
            "HTTP 500 after 15 s",
            "connect to 192.168.100.200:5432 failed",
            "conv_0123456789abcdef",
            "steps 1 2 3 4 5 6 7",
            "",
        ] {
            assert_eq!(mask_phone_numbers(text), text);
        }
    }

    #[test]
    fn an_invalid_number_is_not_repeated() {
        let err = PhoneNumber::parse("+1555CALLNOW").expect_err("invalid");
        assert!(!err.to_string().contains("CALLNOW"));
    }

    /// A number of `digits` (the last `national` of them national) in one of the common
    /// forms; the national part is grouped 3-4, 3-3-2, 3-3-3 or 3-3-4 as people write it.
    fn render(digits: &str, national: usize, form: usize) -> String {
        let (cc, nsn) = digits.split_at(digits.len() - national);
        let (area, rest) = nsn.split_at(3);
        let mut groups = vec![area];
        if rest.len() <= 4 {
            groups.push(rest);
        } else {
            let (b, c) = rest.split_at(3);
            groups.extend([b, c]);
        }
        let tail = groups[1..].join("-");
        match form {
            0 => format!("+{digits}"),
            1 => digits.to_owned(),
            2 => format!("({area}) {tail}"),
            3 => groups.join("-"),
            4 => groups.join("."),
            5 => format!("+{cc} {}", groups.join(" ")),
            _ => format!("+{cc} ({area}) {tail}"),
        }
    }

    proptest! {
        #[test]
        fn a_number_in_any_common_form_keeps_at_most_its_last_four_digits(
            cc in "[1-9][0-9]{0,2}",
            nsn in "[2-9][0-9]{6,9}",
            form in 0usize..7,
            before in "[a-zA-Z ,:=]{0,12}[ :=\"]",
            after in "[ ,.;\"][a-zA-Z ,.]{0,12}",
        ) {
            let digits = format!("{cc}{nsn}");
            prop_assume!(digits.len() <= 15);
            let number = render(&digits, nsn.len(), form);
            let text = format!("{before}{number}{after}");

            let masked = mask_phone_numbers(&text);

            let visible: String = masked.chars().filter(char::is_ascii_digit).collect();
            prop_assert_eq!(&visible, &digits[digits.len() - 4..], "{} -> {}", text, masked);
            prop_assert!(masked.starts_with(&before) && masked.ends_with(&after));
            prop_assert_eq!(masked.chars().count(), text.chars().count());
        }

        #[test]
        fn text_without_long_digit_runs_is_unchanged(
            words in proptest::collection::vec("[a-zA-Z]{1,8}|[0-9]{1,3}", 0..12),
        ) {
            let text = words.join(", ");
            prop_assert_eq!(mask_phone_numbers(&text), text);
        }
    }
}
