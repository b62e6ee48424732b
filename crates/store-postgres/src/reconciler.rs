//! The stale-call reconciler's queries: the stale Calls, and the lock that lets one
//! instance at a time reconcile them.
//!
//! The lock is PostgreSQL's session-level advisory lock, keyed by the schema like the
//! migrate and backfill locks (`hashtext('calls-reconcile:' || schema)`), so deployments
//! that share a database but not a schema do not block each other. It is held on a
//! connection taken out of the pool for good: the pool never hands it to a request, and
//! if the process dies the connection closes and PostgreSQL releases the lock.

use async_trait::async_trait;
use calls_domain::LeaseGuard;
use diesel::prelude::*;
use diesel::sql_types::{Bool, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use time::OffsetDateTime;

use crate::errors::DbError;
use crate::models::CallRow;
use crate::pool::SchemaName;
use crate::schema::calls;

const TRY_LOCK_SQL: &str =
    "SELECT pg_try_advisory_lock(hashtext('calls-reconcile:' || $1)) AS locked";
const UNLOCK_SQL: &str = "SELECT pg_advisory_unlock(hashtext('calls-reconcile:' || $1)) AS locked";

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

/// `in_progress` Calls started before `cutoff`, oldest first.
pub(crate) async fn stale_calls(
    conn: &mut AsyncPgConnection,
    cutoff: OffsetDateTime,
    limit: i64,
) -> Result<Vec<CallRow>, DbError> {
    Ok(calls::table
        // A literal, not a bind parameter: a generic plan for `status = $1` cannot know
        // that in_progress Calls are few and may scan the whole table (docs/database.md).
        .filter(diesel::dsl::sql::<Bool>("status = 'in_progress'"))
        .filter(calls::call_start_time.lt(cutoff))
        .order((calls::call_start_time.asc(), calls::id.asc()))
        .limit(limit)
        .select(CallRow::as_select())
        .load(conn)
        .await?)
}

/// Takes the lock on `conn` without waiting; `true` when this session now holds it.
pub(crate) async fn try_lock(
    conn: &mut AsyncPgConnection,
    schema: &SchemaName,
) -> Result<bool, DbError> {
    let row: Locked = diesel::sql_query(TRY_LOCK_SQL)
        .bind::<Text, _>(schema.as_str())
        .get_result(conn)
        .await?;
    Ok(row.locked)
}

/// Holds the lock through its own connection, outside the pool.
pub(crate) struct PgReconcilerLease {
    pub(crate) conn: AsyncPgConnection,
    pub(crate) schema: SchemaName,
}

#[async_trait]
impl LeaseGuard for PgReconcilerLease {
    async fn release(self: Box<Self>) {
        let Self { mut conn, schema } = *self;
        // Unlocking at once lets the next pass (here or elsewhere) start right away;
        // should it fail, closing the connection below releases the lock all the same.
        let unlocked = diesel::sql_query(UNLOCK_SQL)
            .bind::<Text, _>(schema.as_str())
            .get_result::<Locked>(&mut conn)
            .await;
        if let Err(e) = unlocked {
            tracing::warn!(error = %e, "could not release the reconciler lock; closing its connection");
        }
        drop(conn);
    }
}
