//! `GET /batches` query parameters and cursors, built like `GET /calls`' (an opaque
//! URL-safe base64 of where the page ended and the page size).

use actix_web::web;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use calls_domain::models::{BatchId, BatchListQuery, BatchPosition, PageLimit};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::errors::ApiError;
use crate::routes::calls::listing::{bad_cursor, parse_limit};

/// Unknown names are refused, as on `GET /calls`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListBatchesParams {
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
    id: String,
    limit: u16,
}

/// # Errors
/// A 400 [`ApiError`] naming the first invalid parameter.
pub fn parse(query_string: &str) -> Result<BatchListQuery, ApiError> {
    let params = web::Query::<ListBatchesParams>::from_query(query_string)
        .map_err(|e| ApiError::bad_request("Invalid query string", e.to_string()))?
        .into_inner();
    let limit = params.limit.as_deref().map(parse_limit).transpose()?;
    // An empty `cursor=` is the first page, as on `GET /calls`.
    let Some(raw) = params.cursor.as_deref().filter(|c| !c.is_empty()) else {
        return Ok(BatchListQuery {
            limit: limit.unwrap_or_default(),
            after: None,
        });
    };
    let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad_cursor())?;
    let cursor: Cursor = serde_json::from_slice(&bytes).map_err(|_| bad_cursor())?;
    if cursor.v != CURSOR_VERSION {
        return Err(bad_cursor());
    }
    let batch_id = BatchId::parse(&cursor.id).map_err(|_| bad_cursor())?;
    let cursor_limit = PageLimit::new(i64::from(cursor.limit)).map_err(|_| bad_cursor())?;
    Ok(BatchListQuery {
        limit: limit.unwrap_or(cursor_limit),
        after: Some(BatchPosition {
            created_at: cursor.t,
            batch_id,
        }),
    })
}

/// The `next_cursor` of a page of `query` whose last batch is at `next`.
pub fn cursor_after(query: &BatchListQuery, next: BatchPosition) -> String {
    let cursor = Cursor {
        v: CURSOR_VERSION,
        t: next.created_at,
        id: next.batch_id.to_string(),
        limit: query.limit.get(),
    };
    // Serializing plain fields to JSON cannot fail; an empty cursor would only be refused.
    let json = serde_json::to_vec(&cursor).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_keeps_its_page_size() {
        let query = parse("limit=7").expect("valid");
        let at = BatchPosition {
            created_at: time::macros::datetime!(2024-11-21 10:00:00.123456 UTC),
            batch_id: BatchId::generate(),
        };
        let cursor = cursor_after(&query, at);
        let next = parse(&format!("cursor={cursor}")).expect("valid");
        assert_eq!(next.after, Some(at));
        assert_eq!(next.limit.get(), 7);
        assert_eq!(
            parse(&format!("cursor={cursor}&limit=3"))
                .expect("valid")
                .limit
                .get(),
            3
        );
    }

    #[test]
    fn bad_parameters_are_refused() {
        for bad in [
            "limit=0",
            "limit=501",
            "limit=x",
            "cursor=abc",
            "status=done",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse("").expect("valid").limit, PageLimit::default());
        assert_eq!(parse("cursor=").expect("first page").after, None);
    }
}
