//! A durable batch: the dispatcher's drivers, each becoming a recipient with its own
//! dialing rules, attempts and state (SPEC "Batches"). The server turns wire JSON into
//! these values (naming each problem's wire path); the domain checks what spans drivers.

use std::collections::BTreeMap;
use std::fmt;

use time::OffsetDateTime;

use super::{CallSid, CallSidError, CallWindow, PhoneNumber, RedialDelays, TimeZone, Violation};

/// A batch's id: a UUID v7 (time-ordered), shown as its hyphenated string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchId(uuid::Uuid);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a batch id")]
pub struct InvalidBatchId;

impl BatchId {
    /// A new time-ordered id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    /// # Errors
    /// [`InvalidBatchId`] for anything but a UUID (the HTTP layer answers 404).
    pub fn parse(value: &str) -> Result<Self, InvalidBatchId> {
        uuid::Uuid::try_parse(value)
            .map(Self)
            .map_err(|_| InvalidBatchId)
    }

    pub fn from_uuid(id: uuid::Uuid) -> Self {
        Self(id)
    }

    pub fn as_uuid(&self) -> uuid::Uuid {
        self.0
    }
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

/// One driver of a batch, every field valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Driver {
    pub driver_id: i64,
    pub driver_name: String,
    pub phone_number: PhoneNumber,
    pub custom_rules: String,
    pub trip_id: String,
    pub violations: Vec<Violation>,
    /// Overrides the schedule's and the instance's time zone.
    pub time_zone: Option<TimeZone>,
    /// No attempt before this instant (e.g. when the driver's 10-hour rest ends).
    pub not_before: Option<OffsetDateTime>,
}

/// The batch's optional scheduling; what is missing comes from the instance's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule {
    pub time_zone: Option<TimeZone>,
    pub window: Option<CallWindow>,
    pub not_before: Option<OffsetDateTime>,
    pub redial_delays: Option<RedialDelays>,
}

/// The instance's settings that fill what a batch leaves out (`DEFAULT_TIME_ZONE`,
/// `CALL_WINDOW`, `REDIAL_DELAYS_SECS`, `DIAL_EXPIRY_SECS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchDefaults {
    pub time_zone: TimeZone,
    /// `CALL_WINDOW` empty → [`CallWindow::Any`].
    pub window: CallWindow,
    pub redial_delays: RedialDelays,
    pub expiry: std::time::Duration,
}

impl Default for BatchDefaults {
    /// SPEC's defaults: UTC, any time, `600,1800`, 86400 s.
    fn default() -> Self {
        Self {
            time_zone: TimeZone::utc(),
            window: CallWindow::Any,
            redial_delays: RedialDelays::default_delays(),
            expiry: std::time::Duration::from_secs(86_400),
        }
    }
}

/// A validated batch: at least one driver, driver ids unique, every attempt's call_sid
/// formable from the timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    call_type: String,
    timestamp: String,
    drivers: Vec<Driver>,
    schedule: Schedule,
}

/// What makes a batch invalid as a whole (the server names the wire path).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("at least one driver is required")]
    NoDrivers,
    /// `index` is the second occurrence.
    #[error("driver {driver_id} appears more than once")]
    DuplicateDriver { index: usize, driver_id: i64 },
    #[error("cannot form a call_sid: {0}")]
    CallSid(#[from] CallSidError),
}

impl Batch {
    /// # Errors
    /// [`BatchError`] for no drivers, a driver id twice, or a timestamp that cannot form
    /// the call_sid of every attempt (`EL_{driverId}_{timestamp}#11` at most).
    pub fn new(
        call_type: String,
        timestamp: String,
        drivers: Vec<Driver>,
        schedule: Schedule,
    ) -> Result<Self, BatchError> {
        if drivers.is_empty() {
            return Err(BatchError::NoDrivers);
        }
        let mut seen = BTreeMap::new();
        for (index, d) in drivers.iter().enumerate() {
            if seen.insert(d.driver_id, index).is_some() {
                return Err(BatchError::DuplicateDriver {
                    index,
                    driver_id: d.driver_id,
                });
            }
            attempt_call_sid(d.driver_id, &timestamp, RedialDelays::MAX_LEN as u32 + 1)?;
        }
        Ok(Self {
            call_type,
            timestamp,
            drivers,
            schedule,
        })
    }

    pub fn call_type(&self) -> &str {
        &self.call_type
    }

    pub fn timestamp(&self) -> &str {
        &self.timestamp
    }

    pub fn drivers(&self) -> &[Driver] {
        &self.drivers
    }

    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }
}

/// Attempt 1: `EL_{driverId}_{timestamp}`; attempt n ≥ 2: `EL_{driverId}_{timestamp}#n`.
///
/// # Errors
/// [`CallSidError`] when the result is not a valid call_sid.
pub fn attempt_call_sid(
    driver_id: i64,
    timestamp: &str,
    attempt: u32,
) -> Result<CallSid, CallSidError> {
    if attempt <= 1 {
        CallSid::for_driver(driver_id, timestamp)
    } else {
        CallSid::parse(format!("EL_{driver_id}_{timestamp}#{attempt}"))
    }
}
