//! `GET /calls` query parameters and cursors.
//!
//! The cursor is URL-safe base64 (no padding) of a small JSON object: where the page ended
//! (`call_start_time`, `id`) plus the filters and the page size it was issued for. So a
//! client may send the cursor alone; filters it repeats must equal the cursor's (else 400,
//! since a position means nothing in another listing); `limit` may change between pages.
//! It is opaque, not secret: decoding it reveals nothing the caller could not list anyway.

use actix_web::web;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use calls_domain::CallStatus;
use calls_domain::models::{CallFilter, CallListQuery, CallPosition, PageLimit, parse_timestamp};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::{Iso8601, Rfc3339};
use time::{Date, OffsetDateTime};

use crate::errors::ApiError;

/// The query string as sent; every value is parsed by hand below so each bad one gets its
/// own 400. Unknown names are refused: a misspelt filter (`driverId`) would otherwise
/// silently list every Call.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListCallsParams {
    /// Only Calls with this status: `in_progress`, `completed` or `failed`.
    #[param(value_type = Option<String>, example = "in_progress")]
    pub status: Option<String>,
    /// Only this driver's Calls (an integer).
    #[param(value_type = Option<i64>, example = 333)]
    pub driver_id: Option<String>,
    /// Only Calls with `call_start_time` at or after this instant (ISO 8601 / RFC 3339;
    /// without an offset it is UTC; a date alone is its midnight UTC).
    #[param(value_type = Option<String>, example = "2024-11-21T00:00:00Z")]
    pub since: Option<String>,
    /// Only Calls with `call_start_time` before this instant (exclusive; formats as `since`).
    #[param(value_type = Option<String>, example = "2024-11-22T00:00:00Z")]
    pub until: Option<String>,
    /// Page size, 1 to 500 (default 50, or the cursor's).
    #[param(value_type = Option<u16>, minimum = 1, maximum = 500, example = 50)]
    pub limit: Option<String>,
    /// The previous page's `next_cursor`, unchanged.
    #[param(value_type = Option<String>)]
    pub cursor: Option<String>,
}

/// Bumped when the cursor's JSON changes; older cursors are then refused with a 400.
const CURSOR_VERSION: u8 = 1;

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Cursor {
    v: u8,
    #[serde(with = "time::serde::rfc3339")]
    t: OffsetDateTime,
    id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    driver_id: Option<i64>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    since: Option<OffsetDateTime>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    until: Option<OffsetDateTime>,
    limit: u16,
}

fn invalid(name: &str, details: impl Into<String>) -> ApiError {
    ApiError::bad_request(format!("Invalid query parameter: {name}"), details)
}

/// Parses the query string of `GET /calls` into one page request.
///
/// # Errors
/// A 400 [`ApiError`] naming the first invalid parameter.
pub fn parse(query_string: &str) -> Result<CallListQuery, ApiError> {
    let params = web::Query::<ListCallsParams>::from_query(query_string)
        .map_err(|e| ApiError::bad_request("Invalid query string", e.to_string()))?
        .into_inner();

    let status = params.status.as_deref().map(parse_status).transpose()?;
    let driver_id = params
        .driver_id
        .as_deref()
        .map(parse_driver_id)
        .transpose()?;
    let since = params
        .since
        .as_deref()
        .map(|v| parse_instant("since", v))
        .transpose()?;
    let until = params
        .until
        .as_deref()
        .map(|v| parse_instant("until", v))
        .transpose()?;
    let limit = params.limit.as_deref().map(parse_limit).transpose()?;
    let cursor = params
        .cursor
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(decode_cursor)
        .transpose()?;

    let (status, driver_id, since, until, limit, after) = match cursor {
        None => (status, driver_id, since, until, limit, None),
        Some(c) => {
            let cursor_status = match c.status.as_deref() {
                Some(raw) => Some(raw.parse::<CallStatus>().map_err(|_| bad_cursor())?),
                None => None,
            };
            let status = same_as_cursor("status", status, cursor_status)?;
            let driver_id = same_as_cursor("driver_id", driver_id, c.driver_id)?;
            let since = same_as_cursor("since", since, c.since)?;
            let until = same_as_cursor("until", until, c.until)?;
            let cursor_limit = PageLimit::new(i64::from(c.limit)).map_err(|_| bad_cursor())?;
            let after = CallPosition {
                call_start_time: c.t,
                id: c.id,
            };
            (
                status,
                driver_id,
                since,
                until,
                Some(limit.unwrap_or(cursor_limit)),
                Some(after),
            )
        }
    };
    let filter = CallFilter::new(status, driver_id, since, until).map_err(|e| {
        let show = |t: OffsetDateTime| t.format(&Rfc3339).unwrap_or_else(|_| t.to_string());
        ApiError::bad_request(
            "Invalid query parameters: since, until",
            format!(
                "since ({}) must be earlier than until ({})",
                show(e.since),
                show(e.until)
            ),
        )
    })?;
    Ok(CallListQuery {
        filter,
        limit: limit.unwrap_or_default(),
        after,
    })
}

