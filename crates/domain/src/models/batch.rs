//! One driver's call as the telephony places it (the batch itself is [`super::Batch`]; the
//! server turns the wire JSON into it).

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
