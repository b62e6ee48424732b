//! Batched call_sid backfill for large legacy tables, safe to run while the (legacy)
//! service writes: short transactions of `batch_size` rows in id order, resumable (it only
//! fills NULLs), one runner at a time (advisory lock). It yields exactly what migration
//! 0003 yields (tested), so 0003 becomes a no-op after it.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

use crate::errors::StoreError;
use crate::pool::{DbConfig, connect};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackfillOptions {
    pub batch_size: i64,
    pub dry_run: bool,
}

impl Default for BackfillOptions {
    fn default() -> Self {
        Self {
            batch_size: 1_000,
            dry_run: false,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackfillReport {
    /// Rows without call_sid when the run started.
    pub pending_at_start: i64,
    pub updated: i64,
    pub batches: u64,
    pub dry_run: bool,
    /// Up to one batch of `(id, call_sid)` that a dry run would write.
    pub preview: Vec<(i64, String)>,
}

/// Rows of one batch: the next `$2` rows without call_sid after id `$1`. Their peers (same
/// driver, same second of created_at, whatever their call_sid) are ranked by id exactly as
/// in migration 0003; the created_at range keeps that ranking to the batch's seconds.
const BATCH_CTE: &str = "
WITH batch AS (
    SELECT id, floor(extract(epoch FROM created_at)) AS ep
    FROM calls
    WHERE call_sid IS NULL AND id > $1
    ORDER BY id
    LIMIT $2
), ranked AS (
    SELECT c.id,
           'EL_' || COALESCE(c.driver_id::text, 'UNKNOWN') || '_'
               || floor(extract(epoch FROM c.created_at))::bigint::text
               || CASE WHEN rn = 1 THEN '' ELSE '_' || rn::text END AS call_sid
    FROM (
        SELECT id, driver_id, created_at,
               row_number() OVER (
                   PARTITION BY driver_id, floor(extract(epoch FROM created_at))
                   ORDER BY id
               ) AS rn
        FROM calls
        WHERE created_at >= (SELECT to_timestamp(min(ep)) FROM batch)
          AND created_at < (SELECT to_timestamp(max(ep) + 1) FROM batch)
    ) AS c
    WHERE c.id IN (SELECT id FROM batch)
)";

/// Keeps the peer lookup of each batch an index range scan instead of a table scan.
/// Built CONCURRENTLY (no write lock) and dropped at the end.
const HELPER_INDEX: &str = "calls_backfill_created_at_tmp";

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    call_sid: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = Nullable<Bool>)]
    flag: Option<bool>,
}

/// Fills every NULL call_sid. `progress(done, total)` is called after each batch.
pub async fn backfill_call_sids(
    config: &DbConfig,
    options: BackfillOptions,
    progress: &(dyn Fn(i64, i64) + Sync),
) -> Result<BackfillReport, StoreError> {
    if options.batch_size < 1 {
        return Err(StoreError::Refused(
            "--batch-size must be at least 1".into(),
        ));
    }
    let mut conn = connect(config).await?;
    let column: Flag = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = $1 \
         AND table_name = 'calls' AND column_name = 'call_sid') AS flag",
    )
    .bind::<Text, _>(config.schema.as_str())
    .get_result(&mut conn)
    .await?;
    if column.flag != Some(true) {
        return Err(StoreError::Refused(format!(
            "schema {} has no calls.call_sid column yet: run `migrate --to 2` first",
            config.schema
        )));
    }
    let locked: Flag =
        diesel::sql_query("SELECT pg_try_advisory_lock(hashtext('calls-backfill:' || $1)) AS flag")
            .bind::<Text, _>(config.schema.as_str())
            .get_result(&mut conn)
            .await?;
    if locked.flag != Some(true) {
        return Err(StoreError::Refused(
            "another backfill is running on this schema".into(),
        ));
    }
    let result = run(&mut conn, options, progress).await;
    // The lock is also released when the connection closes; this is just tidy.
    let _ = conn.batch_execute("SELECT pg_advisory_unlock_all()").await;
    result
}

async fn run(
    conn: &mut AsyncPgConnection,
    options: BackfillOptions,
    progress: &(dyn Fn(i64, i64) + Sync),
) -> Result<BackfillReport, StoreError> {
    let pending: Count =
        diesel::sql_query("SELECT count(*) AS n FROM calls WHERE call_sid IS NULL")
            .get_result(conn)
            .await?;
    let mut report = BackfillReport {
        pending_at_start: pending.n,
        dry_run: options.dry_run,
        ..BackfillReport::default()
    };
    if options.dry_run {
        report.preview = diesel::sql_query(format!(
            "{BATCH_CTE} SELECT id::bigint AS id, call_sid FROM ranked ORDER BY id"
        ))
        .bind::<BigInt, _>(0_i64)
        .bind::<BigInt, _>(options.batch_size)
        .load::<Row>(conn)
        .await?
        .into_iter()
        .map(|r| (r.id, r.call_sid))
        .collect();
        return Ok(report);
    }
    if pending.n == 0 {
        // A run killed earlier may have left its helper index behind.
        conn.batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {HELPER_INDEX}"))
            .await?;
        progress(0, 0);
        return Ok(report);
    }
    conn.batch_execute(&format!(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS {HELPER_INDEX} ON calls (created_at)"
    ))
    .await?;
    let update = format!(
        "{BATCH_CTE} UPDATE calls SET call_sid = ranked.call_sid FROM ranked \
         WHERE calls.id = ranked.id AND calls.call_sid IS NULL RETURNING calls.id::bigint AS id, calls.call_sid"
    );
    // Two passes: the second catches rows that appeared behind the cursor meanwhile.
    for _pass in 0..2 {
        let mut after = 0_i64;
        loop {
            // Each batch is its own short transaction (autocommit).
            let rows: Vec<Row> = diesel::sql_query(&update)
                .bind::<BigInt, _>(after)
                .bind::<BigInt, _>(options.batch_size)
                .load(conn)
                .await?;
            let Some(max_id) = rows.iter().map(|r| r.id).max() else {
                break;
            };
            after = max_id;
            report.updated += i64::try_from(rows.len()).unwrap_or(i64::MAX);
            report.batches += 1;
            progress(report.updated, report.pending_at_start.max(report.updated));
        }
    }
    conn.batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {HELPER_INDEX}"))
        .await?;
    Ok(report)
}
