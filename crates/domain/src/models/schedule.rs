//! When a recipient may be dialed: its time zone, its call window in local wall time, its
//! re-dial delays, its expiry, and the due-time rule over them (SPEC "When an attempt is
//! due"). Pure functions over jiff's bundled IANA database: no hand-written offsets.

use std::fmt;
use std::time::Duration;

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::AmbiguousOffset;
use time::OffsetDateTime;

/// An IANA time zone (`America/Chicago`), with its rules from the bundled database.
#[derive(Clone)]
pub struct TimeZone {
    name: String,
    tz: jiff::tz::TimeZone,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown time zone {0:?} (an IANA name such as America/Chicago is expected)")]
pub struct UnknownTimeZone(pub String);

impl TimeZone {
    /// # Errors
    /// [`UnknownTimeZone`] for anything the IANA database does not name.
    pub fn parse(name: &str) -> Result<Self, UnknownTimeZone> {
        let unknown = || UnknownTimeZone(name.to_owned());
        // A fixed offset or a POSIX rule string is not a name the dispatcher can mean.
        if name.is_empty() || name.contains(['\0', ',']) || name.len() > 64 {
            return Err(unknown());
        }
        let tz = jiff::tz::db().get(name).map_err(|_| unknown())?;
        // Keep the database's spelling (lookups ignore case) so every instance stores alike.
        let name = tz.iana_name().unwrap_or(name).to_owned();
        Ok(Self { name, tz })
    }

    pub fn utc() -> Self {
        Self {
            name: "UTC".to_owned(),
            tz: jiff::tz::TimeZone::UTC,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The local wall-clock date and time at `at`.
    pub fn local(&self, at: OffsetDateTime) -> DateTime {
        self.tz.to_datetime(to_timestamp(at))
    }
}

impl PartialEq for TimeZone {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for TimeZone {}

impl fmt::Debug for TimeZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TimeZone").field(&self.name).finish()
    }
}

impl fmt::Display for TimeZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// When attempts may start, in the recipient's local wall time: `"HH:MM-HH:MM"` (start
/// inclusive, end exclusive, crossing midnight when the end is before the start) or `any`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallWindow {
    Any,
    Between { start: WallTime, end: WallTime },
}

/// A minute of the local day, `00:00`..`23:59`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WallTime {
    hour: u8,
    minute: u8,
}

impl WallTime {
    pub fn new(hour: u8, minute: u8) -> Option<Self> {
        (hour < 24 && minute < 60).then_some(Self { hour, minute })
    }

    fn civil(self) -> Time {
        // Ranges are checked by `new`, so the constructor cannot fail; midnight is a safe
        // value should it ever.
        Time::new(self.hour as i8, self.minute as i8, 0, 0).unwrap_or(Time::midnight())
    }
}

impl fmt::Display for WallTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.hour, self.minute)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCallWindow {
    #[error("must be \"HH:MM-HH:MM\" (e.g. \"20:00-06:00\") or \"any\"")]
    Malformed,
    #[error("start and end must differ")]
    Empty,
}

impl CallWindow {
    /// # Errors
    /// [`InvalidCallWindow`] for anything but `any` or two `HH:MM` times that differ.
    pub fn parse(value: &str) -> Result<Self, InvalidCallWindow> {
        if value == "any" {
            return Ok(Self::Any);
        }
        let (start, end) = value.split_once('-').ok_or(InvalidCallWindow::Malformed)?;
        let (start, end) = (parse_wall_time(start)?, parse_wall_time(end)?);
        if start == end {
            return Err(InvalidCallWindow::Empty);
        }
        Ok(Self::Between { start, end })
    }

    /// Whether a local wall-clock time lies inside the window.
    pub fn contains(&self, local: Time) -> bool {
        match *self {
            Self::Any => true,
            Self::Between { start, end } => {
                let (start, end) = (start.civil(), end.civil());
                if start < end {
                    start <= local && local < end
                } else {
                    local >= start || local < end
                }
            }
        }
    }
}

