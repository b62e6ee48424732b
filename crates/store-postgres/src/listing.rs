//! `GET /calls`: one page of Calls, newest first, by keyset. The indexes that serve it
//! (migration 0009) and their plans are in docs/database.md.

use calls_domain::models::{CallListQuery, CallPage, CallStatus};
use diesel::dsl::{AsSelect, SqlTypeOf, sql};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::errors::DbError;
use crate::models::CallRow;
use crate::schema::calls;

pub(crate) async fn list_calls(
    conn: &mut AsyncPgConnection,
    query: &CallListQuery,
) -> Result<CallPage, DbError> {
    let rows: Vec<CallRow> = statement(query).load(conn).await?;
    let calls = rows
        .into_iter()
        .map(|row| calls_domain::Call::try_from(row).map_err(DbError::from))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CallPage::from_lookahead(calls, query.limit))
}

/// The SQL literal of a status: fixed strings, nothing from the request.
fn status_literal(status: CallStatus) -> &'static str {
    match status {
        CallStatus::InProgress => "'in_progress'",
        CallStatus::Completed => "'completed'",
        CallStatus::Failed => "'failed'",
    }
}

type Statement<'a> = calls::BoxedQuery<'a, Pg, SqlTypeOf<AsSelect<CallRow, Pg>>>;

/// The SELECT for one page: filters, keyset condition, order, and one row of lookahead.
fn statement(query: &CallListQuery) -> Statement<'static> {
    let filter = &query.filter;
    let mut select = calls::table.select(CallRow::as_select()).into_boxed();
    if let Some(status) = filter.status() {
        // A literal, not a bind parameter: the statuses differ wildly in frequency (a few
        // in_progress, mostly completed), and with `status = $1` PostgreSQL may switch a
        // cached statement to a generic plan that filters the time index instead of using
        // idx_calls_status_start_id (docs/database.md).
        select = select.filter(calls::status.eq(sql::<Text>(status_literal(status))));
    }
    if let Some(driver_id) = filter.driver_id() {
        select = select.filter(calls::driver_id.eq(driver_id));
    }
    if let Some(since) = filter.since() {
        select = select.filter(calls::call_start_time.ge(since));
    }
    if let Some(until) = filter.until() {
        select = select.filter(calls::call_start_time.lt(until));
    }
    if let Some(after) = query.after {
        // A row comparison, so PostgreSQL turns it into one index condition on
        // (call_start_time, id); the equivalent OR of two comparisons it would only filter.
        select = select.filter(
            sql::<Bool>("(call_start_time, id) < (")
                .bind::<Timestamptz, _>(after.call_start_time)
                .sql(", ")
                .bind::<BigInt, _>(after.id)
                .sql(")"),
        );
    }
    // One row more than the page: it tells whether a next page exists.
    select
        .order((calls::call_start_time.desc(), calls::id.desc()))
        .limit(i64::from(query.limit.get()) + 1)
}

#[cfg(test)]
mod tests {
    use calls_domain::models::{CallFilter, CallPosition, PageLimit};
    use time::macros::datetime;

    use super::*;

    fn sql_of(query: &CallListQuery) -> String {
        diesel::debug_query::<Pg, _>(&statement(query)).to_string()
    }

    #[test]
    fn the_first_page_has_no_condition_and_reads_one_row_ahead() {
        let sql = sql_of(&CallListQuery::default());
        assert!(!sql.contains("WHERE"), "{sql}");
        assert!(
            sql.contains(r#"ORDER BY "calls"."call_start_time" DESC, "calls"."id" DESC LIMIT $1"#),
            "{sql}"
        );
        assert!(sql.ends_with("binds: [51]"), "{sql}");
    }

    #[test]
    fn the_status_is_a_literal_and_every_other_value_a_bound_parameter() {
        let t = datetime!(2025-01-01 00:00 UTC);
        let query = CallListQuery {
            filter: CallFilter::new(
                Some(CallStatus::Failed),
                Some(42),
                Some(t),
                Some(t + time::Duration::DAY),
            )
            .expect("filter"),
            limit: PageLimit::new(10).expect("limit"),
            after: Some(CallPosition {
                call_start_time: t + time::Duration::HOUR,
                id: 99,
            }),
        };

        let sql = sql_of(&query);

        assert!(sql.contains(r#""calls"."status" = 'failed'"#), "{sql}");
        assert!(sql.contains(r#""calls"."driver_id" = $1"#), "{sql}");
        assert!(sql.contains(r#""calls"."call_start_time" >= $2"#), "{sql}");
        assert!(sql.contains(r#""calls"."call_start_time" < $3"#), "{sql}");
        assert!(sql.contains("(call_start_time, id) < ($4, $5)"), "{sql}");
        assert!(sql.contains("LIMIT $6"), "{sql}");
    }
}
