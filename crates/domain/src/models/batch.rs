//! A dispatcher's batch of drivers to call, validated as a whole before anything is
//! written or dialed.

use std::collections::BTreeSet;

use super::{CallSid, PhoneNumber};

/// One violation to talk about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub kind: String,
    pub description: String,
}

/// One driver to call, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverCall {
    pub call_sid: CallSid,
    pub driver_id: i64,
    pub driver_name: String,
    pub phone_number: PhoneNumber,
    pub custom_rules: String,
    pub trip_id: String,
    pub violations: Vec<Violation>,
}

/// A validated batch: at least one driver, unique driver ids, every field usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchCall {
    pub call_type: String,
    pub timestamp: String,
    pub drivers: Vec<DriverCall>,
}

/// The batch as received, fields optional so that every problem can be reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawBatch {
    pub call_type: Option<String>,
    pub timestamp: Option<String>,
    pub drivers: Option<Vec<RawDriver>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawDriver {
    pub driver_id: Option<i64>,
    pub driver_name: Option<String>,
    pub phone_number: Option<String>,
    pub custom_rules: Option<String>,
    pub trip_id: Option<String>,
    pub violations: Option<Vec<RawViolation>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawViolation {
    pub kind: Option<String>,
    pub description: Option<String>,
}

/// Every problem found, each naming its field (`drivers[1].phoneNumber: …`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid batch: {}", .problems.join("; "))]
pub struct InvalidBatch {
    pub problems: Vec<String>,
}

fn required<'a>(value: &'a Option<String>, field: &str, problems: &mut Vec<String>) -> &'a str {
    match value.as_deref().map(str::trim) {
        Some(v) if v.contains('\0') => {
            problems.push(nul(field));
            ""
        }
        Some(v) if !v.is_empty() => v,
        _ => {
            problems.push(format!("{field}: is required"));
            ""
        }
    }
}

/// PostgreSQL text cannot hold NUL, and no dispatcher means one: refused like any bad field.
fn nul(field: &str) -> String {
    format!("{field}: must not contain NUL characters")
}