impl fmt::Display for CallWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::Between { start, end } => write!(f, "{start}-{end}"),
        }
    }
}

fn parse_wall_time(value: &str) -> Result<WallTime, InvalidCallWindow> {
    let bytes = value.as_bytes();
    if bytes.len() != 5 || bytes[2] != b':' {
        return Err(InvalidCallWindow::Malformed);
    }
    let two = |s: &str| -> Result<u8, InvalidCallWindow> {
        if s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse().map_err(|_| InvalidCallWindow::Malformed)
        } else {
            Err(InvalidCallWindow::Malformed)
        }
    };
    let (hour, minute) = (two(&value[..2])?, two(&value[3..])?);
    WallTime::new(hour, minute).ok_or(InvalidCallWindow::Malformed)
}

/// Seconds to wait after a failed attempt before the next one: 0–10 entries, each
/// 0..=604800 (a week). `[]`: no re-dial.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RedialDelays(Vec<u64>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRedialDelays {
    #[error("at most {max} delays are allowed, got {0}", max = RedialDelays::MAX_LEN)]
    TooMany(usize),
    #[error("each delay must be between 0 and {max} seconds, got {0}", max = RedialDelays::MAX_SECS)]
    OutOfRange(u64),
}

impl RedialDelays {
    pub const MAX_LEN: usize = 10;
    pub const MAX_SECS: u64 = 604_800;

    /// # Errors
    /// [`InvalidRedialDelays`] for more than 10 entries or an entry over a week.
    pub fn new(secs: Vec<u64>) -> Result<Self, InvalidRedialDelays> {
        if secs.len() > Self::MAX_LEN {
            return Err(InvalidRedialDelays::TooMany(secs.len()));
        }
        if let Some(&bad) = secs.iter().find(|s| **s > Self::MAX_SECS) {
            return Err(InvalidRedialDelays::OutOfRange(bad));
        }
        Ok(Self(secs))
    }

    /// `REDIAL_DELAYS_SECS`' default: 600, 1800.
    pub fn default_delays() -> Self {
        Self(vec![600, 1800])
    }

    pub fn as_secs(&self) -> &[u64] {
        &self.0
    }

    /// How many attempts a recipient gets: one plus one per delay.
    pub fn max_attempts(&self) -> u32 {
        // At most 11 (MAX_LEN + 1).
        self.0.len() as u32 + 1
    }

    /// The wait after attempt `attempt` (1-based) failed; `None` when it was the last.
    pub fn after_attempt(&self, attempt: u32) -> Option<Duration> {
        let index = usize::try_from(attempt.checked_sub(1)?).ok()?;
        self.0.get(index).map(|s| Duration::from_secs(*s))
    }
}

/// A recipient's resolved dialing rules, stored with it when its batch is created so that
/// every instance treats it alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialRules {
    pub time_zone: TimeZone,
    pub window: CallWindow,
    pub redial_delays: RedialDelays,
    /// After this instant the recipient is never dialed again (first due + expiry).
    pub expires_at: OffsetDateTime,
}

/// The answer of the due-time rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    At(OffsetDateTime),
    /// The next due time would fall at or past the recipient's expiry.
    Expired,
}

impl DialRules {
    /// The earliest instant ≥ `earliest` inside the window, or [`Due::Expired`] when that
    /// is at or past `expires_at`.
    pub fn due_from(&self, earliest: OffsetDateTime) -> Due {
        match next_in_window(earliest, &self.time_zone, &self.window) {
            Some(at) if at < self.expires_at => Due::At(at),
            _ => Due::Expired,
        }
    }

    /// When attempt `failed_attempt + 1` is due after attempt `failed_attempt` failed at
    /// `failure_known_at`; `None` when no attempt remains.
    pub fn redial(&self, failed_attempt: u32, failure_known_at: OffsetDateTime) -> Option<Due> {
        let delay = self.redial_delays.after_attempt(failed_attempt)?;
        Some(self.due_from(add_duration(failure_known_at, delay)))
    }
}

