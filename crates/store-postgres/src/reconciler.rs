//! The stale-call reconciler's queries: the stale Calls due for a check, their deferral,
//! and the lease that lets one instance at a time reconcile them.
//!
//! The lease is a row of `leases` with an expiry (migration 0014), not a session advisory
//! lock: a session lock stays on whatever server connection a transaction-pooling PgBouncer
//! handed out, after its holder is gone. The holder renews the row while it works and
//! deletes it when done; a holder that dies stops renewing and the row expires after
//! [`LEASE_TTL`]. Each schema has its own `leases` table, so deployments that share a
//! database but not a schema do not block each other.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use calls_domain::LeaseGuard;
use diesel::sql_types::{BigInt, Double, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use time::OffsetDateTime;

use crate::errors::DbError;
use crate::models::CallRow;
use crate::pool::DbPool;

/// Name of the reconciler's row in `leases`.
const LEASE_NAME: &str = "reconcile-stale-calls";
/// How long a lease lasts without renewal: how long a dead holder blocks the others.
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(60);
/// How often a live holder renews it.
const LEASE_RENEW_EVERY: Duration = Duration::from_secs(20);

/// `in_progress` Calls started before `cutoff` whose check is due: never checked first, then
/// by when their check became due, then oldest first.
pub(crate) async fn stale_calls(
    conn: &mut AsyncPgConnection,
    cutoff: OffsetDateTime,
    limit: i64,
) -> Result<Vec<CallRow>, DbError> {
    // `status = 'in_progress'` as a literal: a generic plan for `status = $1` cannot know
    // that in_progress Calls are few and may scan the whole table (docs/database.md).
    Ok(diesel::sql_query(
        "SELECT calls.* FROM calls \
         LEFT JOIN call_reconcile_checks k ON k.call_id = calls.id \
         WHERE calls.status = 'in_progress' AND calls.call_start_time < $1 \
           AND (k.next_check_at IS NULL OR k.next_check_at <= now()) \
         ORDER BY k.next_check_at ASC NULLS FIRST, calls.call_start_time, calls.id \
         LIMIT $2",
    )
    .bind::<Timestamptz, _>(cutoff)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await?)
}

/// The Call was asked about and is still unfinished: not due again before `next_check_at`.
pub(crate) async fn defer(
    conn: &mut AsyncPgConnection,
    call_sid: &str,
    next_check_at: OffsetDateTime,
) -> Result<(), DbError> {
    diesel::sql_query(
        "INSERT INTO call_reconcile_checks (call_id, checks, last_checked_at, next_check_at) \
         SELECT id, 1, now(), $2 FROM calls WHERE call_sid = $1 \
         ON CONFLICT (call_id) DO UPDATE SET checks = call_reconcile_checks.checks + 1, \
           last_checked_at = now(), next_check_at = EXCLUDED.next_check_at",
    )
    .bind::<Text, _>(call_sid)
    .bind::<Timestamptz, _>(next_check_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// A holder id unique among instances: process, start time and a counter.
fn new_holder() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        uuid::Uuid::now_v7(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Takes the lease when nobody holds it or its holder's expired; `Some(holder)` when taken.
pub(crate) async fn try_take(conn: &mut AsyncPgConnection) -> Result<Option<String>, DbError> {
    let holder = new_holder();
    let taken = diesel::sql_query(
        "INSERT INTO leases (name, holder, expires_at) \
         VALUES ($1, $2, now() + make_interval(secs => $3)) \
         ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at \
         WHERE leases.expires_at < now()",
    )
    .bind::<Text, _>(LEASE_NAME)
    .bind::<Text, _>(&holder)
    .bind::<Double, _>(LEASE_TTL.as_secs_f64())
    .execute(conn)
    .await?;
    Ok((taken == 1).then_some(holder))
}

async fn renew(conn: &mut AsyncPgConnection, holder: &str) -> Result<usize, DbError> {
    Ok(diesel::sql_query(
        "UPDATE leases SET expires_at = now() + make_interval(secs => $3) \
         WHERE name = $1 AND holder = $2",
    )
    .bind::<Text, _>(LEASE_NAME)
    .bind::<Text, _>(holder)
    .bind::<Double, _>(LEASE_TTL.as_secs_f64())
    .execute(conn)
    .await?)
}

async fn give_back(pool: &DbPool, holder: &str) -> Result<(), DbError> {
    let mut conn = pool.inner.get().await?;
    diesel::sql_query("DELETE FROM leases WHERE name = $1 AND holder = $2")
        .bind::<Text, _>(LEASE_NAME)
        .bind::<Text, _>(holder)
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// The lease while held: renewed in the background, deleted on release (or, dropped
/// without release, as soon as the runtime can).
pub(crate) struct PgReconcilerLease {
    pool: DbPool,
    holder: String,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

impl PgReconcilerLease {
    pub(crate) fn new(pool: DbPool, holder: String) -> Self {
        let renewer = {
            let pool = pool.clone();
            let holder = holder.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(LEASE_RENEW_EVERY).await;
                    let renewed = match pool.inner.get().await {
                        Ok(mut conn) => renew(&mut conn, &holder).await,
                        Err(e) => Err(e.into()),
                    };
                    match renewed {
                        Ok(1) => {}
                        Ok(_) => {
                            tracing::warn!("the reconciler lease was lost (expired and taken)");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "could not renew the reconciler lease")
                        }
                    }
                }
            })
        };
        Self {
            pool,
            holder,
            renewer: Some(renewer),
        }
    }
}

#[async_trait]
impl LeaseGuard for PgReconcilerLease {
    async fn release(mut self: Box<Self>) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
        // Deleting at once lets the next pass (here or elsewhere) start right away; should
        // it fail, the row expires after LEASE_TTL all the same.
        if let Err(e) = give_back(&self.pool, &self.holder).await {
            tracing::warn!(error = %e, "could not release the reconciler lease; it expires on its own");
        }
        self.holder.clear();
    }
}

impl Drop for PgReconcilerLease {
    fn drop(&mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
        // Dropped without release (a pass cut short): give it back in the background.
        if !self.holder.is_empty() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let pool = self.pool.clone();
                let holder = std::mem::take(&mut self.holder);
                runtime.spawn(async move {
                    let _ = give_back(&pool, &holder).await;
                });
            }
        }
    }
}