impl RawBatch {
    pub fn validate(&self) -> Result<BatchCall, InvalidBatch> {
        let mut problems = Vec::new();
        let call_type = required(&self.call_type, "callType", &mut problems).to_owned();
        let timestamp = required(&self.timestamp, "timestamp", &mut problems).to_owned();
        let raw_drivers = self.drivers.as_deref().unwrap_or_default();
        if raw_drivers.is_empty() {
            problems.push("drivers: at least one driver is required".into());
        }
        let mut seen = BTreeSet::new();
        let mut drivers = Vec::new();
        for (i, raw) in raw_drivers.iter().enumerate() {
            let at = |field: &str| format!("drivers[{i}].{field}");
            let before = problems.len();
            let driver_id = match raw.driver_id {
                Some(id) if id >= 0 => {
                    if !seen.insert(id) {
                        problems.push(format!(
                            "{}: driver {id} appears more than once",
                            at("driverId")
                        ));
                    }
                    id
                }
                Some(_) => {
                    problems.push(format!("{}: must not be negative", at("driverId")));
                    0
                }
                None => {
                    problems.push(format!("{}: is required", at("driverId")));
                    0
                }
            };
            let driver_name =
                required(&raw.driver_name, &at("driverName"), &mut problems).to_owned();
            let phone = required(&raw.phone_number, &at("phoneNumber"), &mut problems);
            let phone_number = if phone.is_empty() {
                None
            } else {
                PhoneNumber::parse(phone)
                    .map_err(|e| problems.push(format!("{}: {e}", at("phoneNumber"))))
                    .ok()
            };
            let trip_id =
                required(&raw.trip_id, &at("violations.tripId"), &mut problems).to_owned();
            let custom_rules = raw.custom_rules.clone().unwrap_or_default();
            if custom_rules.contains('\0') {
                problems.push(nul(&at("customRules")));
            }
            let mut violations = Vec::new();
            match raw.violations.as_deref() {
                None | Some([]) => problems.push(format!(
                    "{}: at least one violation is required",
                    at("violations.violationDetails")
                )),
                Some(list) => {
                    for (j, v) in list.iter().enumerate() {
                        let field = |f: &str| at(&format!("violations.violationDetails[{j}].{f}"));
                        let kind = required(&v.kind, &field("type"), &mut problems).to_owned();
                        let description =
                            required(&v.description, &field("description"), &mut problems)
                                .to_owned();
                        violations.push(Violation { kind, description });
                    }
                }
            }
            let call_sid = match CallSid::for_driver(driver_id, &timestamp) {
                Ok(sid) => Some(sid),
                Err(e) if !timestamp.is_empty() => {
                    problems.push(format!("timestamp: cannot form a call_sid: {e}"));
                    None
                }
                Err(_) => None,
            };
            if problems.len() == before {
                if let (Some(call_sid), Some(phone_number)) = (call_sid, phone_number) {
                    drivers.push(DriverCall {
                        call_sid,
                        driver_id,
                        driver_name,
                        phone_number,
                        custom_rules,
                        trip_id,
                        violations,
                    });
                }
            }
        }
        problems.dedup();
        if problems.is_empty() {
            Ok(BatchCall {
                call_type,
                timestamp,
                drivers,
            })
        } else {
            Err(InvalidBatch { problems })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn driver(id: i64, phone: &str) -> RawDriver {
        RawDriver {
            driver_id: Some(id),
            driver_name: Some("Test Driver".into()),
            phone_number: Some(phone.into()),
            custom_rules: Some(String::new()),
            trip_id: Some("trip_123".into()),
            violations: Some(vec![RawViolation {
                kind: Some("temperature".into()),
                description: Some("Temperature out of range".into()),
            }]),
        }
    }

    fn batch(drivers: Vec<RawDriver>) -> RawBatch {
        RawBatch {
            call_type: Some("violation".into()),
            timestamp: Some("2024-11-21T10:00:00Z".into()),
            drivers: Some(drivers),
        }
    }

    #[test]
    fn the_seed_batch_is_valid_and_gets_its_call_sid() {
        let valid = batch(vec![driver(333, "+15551234567")])
            .validate()
            .expect("valid");
        assert_eq!(
            valid.drivers[0].call_sid.as_str(),
            "EL_333_2024-11-21T10:00:00Z"
        );
        assert_eq!(valid.drivers[0].phone_number.as_str(), "+15551234567");
    }

    #[test]
    fn no_drivers_duplicates_and_bad_phones_are_all_reported() {
        assert!(batch(vec![]).validate().is_err());
        let err = batch(vec![
            driver(1, "+15551234567"),
            driver(1, "+15557654321"),
            driver(2, "call me"),
        ])
        .validate()
        .expect_err("invalid");
        let text = err.to_string();
        assert!(text.contains("driver 1 appears more than once"), "{text}");
        assert!(text.contains("drivers[2].phoneNumber"), "{text}");
        assert!(
            !text.contains("call me"),
            "phone numbers are masked: {text}"
        );
    }

    #[test]
    fn missing_fields_are_named() {
        let mut d = driver(5, "+15551234567");
        d.driver_name = None;
        d.trip_id = Some(" ".into());
        d.violations = Some(vec![]);
        let mut b = batch(vec![d]);
        b.call_type = None;
        let text = b.validate().expect_err("invalid").to_string();
        for field in [
            "callType",
            "drivers[0].driverName",
            "drivers[0].violations.tripId",
            "violationDetails",
        ] {
            assert!(text.contains(field), "{field} in {text}");
        }
    }

    #[test]
    fn a_nul_in_any_string_is_reported_with_its_field() {
        let mut d = driver(5, "+15551234567");
        d.driver_name = Some("Te\u{0}st".into());
        d.custom_rules = Some("\u{0}".into());
        d.trip_id = Some("trip\u{0}".into());
        d.violations = Some(vec![RawViolation {
            kind: Some("temp\u{0}".into()),
            description: Some("x\u{0}".into()),
        }]);
        let mut b = batch(vec![d]);
        b.call_type = Some("viol\u{0}ation".into());
        let problems = b.validate().expect_err("invalid").problems;
        for field in [
            "callType",
            "drivers[0].driverName",
            "drivers[0].customRules",
            "drivers[0].violations.tripId",
            "drivers[0].violations.violationDetails[0].type",
            "drivers[0].violations.violationDetails[0].description",
        ] {
            assert!(
                problems.contains(&format!("{field}: must not contain NUL characters")),
                "{field} in {problems:?}"
            );
        }
        let mut ts = batch(vec![driver(5, "+15551234567")]);
        ts.timestamp = Some("2024\u{0}".into());
        assert!(ts.validate().is_err());
    }

    #[test]
    fn a_timestamp_with_a_space_forms_the_call_sid_as_given() {
        let mut b = batch(vec![driver(7, "+15551234567")]);
        b.timestamp = Some("2024-11-21 10:00:00".into());
        let valid = b.validate().expect("valid");
        assert_eq!(
            valid.drivers[0].call_sid.as_str(),
            "EL_7_2024-11-21 10:00:00"
        );
    }

    #[test]
    fn a_timestamp_that_cannot_form_a_call_sid_is_refused() {
        let mut b = batch(vec![driver(5, "+15551234567")]);
        b.timestamp = Some("21 Nov\t2024".into());
        assert!(
            b.validate()
                .expect_err("invalid")
                .to_string()
                .contains("timestamp")
        );
    }
}