/// The first attempt's due time: the earliest instant ≥ max(now, every notBefore) inside
/// the window. `None` only if no instant in the next ~14 months is (cannot happen for a
/// window whose start differs from its end).
pub fn first_due(
    now: OffsetDateTime,
    not_before: &[Option<OffsetDateTime>],
    time_zone: &TimeZone,
    window: &CallWindow,
) -> Option<OffsetDateTime> {
    let earliest = not_before.iter().flatten().fold(now, |a, b| a.max(*b));
    next_in_window(earliest, time_zone, window)
}

/// `at + delay`, saturating far in the future (delays are at most a week).
pub fn add_duration(at: OffsetDateTime, delay: Duration) -> OffsetDateTime {
    let delay = time::Duration::try_from(delay).unwrap_or(time::Duration::MAX);
    at.checked_add(delay).unwrap_or(at)
}

/// The earliest instant ≥ `at` whose local wall-clock time (under the zone's rules) lies
/// inside `window`, in whole microseconds (what PostgreSQL keeps): `at` is truncated first.
/// Window edges and transitions fall on whole seconds, so the truncated instant is inside
/// exactly when `at` is, and a due time computed from `now` is due at that same `now`.
///
/// The window is entered either where local time reaches the window's start (once, or
/// twice on a fall-back night) or where a transition makes local time jump into the window
/// (a spring-forward gap over the start: `02:30-05:00` opens at 03:00 CDT). So the answer
/// is `at` itself, or the earliest of those candidates after it.
pub fn next_in_window(
    at: OffsetDateTime,
    time_zone: &TimeZone,
    window: &CallWindow,
) -> Option<OffsetDateTime> {
    let at = floor_micros(at);
    let start = match window {
        CallWindow::Any => return Some(at),
        CallWindow::Between { start, .. } => start.civil(),
    };
    let tz = &time_zone.tz;
    let inside = |ts: jiff::Timestamp| window.contains(tz.to_datetime(ts).time());
    let mut from = to_timestamp(at);
    if inside(from) {
        return Some(at);
    }
    // Look a week ahead at a time; a window that exists on no day for a year is a bug.
    for _ in 0..60 {
        let horizon = from
            .checked_add(jiff::SignedDuration::from_hours(24 * 7))
            .ok()?;
        let first_day = tz.to_datetime(from).date().yesterday().ok()?;
        let mut best: Option<jiff::Timestamp> = None;
        let mut consider = |ts: jiff::Timestamp| {
            if ts >= from && ts < horizon && inside(ts) && best.is_none_or(|b| ts < b) {
                best = Some(ts);
            }
        };
        let mut day: Date = first_day;
        for _ in 0..9 {
            for ts in instants_at(tz, day.to_datetime(start)) {
                consider(ts);
            }
            day = day.tomorrow().ok()?;
        }
        for transition in tz.following(from) {
            let ts = transition.timestamp();
            if ts >= horizon {
                break;
            }
            consider(ts);
        }
        if let Some(found) = best {
            return from_timestamp(found);
        }
        from = horizon;
    }
    None
}

/// Every instant whose local wall-clock time is `dt`: none in a gap, two in a fold.
fn instants_at(tz: &jiff::tz::TimeZone, dt: DateTime) -> Vec<jiff::Timestamp> {
    let ambiguous = tz.to_ambiguous_timestamp(dt);
    match ambiguous.offset() {
        AmbiguousOffset::Unambiguous { .. } => ambiguous.compatible().ok().into_iter().collect(),
        AmbiguousOffset::Gap { .. } => Vec::new(),
        AmbiguousOffset::Fold { .. } => {
            let earlier = ambiguous.earlier().ok();
            let later = ambiguous.later().ok();
            earlier.into_iter().chain(later).collect()
        }
    }
}

fn floor_micros(at: OffsetDateTime) -> OffsetDateTime {
    at.replace_nanosecond(at.nanosecond() / 1_000 * 1_000)
        .unwrap_or(at)
}

