//! Listing Calls newest first, one page at a time. Pages are cut by position (keyset), not
//! by offset, so Calls written while a client walks the pages neither repeat nor shift
//! the pages that follow.

use time::OffsetDateTime;

use super::{Call, CallStatus};

/// How many Calls a page holds: 1..=500, 50 unless asked otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PageLimit(u16);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("limit must be between {min} and {max}, got {0}", min = PageLimit::MIN, max = PageLimit::MAX)]
pub struct InvalidPageLimit(pub i64);

impl PageLimit {
    pub const MIN: u16 = 1;
    pub const MAX: u16 = 500;
    pub const DEFAULT: Self = Self(50);

    pub fn new(value: i64) -> Result<Self, InvalidPageLimit> {
        u16::try_from(value)
            .ok()
            .filter(|v| (Self::MIN..=Self::MAX).contains(v))
            .map(Self)
            .ok_or(InvalidPageLimit(value))
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

impl Default for PageLimit {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A place in the listing order (`call_start_time` DESC, then `id` DESC). `id` breaks ties
/// between Calls that started in the same microsecond, so every Call has exactly one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CallPosition {
    pub call_start_time: OffsetDateTime,
    pub id: i64,
}

impl CallPosition {
    pub fn of(call: &Call) -> Self {
        Self {
            call_start_time: call.call_start_time,
            id: call.id,
        }
    }
}

/// `since` is not before `until`: the range holds no instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("since ({since}) must be earlier than until ({until})")]
pub struct EmptyTimeRange {
    pub since: OffsetDateTime,
    pub until: OffsetDateTime,
}

/// Which Calls to list; every part is optional and they combine with AND.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CallFilter {
    status: Option<CallStatus>,
    driver_id: Option<i64>,
    since: Option<OffsetDateTime>,
    until: Option<OffsetDateTime>,
}

impl CallFilter {
    /// `since` is inclusive and `until` exclusive, both on `call_start_time`.
    ///
    /// # Errors
    /// [`EmptyTimeRange`] when both bounds are given and `since >= until`.
    pub fn new(
        status: Option<CallStatus>,
        driver_id: Option<i64>,
        since: Option<OffsetDateTime>,
        until: Option<OffsetDateTime>,
    ) -> Result<Self, EmptyTimeRange> {
        if let (Some(since), Some(until)) = (since, until) {
            if since >= until {
                return Err(EmptyTimeRange { since, until });
            }
        }
        Ok(Self {
            status,
            driver_id,
            since,
            until,
        })
    }

    pub fn status(&self) -> Option<CallStatus> {
        self.status
    }

    pub fn driver_id(&self) -> Option<i64> {
        self.driver_id
    }

    pub fn since(&self) -> Option<OffsetDateTime> {
        self.since
    }

    pub fn until(&self) -> Option<OffsetDateTime> {
        self.until
    }

    /// Whether a Call passes the filter (what the repository's WHERE clause computes).
    pub fn matches(&self, call: &Call) -> bool {
        self.status.is_none_or(|s| s == call.status)
            && self.driver_id.is_none_or(|d| call.driver_id == Some(d))
            && self.since.is_none_or(|t| call.call_start_time >= t)
            && self.until.is_none_or(|t| call.call_start_time < t)
    }
}

/// One page request: the filter, the page size, and where the previous page ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallListQuery {
    pub filter: CallFilter,
    pub limit: PageLimit,
    /// `None` for the first page; otherwise only Calls strictly after this position.
    pub after: Option<CallPosition>,
}

/// One page of Calls, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallPage {
    pub calls: Vec<Call>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<CallPosition>,
}

impl CallPage {
    /// Builds a page from up to `limit + 1` Calls in listing order: the extra one only
    /// tells that another page exists, so the last page never links to an empty one.
    pub fn from_lookahead(mut calls: Vec<Call>, limit: PageLimit) -> Self {
        let limit = usize::from(limit.get());
        let more = calls.len() > limit;
        calls.truncate(limit);
        let next = if more {
            calls.last().map(CallPosition::of)
        } else {
            None
        };
        Self { calls, next }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::CallSid;
    use time::macros::datetime;

    fn call(id: i64, start: OffsetDateTime) -> Call {
        Call {
            id,
            call_sid: CallSid::parse(format!("EL_{id}")).expect("sid"),
            conversation_id: None,
            driver_id: Some(7),
            call_start_time: start,
            call_end_time: None,
            status: CallStatus::Completed,
            failure_reason: None,
            outcome: None,
            created_at: start,
            updated_at: start,
        }
    }

    #[test]
    fn limit_accepts_one_to_five_hundred_only() {
        assert_eq!(PageLimit::new(1).map(PageLimit::get), Ok(1));
        assert_eq!(PageLimit::new(500).map(PageLimit::get), Ok(500));
        for bad in [0, 501, -1, i64::from(u16::MAX) + 1, i64::MIN] {
            assert_eq!(PageLimit::new(bad), Err(InvalidPageLimit(bad)), "{bad}");
        }
        assert_eq!(PageLimit::default().get(), 50);
    }

    #[test]
    fn an_empty_or_inverted_time_range_is_refused() {
        let t = datetime!(2024-11-21 10:00 UTC);
        assert!(CallFilter::new(None, None, Some(t), Some(t)).is_err());
        assert!(CallFilter::new(None, None, Some(t + time::Duration::SECOND), Some(t)).is_err());
        assert!(
            CallFilter::new(None, None, Some(t), Some(t + time::Duration::MICROSECOND)).is_ok()
        );
        assert!(CallFilter::new(None, None, Some(t), None).is_ok());
    }

    #[test]
    fn since_is_inclusive_and_until_exclusive() {
        let t = datetime!(2024-11-21 10:00 UTC);
        let filter =
            CallFilter::new(None, None, Some(t), Some(t + time::Duration::HOUR)).expect("range");
        assert!(filter.matches(&call(1, t)));
        assert!(!filter.matches(&call(2, t + time::Duration::HOUR)));
        assert!(!filter.matches(&call(3, t - time::Duration::MICROSECOND)));
    }

    #[test]
    fn a_lookahead_row_means_another_page_starting_after_the_last_kept_call() {
        let t = datetime!(2024-11-21 10:00 UTC);
        let limit = PageLimit::new(2).expect("limit");

        let full = CallPage::from_lookahead(vec![call(3, t), call(2, t), call(1, t)], limit);
        let last = CallPage::from_lookahead(vec![call(3, t), call(2, t)], limit);

        assert_eq!(full.calls.len(), 2);
        assert_eq!(
            full.next,
            Some(CallPosition {
                call_start_time: t,
                id: 2
            })
        );
        assert_eq!(last.calls.len(), 2);
        assert_eq!(last.next, None);
        assert_eq!(CallPage::from_lookahead(Vec::new(), limit).next, None);
    }
}
