//! The batch body, shared by `POST /batches` and `POST /driver_data/call-elevenlabs`: one
//! wire type ([`BatchCallRequest`], the seed's BatchCallRequest plus scheduling), turned
//! into the domain's validated [`Batch`] here, with every problem named by its wire path
//! (`drivers[1].phoneNumber: …`, `schedule.window: …`).
//!
//! Request fields are `Option`s so that serde only checks JSON types; everything else is
//! checked by [`BatchCallRequest::into_batch`], which reports all problems at once.

use std::collections::BTreeSet;
use std::fmt;

use calls_domain::models::{
    Batch, BatchError, CallWindow, Driver, PhoneNumber, RedialDelays, Schedule, TimeZone,
    Violation, attempt_call_sid,
};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use time::format_description::well_known::{Iso8601, Rfc3339};
use time::{Duration, OffsetDateTime, UtcOffset};

use crate::body::{BodyLimits, JsonRequest};
use crate::errors::ApiError;

/// A `notBefore` further ahead than this is refused (SPEC): almost surely a mistake, and
/// the recipient would sit in the queue for over a year.
pub const MAX_NOT_BEFORE_AHEAD: Duration = Duration::days(400);

/// The dispatcher's batch (the seed's BatchCallRequest), with optional scheduling.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"callType": "violation", "timestamp": "2024-11-21T10:00:00Z", "drivers": [{"driverId": 333, "driverName": "Test Driver", "phoneNumber": "+15551234567", "customRules": "", "violations": {"tripId": "trip_123", "violationDetails": [{"type": "temperature", "description": "Temperature out of range"}]}, "timeZone": "America/Chicago", "notBefore": "2024-11-21T16:00:00-06:00"}], "schedule": {"window": "08:00-20:00", "redialDelaysSecs": [600, 1800]}}))]
pub struct BatchCallRequest {
    #[schema(required = true, nullable = false, min_length = 1)]
    pub call_type: Option<String>,
    /// Used as given in `call_sid = EL_{driverId}_{timestamp}`; an integer is used as its
    /// decimal text. No control characters; spaces are kept (`2024-11-21 10:00:00`).
    #[schema(required = true, nullable = false, value_type = String, min_length = 1)]
    pub timestamp: Option<BatchTimestamp>,
    #[schema(required = true, nullable = false, min_items = 1)]
    pub drivers: Option<Vec<DriverData>>,
    /// When and how often drivers may be dialed; what is left out comes from the
    /// instance's settings (`DEFAULT_TIME_ZONE`, `CALL_WINDOW`, `REDIAL_DELAYS_SECS`).
    #[schema(nullable = false)]
    pub schedule: Option<ScheduleData>,
}