/// The `next_cursor` of a page of `query` whose last Call is at `next`.
pub fn cursor_after(query: &CallListQuery, next: CallPosition) -> String {
    let cursor = Cursor {
        v: CURSOR_VERSION,
        t: next.call_start_time,
        id: next.id,
        status: query.filter.status().map(|s| s.as_str().to_owned()),
        driver_id: query.filter.driver_id(),
        since: query.filter.since(),
        until: query.filter.until(),
        limit: query.limit.get(),
    };
    // Serializing plain fields to JSON cannot fail; an empty cursor would only be refused.
    let json = serde_json::to_vec(&cursor).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

fn parse_status(raw: &str) -> Result<CallStatus, ApiError> {
    raw.parse().map_err(|_| {
        invalid(
            "status",
            format!("status must be one of in_progress, completed, failed; got {raw:?}"),
        )
    })
}

fn parse_driver_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse().map_err(|_| {
        invalid(
            "driver_id",
            format!("driver_id must be an integer; got {raw:?}"),
        )
    })
}

pub(crate) fn parse_limit(raw: &str) -> Result<PageLimit, ApiError> {
    let details = || {
        format!(
            "limit must be an integer from {} to {}; got {raw:?}",
            PageLimit::MIN,
            PageLimit::MAX
        )
    };
    let n: i64 = raw.parse().map_err(|_| invalid("limit", details()))?;
    PageLimit::new(n).map_err(|_| invalid("limit", details()))
}

/// ISO 8601 date-time (what transcript timestamps accept), or a date alone (midnight UTC).
fn parse_instant(name: &str, raw: &str) -> Result<OffsetDateTime, ApiError> {
    let parsed = parse_timestamp(raw)
        // A `+` of an offset that was not percent-encoded arrives as a space.
        .or_else(|| {
            let (date, rest) = raw.split_at_checked(11)?;
            rest.contains(' ')
                .then(|| parse_timestamp(&format!("{date}{}", rest.replace(' ', "+"))))?
        })
        .or_else(|| {
            Date::parse(raw, &Iso8601::DATE)
                .ok()
                .map(|d| d.midnight().assume_utc())
        });
    parsed.ok_or_else(|| {
        invalid(
            name,
            format!(
                "{name} must be an ISO 8601 date-time such as 2024-11-21T10:00:00Z (encode + as %2B) or a date; got {raw:?}"
            ),
        )
    })
}

pub(crate) fn bad_cursor() -> ApiError {
    invalid(
        "cursor",
        "cursor is not a next_cursor this service issued; pass next_cursor unchanged, or omit cursor for the first page",
    )
}

fn decode_cursor(raw: &str) -> Result<Cursor, ApiError> {
    let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad_cursor())?;
    let cursor: Cursor = serde_json::from_slice(&bytes).map_err(|_| bad_cursor())?;
    if cursor.v != CURSOR_VERSION {
        return Err(bad_cursor());
    }
    Ok(cursor)
}