fn to_timestamp(at: OffsetDateTime) -> jiff::Timestamp {
    // Every OffsetDateTime (years ±9999) is inside jiff's range.
    jiff::Timestamp::from_nanosecond(at.unix_timestamp_nanos()).unwrap_or(jiff::Timestamp::MAX)
}

fn from_timestamp(ts: jiff::Timestamp) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(ts.as_nanosecond()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    fn chicago() -> TimeZone {
        TimeZone::parse("America/Chicago").expect("zone")
    }

    fn window(s: &str) -> CallWindow {
        CallWindow::parse(s).expect("window")
    }

    #[test]
    fn spring_forward_a_window_starting_in_the_gap_opens_at_the_first_instant_after_it() {
        // 2024-03-10 02:00 CST → 03:00 CDT. Midnight CST is 06:00 UTC.
        let at = datetime!(2024-03-10 06:00 UTC);
        let due = next_in_window(at, &chicago(), &window("02:30-05:00"));
        assert_eq!(due, Some(datetime!(2024-03-10 08:00 UTC)), "03:00 CDT");
    }

    #[test]
    fn fall_back_a_window_opens_at_the_first_local_occurrence_of_its_start() {
        // 2024-11-03 02:00 CDT → 01:00 CST. Midnight CDT is 05:00 UTC.
        let at = datetime!(2024-11-03 05:00 UTC);
        let w = window("01:30-03:00");
        assert_eq!(
            next_in_window(at, &chicago(), &w),
            Some(datetime!(2024-11-03 06:30 UTC)),
            "01:30 CDT"
        );
        // Inside during the first 01:30–02:00 (CDT) …
        let inside = datetime!(2024-11-03 06:45 UTC);
        assert_eq!(next_in_window(inside, &chicago(), &w), Some(inside));
        // … outside during the repeated 01:00–01:30 (CST), which reopens at 01:30 CST.
        assert_eq!(
            next_in_window(datetime!(2024-11-03 07:10 UTC), &chicago(), &w),
            Some(datetime!(2024-11-03 07:30 UTC))
        );
    }

    #[test]
    fn a_fall_back_jump_into_a_midnight_crossing_window_opens_it_at_the_transition() {
        // 01:45 CDT is outside 22:00-01:30; at 02:00 CDT the clock reads 01:00 CST: inside.
        let due = next_in_window(
            datetime!(2024-11-03 06:45 UTC),
            &chicago(),
            &window("22:00-01:30"),
        );
        assert_eq!(due, Some(datetime!(2024-11-03 07:00 UTC)));
    }

    #[test]
    fn a_window_wholly_inside_the_gap_opens_the_next_day() {
        let due = next_in_window(
            datetime!(2024-03-10 06:00 UTC),
            &chicago(),
            &window("02:00-02:30"),
        );
        assert_eq!(
            due,
            Some(datetime!(2024-03-11 07:00 UTC)),
            "02:00 CDT on the 11th"
        );
    }

    #[test]
    fn windows_crossing_midnight_wrap() {
        let w = window("20:00-06:00");
        let tz = chicago();
        // 2024-06-01 12:00 CDT = 17:00 UTC → 20:00 CDT = 01:00 UTC next day.
        assert_eq!(
            next_in_window(datetime!(2024-06-01 17:00 UTC), &tz, &w),
            Some(datetime!(2024-06-02 01:00 UTC))
        );
        for inside in [
            datetime!(2024-06-02 04:00 UTC),    // 23:00 CDT
            datetime!(2024-06-02 10:59:59 UTC), // 05:59:59 CDT
        ] {
            assert_eq!(next_in_window(inside, &tz, &w), Some(inside));
        }
        // 06:00 is the exclusive end: the window reopens at 20:00 that day.
        assert_eq!(
            next_in_window(datetime!(2024-06-02 11:00 UTC), &tz, &w),
            Some(datetime!(2024-06-03 01:00 UTC))
        );
    }

    #[test]
    fn any_is_now_and_utc_is_plain() {
        let at = datetime!(2024-06-01 03:17:12.5 UTC);
        assert_eq!(next_in_window(at, &chicago(), &CallWindow::Any), Some(at));
        assert_eq!(
            next_in_window(at, &TimeZone::utc(), &window("09:00-17:00")),
            Some(datetime!(2024-06-01 09:00 UTC))
        );
    }

    #[test]
    fn instants_are_truncated_to_whole_microseconds() {
        let at = datetime!(2024-06-01 12:00:00.000_000_999 UTC);
        assert_eq!(
            next_in_window(at, &TimeZone::utc(), &CallWindow::Any),
            Some(datetime!(2024-06-01 12:00:00 UTC))
        );
    }

    #[test]
    fn first_due_waits_for_every_not_before() {
        let now = datetime!(2024-06-01 12:00 UTC);
        let later = datetime!(2024-06-02 15:00 UTC);
        assert_eq!(
            first_due(
                now,
                &[None, Some(later)],
                &TimeZone::utc(),
                &CallWindow::Any
            ),
            Some(later)
        );
        assert_eq!(
            first_due(
                now,
                &[Some(datetime!(2024-01-01 0:00 UTC)), None],
                &TimeZone::utc(),
                &window("13:00-14:00")
            ),
            Some(datetime!(2024-06-01 13:00 UTC))
        );
    }

    fn rules(delays: Vec<u64>, expires_at: OffsetDateTime) -> DialRules {
        DialRules {
            time_zone: chicago(),
            window: window("08:00-20:00"),
            redial_delays: RedialDelays::new(delays).expect("delays"),
            expires_at,
        }
    }

    #[test]
    fn redials_follow_the_delays_then_stop_and_respect_window_and_expiry() {
        let failed = datetime!(2024-06-01 15:00 UTC); // 10:00 CDT
        let r = rules(vec![600, 36_000], datetime!(2024-06-02 15:00 UTC));
        assert_eq!(
            r.redial(1, failed),
            Some(Due::At(datetime!(2024-06-01 15:10 UTC)))
        );
        // 10:00 + 10 h = 20:00 CDT, the exclusive end: next morning 08:00 CDT.
        assert_eq!(
            r.redial(2, failed),
            Some(Due::At(datetime!(2024-06-02 13:00 UTC)))
        );
        assert_eq!(r.redial(3, failed), None, "no attempt remains");
        let short = rules(vec![36_000], datetime!(2024-06-02 13:00 UTC));
        assert_eq!(short.redial(1, failed), Some(Due::Expired), "due at expiry");
        assert_eq!(RedialDelays::new(vec![]).expect("none").max_attempts(), 1);
    }

    #[test]
    fn windows_parse_strictly() {
        assert_eq!(CallWindow::parse("any"), Ok(CallWindow::Any));
        assert_eq!(window("20:00-06:00").to_string(), "20:00-06:00");
        assert_eq!(window("00:00-23:59").to_string(), "00:00-23:59");
        assert_eq!(
            CallWindow::parse("20:00-20:00"),
            Err(InvalidCallWindow::Empty)
        );
        for bad in [
            "",
            "ANY",
            "any ",
            "24:00-01:00",
            "2:00-03:00",
            "20:00 - 06:00",
            "20:00",
            "20:60-21:00",
            "-1:00-02:00",
            "20:00-06:00-07:00",
            "ab:cd-01:00",
            "+1:00-02:00",
        ] {
            assert_eq!(
                CallWindow::parse(bad),
                Err(InvalidCallWindow::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn time_zones_are_iana_names_only() {
        assert_eq!(chicago().name(), "America/Chicago");
        assert_eq!(TimeZone::parse("UTC").expect("utc").name(), "UTC");
        // Stored in the database's spelling, so every instance reads the same name.
        assert_eq!(
            TimeZone::parse("america/chicago").expect("any case").name(),
            "America/Chicago"
        );
        for bad in [
            "",
            "Mars/Phobos",
            "+05:00",
            "EST5EDT,M3.2.0,M11.1.0",
            "America/Chicago\0",
        ] {
            assert!(TimeZone::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn delays_are_bounded() {
        assert!(RedialDelays::new(vec![0; 10]).is_ok());
        assert_eq!(
            RedialDelays::new(vec![0; 11]),
            Err(InvalidRedialDelays::TooMany(11))
        );
        assert!(RedialDelays::new(vec![604_800]).is_ok());
        assert_eq!(
            RedialDelays::new(vec![1, 604_801]),
            Err(InvalidRedialDelays::OutOfRange(604_801))
        );
    }

    const ZONES: &[&str] = &[
        "America/Chicago",
        "America/New_York",
        "America/Santiago",
        "Europe/London",
        "Europe/Berlin",
        "Australia/Sydney",
        "Australia/Lord_Howe",
        "Pacific/Chatham",
        "Asia/Kolkata",
        "UTC",
    ];

    /// Some window start/end (distinct minutes of the day), or any.
    fn any_window() -> impl Strategy<Value = CallWindow> {
        prop_oneof![
            1 => Just(CallWindow::Any),
            9 => (0u16..1440, 1u16..1440).prop_map(|(s, len)| {
                let e = (s + len) % 1440;
                let wt = |m: u16| WallTime::new((m / 60) as u8, (m % 60) as u8).expect("minute");
                CallWindow::Between { start: wt(s), end: wt(e) }
            }),
        ]
    }

    /// An instant near one of the zone's transitions (±6 h) in 2020–2030, or anywhere.
    fn instant_for(tz: TimeZone) -> impl Strategy<Value = OffsetDateTime> {
        let base = 1_577_836_800i64; // 2020-01-01
        let span = 10 * 365 * 86_400i64;
        (
            0..span,
            -21_600i64..21_600,
            0u32..1_000_000_000,
            any::<bool>(),
        )
            .prop_map(move |(offset, near, nanos, snap)| {
                let mut secs = base + offset;
                if snap {
                    let ts = jiff::Timestamp::from_second(secs).expect("ts");
                    if let Some(t) = tz.tz.following(ts).next() {
                        secs = t.timestamp().as_second() + near;
                    }
                }
                OffsetDateTime::from_unix_timestamp(secs).expect("instant")
                    + time::Duration::nanoseconds(i64::from(nanos))
            })
    }

    fn zone_instant_window() -> impl Strategy<Value = (TimeZone, OffsetDateTime, CallWindow)> {
        proptest::sample::select(ZONES).prop_flat_map(|name| {
            let tz = TimeZone::parse(name).expect("zone");
            (Just(tz.clone()), instant_for(tz), any_window())
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The answer is inside the window, not before `at`, and the earliest such instant:
        /// window edges and transitions fall on whole minutes, so checking `at` and every
        /// whole minute before the answer covers every place the window could open.
        #[test]
        fn the_due_time_is_the_earliest_instant_inside_the_window((tz, at, w) in zone_instant_window()) {
            let due = next_in_window(at, &tz, &w).expect("a due time");
            // The rule works in whole microseconds, PostgreSQL's precision.
            let at = floor_micros(at);
            prop_assert!(due >= at);
            prop_assert!(due - at < time::Duration::days(8), "{due} for {at}");
            prop_assert!(w.contains(tz.local(due).time()), "{due} local {}", tz.local(due));
            if due > at {
                prop_assert!(!w.contains(tz.local(at).time()));
                let mut minute = at.replace_second(0).expect("s").replace_nanosecond(0).expect("ns")
                    + time::Duration::MINUTE;
                while minute < due {
                    prop_assert!(!w.contains(tz.local(minute).time()), "{minute} is inside, before {due}");
                    minute += time::Duration::MINUTE;
                }
            }
        }

        /// Asking again from the answer gives the answer (a stored due time stays due).
        #[test]
        fn the_due_time_is_a_fixed_point((tz, at, w) in zone_instant_window()) {
            let due = next_in_window(at, &tz, &w).expect("a due time");
            prop_assert_eq!(next_in_window(due, &tz, &w), Some(due));
        }

        #[test]
        fn windows_round_trip_through_their_text(w in any_window()) {
            prop_assert_eq!(CallWindow::parse(&w.to_string()), Ok(w));
        }
    }
}