impl JsonRequest for BatchCallRequest {
    fn limit(limits: &BodyLimits) -> usize {
        limits.batch
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DriverData {
    /// Unique within the batch, ≥ 0.
    #[schema(required = true, nullable = false, minimum = 0)]
    pub driver_id: Option<i64>,
    #[schema(required = true, nullable = false, min_length = 1)]
    pub driver_name: Option<String>,
    /// Any format the phone-number library can normalise to E.164 (no `+`: a US number).
    #[schema(required = true, nullable = false, min_length = 1)]
    pub phone_number: Option<String>,
    #[schema(nullable = false)]
    pub custom_rules: Option<String>,
    #[schema(required = true, nullable = false)]
    pub violations: Option<Violations>,
    /// The driver's IANA time zone (`America/Chicago`); overrides the schedule's.
    #[schema(nullable = false, example = "America/Chicago")]
    pub time_zone: Option<String>,
    /// No attempt before this instant (ISO 8601 with offset), e.g. when the driver's
    /// 10-hour rest ends; at most 400 days ahead.
    #[schema(nullable = false, example = "2024-11-21T16:00:00-06:00")]
    pub not_before: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Violations {
    #[schema(required = true, nullable = false, min_length = 1)]
    pub trip_id: Option<String>,
    #[schema(required = true, nullable = false, min_items = 1)]
    pub violation_details: Option<Vec<ViolationDetail>>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ViolationDetail {
    #[serde(rename = "type")]
    #[schema(required = true, nullable = false, min_length = 1)]
    pub kind: Option<String>,
    #[schema(required = true, nullable = false, min_length = 1)]
    pub description: Option<String>,
}

/// The batch's scheduling, each part optional.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleData {
    /// IANA time zone of drivers that name none.
    #[schema(nullable = false, example = "America/Chicago")]
    pub time_zone: Option<String>,
    /// `"HH:MM-HH:MM"` in each recipient's local wall time (start inclusive, end exclusive;
    /// an end before the start crosses midnight), or `"any"` (overrides `CALL_WINDOW`).
    #[schema(nullable = false, example = "08:00-20:00")]
    pub window: Option<String>,
    /// No attempt of any driver before this instant (ISO 8601 with offset); at most 400
    /// days ahead.
    #[schema(nullable = false)]
    pub not_before: Option<String>,
    /// Seconds to wait after a failed attempt before the next: 0–10 entries, each
    /// 0..=604800; `[]`: no re-dial.
    #[schema(nullable = false, max_items = 10, example = json!([600, 1800]))]
    pub redial_delays_secs: Option<Vec<i64>>,
}

/// The batch timestamp: a JSON string, or an integer (unix seconds) taken as its decimal
/// text, so that both forms give the same call_sid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchTimestamp(pub String);

impl<'de> Deserialize<'de> for BatchTimestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;
        impl Visitor<'_> for Text {
            type Value = BatchTimestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(BatchTimestamp(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(BatchTimestamp(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(BatchTimestamp(v.to_string()))
            }
        }
        deserializer.deserialize_any(Text)
    }
}

/// Every problem found, each naming its wire field (`drivers[1].phoneNumber: …`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid batch: {}", .problems.join("; "))]
pub struct InvalidBatch {
    pub problems: Vec<String>,
}

impl From<InvalidBatch> for ApiError {
    fn from(e: InvalidBatch) -> Self {
        Self::bad_request("Invalid batch request", e.problems.join("; "))
    }
}

/// Collects problems while fields are read.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, field: &str, problem: impl fmt::Display) {
        self.0.push(format!("{field}: {problem}"));
    }

    /// A required, non-blank text without NUL (PostgreSQL text cannot hold it, and no
    /// dispatcher means one). Trimmed.
    fn required(&mut self, value: Option<&str>, field: &str) -> String {
        match value.map(str::trim) {
            Some(v) if v.contains('\0') => {
                self.push(field, "must not contain NUL characters");
                String::new()
            }
            Some(v) if !v.is_empty() => v.to_owned(),
            _ => {
                self.push(field, "is required");
                String::new()
            }
        }
    }

    fn time_zone(&mut self, value: Option<&str>, field: &str) -> Option<TimeZone> {
        TimeZone::parse(value?.trim())
            .map_err(|e| self.push(field, e))
            .ok()
    }

    fn not_before(
        &mut self,
        value: Option<&str>,
        field: &str,
        now: OffsetDateTime,
    ) -> Option<OffsetDateTime> {
        let value = value?;
        let Some(at) = parse_instant(value) else {
            self.push(
                field,
                "must be an ISO 8601 date and time with an offset (e.g. 2024-11-21T16:00:00-06:00)",
            );
            return None;
        };
        if at > now + MAX_NOT_BEFORE_AHEAD {
            self.push(field, "must not be more than 400 days ahead");
            return None;
        }
        Some(at)
    }
}

/// ISO 8601 / RFC 3339 with `Z` or an offset (a local time without one would be a guess),
/// in UTC.
fn parse_instant(value: &str) -> Option<OffsetDateTime> {
    let value = value.trim();
    OffsetDateTime::parse(value, &Rfc3339)
        .or_else(|_| OffsetDateTime::parse(value, &Iso8601::DEFAULT))
        .ok()?
        .checked_to_offset(UtcOffset::UTC)
}

impl BatchCallRequest {
    /// The domain's batch, or every problem with its wire path. `now` bounds `notBefore`.
    pub fn into_batch(self, now: OffsetDateTime) -> Result<Batch, InvalidBatch> {
        let mut problems = Problems::default();
        let call_type = problems.required(self.call_type.as_deref(), "callType");
        let timestamp =
            problems.required(self.timestamp.as_ref().map(|t| t.0.as_str()), "timestamp");
        let raw_drivers = self.drivers.unwrap_or_default();
        if raw_drivers.is_empty() {
            problems.push("drivers", "at least one driver is required");
        }
        let mut seen = BTreeSet::new();
        let mut drivers = Vec::with_capacity(raw_drivers.len());
        for (i, raw) in raw_drivers.into_iter().enumerate() {
            let at = |field: &str| format!("drivers[{i}].{field}");
            let before = problems.0.len();
            let driver_id = match raw.driver_id {
                Some(id) if id >= 0 => {
                    if !seen.insert(id) {
                        problems.push(
                            &at("driverId"),
                            format!("driver {id} appears more than once"),
                        );
                    }
                    id
                }
                Some(_) => {
                    problems.push(&at("driverId"), "must not be negative");
                    0
                }
                None => {
                    problems.push(&at("driverId"), "is required");
                    0
                }
            };
            let driver_name = problems.required(raw.driver_name.as_deref(), &at("driverName"));
            let phone = problems.required(raw.phone_number.as_deref(), &at("phoneNumber"));
            let phone_number = if phone.is_empty() {
                None
            } else {
                // The error masks the number: problems are logged and answered.
                PhoneNumber::parse(&phone)
                    .map_err(|e| problems.push(&at("phoneNumber"), e))
                    .ok()
            };
            let (trip_id, details) = raw
                .violations
                .map(|v| (v.trip_id, v.violation_details))
                .unwrap_or_default();
            let trip_id = problems.required(trip_id.as_deref(), &at("violations.tripId"));
            let custom_rules = raw.custom_rules.unwrap_or_default();
            if custom_rules.contains('\0') {
                problems.push(&at("customRules"), "must not contain NUL characters");
            }
            let mut violations = Vec::new();
            match details.as_deref() {
                None | Some([]) => problems.push(
                    &at("violations.violationDetails"),
                    "at least one violation is required",
                ),
                Some(list) => {
                    for (j, v) in list.iter().enumerate() {
                        let field = |f: &str| at(&format!("violations.violationDetails[{j}].{f}"));
                        let kind = problems.required(v.kind.as_deref(), &field("type"));
                        let description =
                            problems.required(v.description.as_deref(), &field("description"));
                        violations.push(Violation { kind, description });
                    }
                }
            }
            let time_zone = problems.time_zone(raw.time_zone.as_deref(), &at("timeZone"));
            let not_before = problems.not_before(raw.not_before.as_deref(), &at("notBefore"), now);
            // Every attempt's call_sid (`…#11` the longest) must be formable.
            if !timestamp.is_empty() {
                let last = u32::try_from(RedialDelays::MAX_LEN).unwrap_or(10) + 1;
                if let Err(e) = attempt_call_sid(driver_id, &timestamp, last) {
                    problems.push("timestamp", format!("cannot form a call_sid: {e}"));
                }
            }
            if problems.0.len() == before {
                if let Some(phone_number) = phone_number {
                    drivers.push(Driver {
                        driver_id,
                        driver_name,
                        phone_number,
                        custom_rules,
                        trip_id,
                        violations,
                        time_zone,
                        not_before,
                    });
                }
            }
        }
        let schedule = self
            .schedule
            .map(|s| schedule(s, &mut problems, now))
            .unwrap_or_default();
        let mut problems = problems.0;
        problems.dedup();
        if !problems.is_empty() {
            return Err(InvalidBatch { problems });
        }
        Batch::new(call_type, timestamp, drivers, schedule).map_err(|e| {
            let problem = match &e {
                BatchError::NoDrivers => format!("drivers: {e}"),
                BatchError::DuplicateDriver { index, .. } => {
                    format!("drivers[{index}].driverId: {e}")
                }
                BatchError::CallSid(_) => format!("timestamp: {e}"),
            };
            InvalidBatch {
                problems: vec![problem],
            }
        })
    }
}

fn schedule(raw: ScheduleData, problems: &mut Problems, now: OffsetDateTime) -> Schedule {
    let time_zone = problems.time_zone(raw.time_zone.as_deref(), "schedule.timeZone");
    let window = raw.window.as_deref().and_then(|w| {
        CallWindow::parse(w.trim())
            .map_err(|e| problems.push("schedule.window", e))
            .ok()
    });
    let not_before = problems.not_before(raw.not_before.as_deref(), "schedule.notBefore", now);
    let redial_delays = raw.redial_delays_secs.and_then(|delays| {
        let secs: Result<Vec<u64>, _> = delays.iter().map(|d| u64::try_from(*d)).collect();
        match secs {
            Err(_) => {
                problems.push(
                    "schedule.redialDelaysSecs",
                    format!(
                        "each delay must be between 0 and {} seconds",
                        RedialDelays::MAX_SECS
                    ),
                );
                None
            }
            Ok(secs) => RedialDelays::new(secs)
                .map_err(|e| problems.push("schedule.redialDelaysSecs", e))
                .ok(),
        }
    });
    Schedule {
        time_zone,
        window,
        not_before,
        redial_delays,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn driver(id: i64, phone: &str) -> Value {
        json!({
            "driverId": id, "driverName": "Test Driver", "phoneNumber": phone, "customRules": "",
            "violations": {"tripId": "trip_123", "violationDetails": [{"type": "temperature", "description": "Temperature out of range"}]}
        })
    }

    fn body(drivers: Vec<Value>) -> Value {
        json!({"callType": "violation", "timestamp": "2024-11-21T10:00:00Z", "drivers": drivers})
    }

    fn now() -> OffsetDateTime {
        time::macros::datetime!(2024-11-21 10:00 UTC)
    }

    fn parse(value: Value) -> Result<Batch, InvalidBatch> {
        let request: BatchCallRequest = serde_json::from_value(value).expect("wire shape");
        request.into_batch(now())
    }

    fn problems(value: Value) -> Vec<String> {
        parse(value).expect_err("invalid").problems
    }

    #[test]
    fn the_seed_batch_is_valid_and_keeps_its_values() {
        let batch = parse(body(vec![driver(333, "+15551234567")])).expect("valid");
        assert_eq!(batch.timestamp(), "2024-11-21T10:00:00Z");
        let d = &batch.drivers()[0];
        assert_eq!(d.phone_number.as_str(), "+15551234567");
        assert_eq!(d.violations.len(), 1);
        assert_eq!(d.time_zone, None);
        assert_eq!(batch.schedule(), &Schedule::default());
    }

    #[test]
    fn an_integer_timestamp_is_its_decimal_text() {
        let mut b = body(vec![driver(1, "+15551234567")]);
        b["timestamp"] = json!(1_700_000_000);
        assert_eq!(parse(b).expect("valid").timestamp(), "1700000000");
    }

    #[test]
    fn no_drivers_duplicates_and_bad_phones_are_all_reported_with_paths() {
        assert_eq!(
            problems(body(vec![])),
            ["drivers: at least one driver is required"]
        );
        let found = problems(body(vec![
            driver(1, "+15551234567"),
            driver(1, "+15557654321"),
            driver(2, "call me"),
        ]));
        assert!(
            found.contains(&"drivers[1].driverId: driver 1 appears more than once".to_owned()),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("drivers[2].phoneNumber: ")),
            "{found:?}"
        );
        assert!(
            !found.join(";").contains("call me"),
            "phone numbers are masked: {found:?}"
        );
    }

    #[test]
    fn missing_fields_are_named() {
        let mut d = driver(5, "+15551234567");
        d.as_object_mut().expect("object").remove("driverName");
        d["violations"]["tripId"] = json!(" ");
        d["violations"]["violationDetails"] = json!([]);
        let mut b = body(vec![d]);
        b.as_object_mut().expect("object").remove("callType");
        let text = problems(b).join("; ");
        for field in [
            "callType: is required",
            "drivers[0].driverName: is required",
            "drivers[0].violations.tripId: is required",
            "drivers[0].violations.violationDetails: at least one violation",
        ] {
            assert!(text.contains(field), "{field} in {text}");
        }
    }

    #[test]
    fn a_nul_in_any_string_is_reported_with_its_field() {
        let mut d = driver(5, "+15551234567");
        d["driverName"] = json!("Te\u{0}st");
        d["customRules"] = json!("\u{0}");
        d["violations"] = json!({"tripId": "trip\u{0}", "violationDetails": [{"type": "temp\u{0}", "description": "x\u{0}"}]});
        let mut b = body(vec![d]);
        b["callType"] = json!("viol\u{0}ation");
        let found = problems(b);
        for field in [
            "callType",
            "drivers[0].driverName",
            "drivers[0].customRules",
            "drivers[0].violations.tripId",
            "drivers[0].violations.violationDetails[0].type",
            "drivers[0].violations.violationDetails[0].description",
        ] {
            assert!(
                found.contains(&format!("{field}: must not contain NUL characters")),
                "{field} in {found:?}"
            );
        }
        let mut ts = body(vec![driver(5, "+15551234567")]);
        ts["timestamp"] = json!("2024\u{0}");
        assert!(parse(ts).is_err());
    }

    #[test]
    fn a_timestamp_that_cannot_form_every_attempts_call_sid_is_refused() {
        let mut b = body(vec![driver(5, "+15551234567")]);
        b["timestamp"] = json!("21 Nov\t2024");
        assert!(problems(b)[0].starts_with("timestamp: cannot form a call_sid"));
        // Attempt 1 would fit in 255 characters, attempt 11 (`#11`) would not.
        let mut long = body(vec![driver(5, "+15551234567")]);
        long["timestamp"] = json!("x".repeat(255 - "EL_5_".len() - 1));
        assert!(problems(long)[0].starts_with("timestamp: "));
    }

    #[test]
    fn scheduling_fields_are_parsed() {
        let mut d = driver(1, "+15551234567");
        d["timeZone"] = json!("America/Chicago");
        d["notBefore"] = json!("2024-11-21T16:00:00-06:00");
        let mut b = body(vec![d]);
        b["schedule"] = json!({"timeZone": "Europe/Berlin", "window": "20:00-06:00", "notBefore": "2024-11-22T00:00:00Z", "redialDelaysSecs": []});
        let batch = parse(b).expect("valid");
        let d = &batch.drivers()[0];
        assert_eq!(
            d.time_zone.as_ref().map(TimeZone::name),
            Some("America/Chicago")
        );
        assert_eq!(
            d.not_before,
            Some(time::macros::datetime!(2024-11-21 22:00 UTC))
        );
        let s = batch.schedule();
        assert_eq!(
            s.time_zone.as_ref().map(TimeZone::name),
            Some("Europe/Berlin")
        );
        assert_eq!(
            s.window.map(|w| w.to_string()),
            Some("20:00-06:00".to_owned())
        );
        assert_eq!(
            s.redial_delays.as_ref().map(RedialDelays::as_secs),
            Some(&[][..])
        );
        let any = parse(json!({"callType": "v", "timestamp": "t", "drivers": [driver(1, "+15551234567")], "schedule": {"window": "any"}})).expect("valid");
        assert_eq!(any.schedule().window, Some(CallWindow::Any));
    }

    #[test]
    fn every_bad_scheduling_field_is_named() {
        let mut d = driver(1, "+15551234567");
        d["timeZone"] = json!("Mars/Olympus");
        d["notBefore"] = json!("2024-11-21T16:00:00");
        let mut late = driver(2, "+15551234568");
        late["notBefore"] = json!("2026-01-01T00:00:00Z");
        let mut b = body(vec![d, late]);
        b["schedule"] = json!({"timeZone": "", "window": "8-20", "notBefore": "tomorrow", "redialDelaysSecs": [60, -1]});
        let found = problems(b).join("\n");
        for field in [
            "drivers[0].timeZone: ",
            "drivers[0].notBefore: must be an ISO 8601",
            "drivers[1].notBefore: must not be more than 400 days ahead",
            "schedule.timeZone: ",
            "schedule.window: ",
            "schedule.notBefore: ",
            "schedule.redialDelaysSecs: ",
        ] {
            assert!(found.contains(field), "{field} in {found}");
        }
        for (window, delays) in [
            (json!("08:00-08:00"), json!([-5])),
            (json!(""), json!([604_801])),
            (json!("24:00-06:00"), json!(vec![0; 11])),
        ] {
            let mut b = body(vec![driver(1, "+15551234567")]);
            b["schedule"] = json!({"window": window, "redialDelaysSecs": delays});
            let found = problems(b);
            assert_eq!(found.len(), 2, "{found:?}");
            assert!(found[0].starts_with("schedule.window: "), "{found:?}");
            assert!(
                found[1].starts_with("schedule.redialDelaysSecs: "),
                "{found:?}"
            );
        }
    }
}