/// A filter repeated next to a cursor must be the cursor's: a position in one listing is
/// meaningless in another.
fn same_as_cursor<T: PartialEq + std::fmt::Debug>(
    name: &str,
    given: Option<T>,
    in_cursor: Option<T>,
) -> Result<Option<T>, ApiError> {
    match given {
        Some(given) if Some(&given) != in_cursor.as_ref() => Err(ApiError::bad_request(
            format!("Invalid query parameter: {name}"),
            format!(
                "{name} differs from the listing the cursor belongs to; repeat the first page's filters or send the cursor alone"
            ),
        )),
        _ => Ok(in_cursor),
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn parsed(q: &str) -> CallListQuery {
        parse(q).unwrap_or_else(|e| panic!("{q}: {e}"))
    }

    fn refused(q: &str) -> String {
        match parse(q) {
            Ok(query) => panic!("{q} was accepted: {query:?}"),
            Err(e) => {
                assert_eq!(e.status().as_u16(), 400, "{q}");
                e.message().to_owned()
            }
        }
    }

    #[test]
    fn no_parameters_is_the_first_page_of_everything_by_fifty() {
        let q = parsed("");
        assert_eq!(q, CallListQuery::default());
        assert_eq!(q.limit.get(), 50);
    }

    #[test]
    fn every_parameter_is_parsed_into_the_domain_query() {
        let q = parsed(
            "status=failed&driver_id=333&since=2024-11-21T10:00:00Z&until=2024-11-21T12:00:00%2B01:00&limit=500",
        );
        assert_eq!(q.filter.status(), Some(CallStatus::Failed));
        assert_eq!(q.filter.driver_id(), Some(333));
        assert_eq!(q.filter.since(), Some(datetime!(2024-11-21 10:00 UTC)));
        assert_eq!(q.filter.until(), Some(datetime!(2024-11-21 11:00 UTC)));
        assert_eq!(q.limit.get(), 500);
        assert_eq!(q.after, None);
    }

    #[test]
    fn instants_may_be_dates_naive_or_carry_an_unencoded_plus() {
        let at = |raw: &str| parsed(&format!("since={raw}")).filter.since();
        assert_eq!(at("2024-11-21"), Some(datetime!(2024-11-21 0:00 UTC)));
        assert_eq!(
            at("2024-11-21T10:00:00"),
            Some(datetime!(2024-11-21 10:00 UTC))
        );
        assert_eq!(
            at("2024-11-21T12:00:00+02:00"),
            Some(datetime!(2024-11-21 10:00 UTC))
        );
        assert_eq!(
            at("2024-11-21T05:00:00-05:00"),
            Some(datetime!(2024-11-21 10:00 UTC))
        );
        assert_eq!(
            at("2024-11-21T10:00:00.5Z"),
            Some(datetime!(2024-11-21 10:00:00.5 UTC))
        );
    }

    #[test]
    fn each_invalid_value_is_a_400_naming_its_parameter() {
        for (q, name) in [
            ("status=done", "status"),
            ("status=IN_PROGRESS", "status"),
            ("status=", "status"),
            ("driver_id=abc", "driver_id"),
            ("driver_id=1.5", "driver_id"),
            ("driver_id=99999999999999999999", "driver_id"),
            ("since=yesterday", "since"),
            ("since=2024-13-01", "since"),
            ("until=2024-11-21T25:00:00Z", "until"),
            ("limit=0", "limit"),
            ("limit=501", "limit"),
            ("limit=-1", "limit"),
            ("limit=ten", "limit"),
            ("limit=", "limit"),
            ("cursor=garbage!", "cursor"),
            ("cursor=eyJ2IjoxfQ", "cursor"),
        ] {
            let message = refused(q);
            assert!(message.ends_with(name), "{q}: {message}");
        }
        assert!(refused("since=2024-11-22&until=2024-11-21").contains("since, until"));
        assert!(refused("since=2024-11-21&until=2024-11-21").contains("since, until"));
        assert_eq!(refused("driverId=3"), "Invalid query string");
        assert_eq!(
            refused("status=failed&status=completed"),
            "Invalid query string"
        );
    }

    #[test]
    fn a_cursor_carries_the_position_the_filters_and_the_limit() {
        let first = parsed("status=completed&driver_id=7&since=2024-11-01&limit=3");
        let at = CallPosition {
            call_start_time: datetime!(2024-11-21 10:00:00.123456 UTC),
            id: 42,
        };
        let cursor = cursor_after(&first, at);

        let alone = parsed(&format!("cursor={cursor}"));
        let repeated = parsed(&format!(
            "status=completed&driver_id=7&since=2024-11-01T00:00:00Z&limit=3&cursor={cursor}"
        ));
        let other_limit = parsed(&format!("limit=10&cursor={cursor}"));

        assert!(
            cursor
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "URL-safe as it is: {cursor}"
        );
        assert_eq!(alone.after, Some(at));
        assert_eq!(alone.filter, first.filter);
        assert_eq!(alone.limit.get(), 3);
        assert_eq!(repeated, alone);
        assert_eq!(other_limit.limit.get(), 10);
        assert_eq!(other_limit.filter, first.filter);
    }

    #[test]
    fn a_filter_that_differs_from_the_cursors_is_refused() {
        let first = parsed("status=completed");
        let cursor = cursor_after(
            &first,
            CallPosition {
                call_start_time: datetime!(2024-11-21 10:00 UTC),
                id: 1,
            },
        );
        assert!(refused(&format!("status=failed&cursor={cursor}")).ends_with("status"));
        assert!(refused(&format!("driver_id=1&cursor={cursor}")).ends_with("driver_id"));
        assert!(refused(&format!("until=2025-01-01&cursor={cursor}")).ends_with("until"));
    }

    #[test]
    fn a_tampered_cursor_is_refused() {
        let encode = |json: &str| URL_SAFE_NO_PAD.encode(json);
        for json in [
            r#"{"v":2,"t":"2024-11-21T10:00:00Z","id":1,"limit":50}"#,
            r#"{"v":1,"t":"2024-11-21T10:00:00Z","id":1,"limit":0}"#,
            r#"{"v":1,"t":"2024-11-21T10:00:00Z","id":1,"limit":50,"status":"lost"}"#,
            r#"{"v":1,"t":"not a time","id":1,"limit":50}"#,
            r#"{"v":1,"t":"2024-11-21T10:00:00Z","id":"1","limit":50}"#,
            r#"{"v":1,"t":"2024-11-21T10:00:00Z","id":1,"limit":50,"extra":true}"#,
            r#"[1,2,3]"#,
        ] {
            let message = refused(&format!("cursor={}", encode(json)));
            assert!(message.ends_with("cursor"), "{json}: {message}");
        }
        let valid = encode(r#"{"v":1,"t":"2024-11-21T10:00:00Z","id":1,"limit":50}"#);
        assert_eq!(
            parsed(&format!("cursor={valid}")).after.map(|a| a.id),
            Some(1)
        );
    }
}
