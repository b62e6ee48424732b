//! `BatchRepository` on PostgreSQL: batches, their recipients, and the link from each
//! attempt's Call to its recipient. The claim is PostgreSQL's own queue primitive
//! (`FOR UPDATE SKIP LOCKED` over the partial index of due recipients); the rule that
//! decides a recipient's next state is the domain's, applied here under its row lock.

use std::collections::BTreeMap;

use async_trait::async_trait;
use calls_domain::models::{
    AttemptView, BatchId, BatchListQuery, BatchPage, BatchStatus, BatchSummary, BatchView,
    CallWindow, DialRules, DriverCall, Due, EXPIRED, LastCheck, PhoneNumber, RecipientState,
    RecipientView, RedialDelays, SettleInput, Settlement, StateCounts, TimeZone, Violation,
    attempt_call_sid, decide_settlement,
};
use calls_domain::ports::{BatchRepository, ClaimRequest, ClaimedAttempt, NewBatch, SweepOutcome};
use calls_domain::{CallSid, CallStatus, ConversationId, RepositoryError};
use diesel::prelude::*;
use diesel::sql_types::{
    Array, BigInt, Bool, Integer, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use time::OffsetDateTime;

use crate::errors::{DbError, is_unique_violation};
use crate::models::InvalidRow;
use crate::pool::DbPool;
use crate::retry::{RetryCounter, RetryPolicy};
use crate::schema::{batch_recipients, batches, calls};

/// Recipients the sweep handles per step, so one pass stays a short transaction.
const SWEEP_LIMIT: i64 = 1000;
/// Why a claimed attempt cannot get its Call: its call_sid is already another Call's.
const SID_TAKEN: &str = "call_sid already taken by another call";

/// `BatchRepository` on PostgreSQL.
#[derive(Clone)]
pub struct PgBatchRepository {
    pool: DbPool,
    retry: RetryPolicy,
    retries: RetryCounter,
}

impl PgBatchRepository {
    pub fn new(pool: DbPool, retry: RetryPolicy) -> Self {
        Self {
            pool,
            retry,
            retries: RetryCounter::default(),
        }
    }

    /// Retries this repository (and its clones) took after transient failures.
    pub fn retries(&self) -> RetryCounter {
        self.retries.clone()
    }

    async fn conn(
        &self,
    ) -> Result<diesel_async::pooled_connection::deadpool::Object<AsyncPgConnection>, DbError> {
        Ok(self.pool.inner.get().await?)
    }

    /// PostgreSQL's plan for the dialer's claim (EXPLAIN, not executed): one line per plan
    /// line. For docs/database.md and the test that keeps the claim on its index.
    pub async fn explain_claim(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<String>, RepositoryError> {
        #[derive(QueryableByName)]
        struct PlanLine {
            #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
            line: String,
        }
        self.retry
            .run("explain_claim", &self.retries, |_| async move {
                let mut conn = self.conn().await?;
                let lines: Vec<PlanLine> =
                    diesel::sql_query(format!("EXPLAIN {}", CLAIM.replace("{batch}", "")))
                        .bind::<Timestamptz, _>(micros(now))
                        .bind::<BigInt, _>(i64::from(limit))
                        .bind::<Bool, _>(true)
                        .load(&mut conn)
                        .await?;
                Ok(lines.into_iter().map(|l| l.line).collect())
            })
            .await
    }
}

/// PostgreSQL keeps microseconds.
fn micros(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(t.nanosecond() / 1_000 * 1_000)
        .unwrap_or(t)
}

fn invalid(table: &'static str, reason: impl ToString) -> DbError {
    DbError::from(InvalidRow {
        table,
        reason: reason.to_string(),
    })
}

#[derive(Debug, Clone, QueryableByName, Queryable, Selectable)]
#[diesel(table_name = batch_recipients, check_for_backend(diesel::pg::Pg))]
struct RecipientRow {
    id: i64,
    batch_id: uuid::Uuid,
    driver_id: i64,
    driver_name: String,
    phone_number: String,
    custom_rules: String,
    trip_id: String,
    violations: serde_json::Value,
    time_zone: String,
    call_window: String,
    redial_delays_secs: Vec<i32>,
    expires_at: OffsetDateTime,
    state: String,
    attempt: i32,
    next_attempt_at: Option<OffsetDateTime>,
    held_since: Option<OffsetDateTime>,
    failure_reason: Option<String>,
    last_check: Option<serde_json::Value>,
}

impl RecipientRow {
    fn state(&self) -> Result<RecipientState, DbError> {
        self.state
            .parse()
            .map_err(|e| invalid("batch_recipients", e))
    }

    fn attempt(&self) -> u32 {
        u32::try_from(self.attempt).unwrap_or(0)
    }

    fn rules(&self) -> Result<DialRules, DbError> {
        let bad = |e: &dyn std::fmt::Display| invalid("batch_recipients", e);
        let delays = self
            .redial_delays_secs
            .iter()
            .map(|s| u64::try_from(*s).map_err(|e| bad(&e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DialRules {
            time_zone: TimeZone::parse(&self.time_zone).map_err(|e| bad(&e))?,
            window: CallWindow::parse(&self.call_window).map_err(|e| bad(&e))?,
            redial_delays: RedialDelays::new(delays).map_err(|e| bad(&e))?,
            expires_at: self.expires_at,
        })
    }

    fn driver(&self, timestamp: &str, attempt: u32) -> Result<DriverCall, DbError> {
        let bad = |e: &dyn std::fmt::Display| invalid("batch_recipients", e);
        let violations = self
            .violations
            .as_array()
            .ok_or_else(|| bad(&"violations is not an array"))?
            .iter()
            .map(|v| Violation {
                kind: v["type"].as_str().unwrap_or_default().to_owned(),
                description: v["description"].as_str().unwrap_or_default().to_owned(),
            })
            .collect();
        Ok(DriverCall {
            call_sid: attempt_call_sid(self.driver_id, timestamp, attempt).map_err(|e| bad(&e))?,
            driver_id: self.driver_id,
            driver_name: self.driver_name.clone(),
            phone_number: PhoneNumber::parse(&self.phone_number).map_err(|e| bad(&e))?,
            custom_rules: self.custom_rules.clone(),
            trip_id: self.trip_id.clone(),
            violations,
        })
    }

    fn last_check(&self) -> Result<Option<LastCheck>, DbError> {
        self.last_check
            .clone()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| invalid("batch_recipients", format!("last_check: {e}")))
    }
}

/// A claimed row with what the claim adds to it.
#[derive(QueryableByName)]
struct ClaimedRow {
    #[diesel(embed)]
    recipient: RecipientRow,
    #[diesel(sql_type = Timestamptz)]
    due_at: OffsetDateTime,
    #[diesel(sql_type = Text)]
    batch_timestamp: String,
}

#[derive(QueryableByName)]
struct AttemptRow {
    #[diesel(sql_type = BigInt)]
    recipient_id: i64,
    #[diesel(sql_type = Integer)]
    attempt: i32,
    #[diesel(sql_type = Text)]
    call_sid: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Nullable<Text>)]
    failure_reason: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    call_start_time: OffsetDateTime,
}

#[derive(QueryableByName)]
struct CountRow {
    #[diesel(sql_type = SqlUuid)]
    batch_id: uuid::Uuid,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

#[derive(QueryableByName)]
struct SidRow {
    #[diesel(sql_type = Text)]
    call_sid: String,
}

#[derive(Debug, Queryable)]
struct BatchRow {
    id: uuid::Uuid,
    call_type: String,
    timestamp: String,
    created_at: OffsetDateTime,
    cancelled_at: Option<OffsetDateTime>,
}

fn violations_json(driver: &DriverCall) -> serde_json::Value {
    serde_json::Value::Array(
        driver
            .violations
            .iter()
            .map(|v| serde_json::json!({"type": v.kind, "description": v.description}))
            .collect(),
    )
}

const INSERT_RECIPIENTS: &str = "\
INSERT INTO batch_recipients (batch_id, position, driver_id, driver_name, phone_number,
    custom_rules, trip_id, violations, first_call_sid, time_zone, call_window,
    redial_delays_secs, expires_at, state, attempt, next_attempt_at, updated_at)
SELECT $1, u.position, u.driver_id, u.driver_name, u.phone_number, u.custom_rules, u.trip_id,
    u.violations, u.first_call_sid, u.time_zone, u.call_window,
    string_to_array(u.delays, ',')::int[], u.expires_at, 'scheduled', 0, u.first_due, $2
FROM unnest($3::int[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[],
    $9::jsonb[], $10::text[], $11::text[], $12::text[], $13::text[], $14::timestamptz[],
    $15::timestamptz[])
    AS u(position, driver_id, driver_name, phone_number, custom_rules, trip_id, violations,
         first_call_sid, time_zone, call_window, delays, expires_at, first_due)";

async fn insert_batch(conn: &mut AsyncPgConnection, batch: &NewBatch) -> Result<(), DbError> {
    let id = batch.batch_id.as_uuid();
    let created = micros(batch.created_at);
    diesel::insert_into(batches::table)
        .values((
            batches::id.eq(id),
            batches::call_type.eq(&batch.call_type),
            batches::timestamp.eq(&batch.timestamp),
            batches::created_at.eq(created),
        ))
        .execute(conn)
        .await?;
    let r = &batch.recipients;
    let positions: Vec<i32> = (0..r.len())
        .map(|i| i32::try_from(i).unwrap_or(i32::MAX))
        .collect();
    let sids: Vec<&str> = r.iter().map(|x| x.driver.call_sid.as_str()).collect();
    diesel::sql_query(INSERT_RECIPIENTS)
        .bind::<SqlUuid, _>(id)
        .bind::<Timestamptz, _>(created)
        .bind::<Array<Integer>, _>(positions)
        .bind::<Array<BigInt>, _>(r.iter().map(|x| x.driver.driver_id).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(
            r.iter()
                .map(|x| x.driver.driver_name.as_str())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Text>, _>(
            r.iter()
                .map(|x| x.driver.phone_number.as_str())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Text>, _>(
            r.iter()
                .map(|x| x.driver.custom_rules.as_str())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Text>, _>(
            r.iter()
                .map(|x| x.driver.trip_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Jsonb>, _>(
            r.iter()
                .map(|x| violations_json(&x.driver))
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Text>, _>(&sids)
        .bind::<Array<Text>, _>(
            r.iter()
                .map(|x| x.rules.time_zone.name())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Text>, _>(
            r.iter()
                .map(|x| x.rules.window.to_string())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Text>, _>(
            r.iter()
                .map(|x| {
                    let secs = x.rules.redial_delays.as_secs();
                    secs.iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Timestamptz>, _>(
            r.iter()
                .map(|x| micros(x.rules.expires_at))
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Timestamptz>, _>(r.iter().map(|x| micros(x.first_due)).collect::<Vec<_>>())
        .execute(conn)
        .await?;
    // After the recipients: a concurrent identical batch waits on their unique key above and
    // then conflicts there; a Call placed outside batches conflicts here.
    let taken: Vec<String> = calls::table
        .filter(calls::call_sid.eq_any(&sids))
        .select(calls::call_sid)
        .limit(5)
        .load(conn)
        .await?;
    if !taken.is_empty() {
        return Err(RepositoryError::Conflict(format!(
            "call_sid already exists: {}",
            taken.join(", ")
        ))
        .into());
    }
    Ok(())
}

async fn load_view(
    conn: &mut AsyncPgConnection,
    batch_id: uuid::Uuid,
) -> Result<Option<BatchView>, DbError> {
    let Some(batch) = batches::table
        .find(batch_id)
        .select((
            batches::id,
            batches::call_type,
            batches::timestamp,
            batches::created_at,
            batches::cancelled_at,
        ))
        .first::<BatchRow>(conn)
        .await
        .optional()?
    else {
        return Ok(None);
    };
    let recipients: Vec<RecipientRow> = batch_recipients::table
        .filter(batch_recipients::batch_id.eq(batch_id))
        .order(batch_recipients::position.asc())
        .select(RecipientRow::as_select())
        .load(conn)
        .await?;
    let attempts: Vec<AttemptRow> = diesel::sql_query(
        "SELECT c.recipient_id, c.attempt, c.call_sid, c.status, c.failure_reason, \
                c.call_start_time \
         FROM batch_recipients r JOIN calls c ON c.recipient_id = r.id \
         WHERE r.batch_id = $1 ORDER BY c.recipient_id, c.attempt",
    )
    .bind::<SqlUuid, _>(batch_id)
    .load(conn)
    .await?;
    let mut by_recipient: BTreeMap<i64, Vec<AttemptView>> = BTreeMap::new();
    for a in attempts {
        by_recipient
            .entry(a.recipient_id)
            .or_default()
            .push(AttemptView {
                attempt: u32::try_from(a.attempt).unwrap_or(0),
                call_sid: CallSid::parse(a.call_sid).map_err(|e| invalid("calls", e))?,
                status: a
                    .status
                    .parse::<CallStatus>()
                    .map_err(|e| invalid("calls", e))?,
                failure_reason: a.failure_reason,
                call_start_time: a.call_start_time,
            });
    }
    let mut counts = StateCounts::default();
    let mut drivers = Vec::with_capacity(recipients.len());
    for r in recipients {
        let state = r.state()?;
        counts.add(state, 1);
        drivers.push(RecipientView {
            driver_id: r.driver_id,
            driver_name: r.driver_name.clone(),
            phone_number: r.phone_number.clone(),
            time_zone: r.time_zone.clone(),
            state,
            next_attempt_at: r.next_attempt_at,
            failure_reason: r.failure_reason.clone(),
            last_check: r.last_check()?,
            attempts: by_recipient.remove(&r.id).unwrap_or_default(),
        });
    }
    Ok(Some(BatchView {
        batch_id: BatchId::from_uuid(batch.id),
        created_at: batch.created_at,
        call_type: batch.call_type,
        timestamp: batch.timestamp,
        status: BatchStatus::of(batch.cancelled_at.is_some(), &counts),
        counts,
        drivers,
    }))
}

/// The claim: lock up to `limit` due recipients no one else holds, oldest due first, and
/// move them on in the same statement. `{batch}` narrows it to one batch.
const CLAIM: &str = "\
WITH due AS (
    SELECT r.id, r.next_attempt_at AS due_at
    FROM batch_recipients r
    WHERE r.state = 'scheduled' AND r.next_attempt_at <= $1 {batch}
    ORDER BY r.next_attempt_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), decided AS MATERIALIZED (
    SELECT due.id, due.due_at,
        -- An earlier attempt that completed after all (its settle was lost): done.
        CASE WHEN EXISTS (SELECT 1 FROM calls c
                          WHERE c.recipient_id = r.id AND c.status = 'completed') THEN 'completed'
             WHEN b.cancelled_at IS NOT NULL THEN 'cancelled'
             WHEN r.expires_at <= $1 THEN 'failed'
             ELSE 'dialing' END AS new_state
    FROM due
    JOIN batch_recipients r ON r.id = due.id
    JOIN batches b ON b.id = r.batch_id
)
UPDATE batch_recipients r SET
    state = d.new_state,
    attempt = CASE WHEN d.new_state = 'dialing' THEN r.attempt + 1 ELSE r.attempt END,
    next_attempt_at = NULL,
    held_since = CASE WHEN d.new_state = 'dialing' AND NOT $3 THEN $1 END,
    failure_reason = CASE WHEN d.new_state = 'failed' THEN 'expired'
                          WHEN d.new_state = 'completed' THEN NULL
                          ELSE r.failure_reason END,
    updated_at = $1
FROM decided d, batches b
WHERE r.id = d.id AND b.id = r.batch_id
RETURNING r.*, d.due_at, b.\"timestamp\" AS batch_timestamp";

/// Writes the attempts' Calls (`in_progress`); an attempt whose call_sid some other Call
/// already holds is not dialed: its recipient fails. Returns the recipients written.
async fn write_attempt_calls(
    conn: &mut AsyncPgConnection,
    attempts: &[&ClaimedAttempt],
    now: OffsetDateTime,
) -> Result<Vec<i64>, DbError> {
    if attempts.is_empty() {
        return Ok(Vec::new());
    }
    let written: Vec<IdRow> = diesel::sql_query(
        "INSERT INTO calls (call_sid, driver_id, call_start_time, status, created_at, \
                            updated_at, recipient_id, attempt) \
         SELECT u.sid, u.driver_id, $1, 'in_progress', $1, $1, u.rid, u.attempt \
         FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::int[]) \
              AS u(sid, driver_id, rid, attempt) \
         ON CONFLICT DO NOTHING RETURNING recipient_id AS id",
    )
    .bind::<Timestamptz, _>(now)
    .bind::<Array<Text>, _>(
        attempts
            .iter()
            .map(|a| a.call_sid().as_str())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<BigInt>, _>(
        attempts
            .iter()
            .map(|a| a.driver.driver_id)
            .collect::<Vec<_>>(),
    )
    .bind::<Array<BigInt>, _>(attempts.iter().map(|a| a.recipient_id).collect::<Vec<_>>())
    .bind::<Array<Integer>, _>(
        attempts
            .iter()
            .map(|a| i32::try_from(a.attempt).unwrap_or(i32::MAX))
            .collect::<Vec<_>>(),
    )
    .load(conn)
    .await?;
    let written: Vec<i64> = written.into_iter().map(|r| r.id).collect();
    let lost: Vec<i64> = attempts
        .iter()
        .map(|a| a.recipient_id)
        .filter(|id| !written.contains(id))
        .collect();
    if !lost.is_empty() {
        tracing::error!(recipients = ?lost, "{SID_TAKEN}; not dialing");
        diesel::update(batch_recipients::table.filter(batch_recipients::id.eq_any(&lost)))
            .set((
                batch_recipients::state.eq(RecipientState::Failed.as_str()),
                batch_recipients::failure_reason.eq(SID_TAKEN),
                batch_recipients::held_since.eq(None::<OffsetDateTime>),
                batch_recipients::updated_at.eq(now),
            ))
            .execute(conn)
            .await?;
    }
    if !written.is_empty() {
        diesel::update(batch_recipients::table.filter(batch_recipients::id.eq_any(&written)))
            .set(batch_recipients::held_since.eq(None::<OffsetDateTime>))
            .execute(conn)
            .await?;
    }
    Ok(written)
}

/// Undoes a claim that must not be dialed now: the same attempt is due at `next`, or the
/// recipient fails (`expired`).
async fn unclaim(
    conn: &mut AsyncPgConnection,
    id: i64,
    claimed_attempt: i32,
    next: Due,
    now: OffsetDateTime,
) -> Result<(), DbError> {
    let (state, at, reason) = match next {
        Due::At(at) => (RecipientState::Scheduled, Some(micros(at)), None),
        Due::Expired => (RecipientState::Failed, None, Some(EXPIRED)),
    };
    diesel::update(batch_recipients::table.find(id))
        .set((
            batch_recipients::state.eq(state.as_str()),
            batch_recipients::attempt.eq(claimed_attempt - 1),
            batch_recipients::held_since.eq(None::<OffsetDateTime>),
            batch_recipients::next_attempt_at.eq(at),
            batch_recipients::failure_reason.eq(reason),
            batch_recipients::updated_at.eq(now),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

async fn claim_in_transaction(
    conn: &mut AsyncPgConnection,
    request: &ClaimRequest,
) -> Result<Vec<ClaimedAttempt>, DbError> {
    let now = micros(request.now);
    let sql = CLAIM.replace(
        "{batch}",
        if request.batch_id.is_some() {
            "AND r.batch_id = $4"
        } else {
            ""
        },
    );
    let limit = i64::from(request.limit);
    let rows: Vec<ClaimedRow> = match request.batch_id {
        Some(batch) => {
            diesel::sql_query(sql)
                .bind::<Timestamptz, _>(now)
                .bind::<BigInt, _>(limit)
                .bind::<Bool, _>(request.write_calls)
                .bind::<SqlUuid, _>(batch.as_uuid())
                .load(conn)
                .await?
        }
        None => {
            diesel::sql_query(sql)
                .bind::<Timestamptz, _>(now)
                .bind::<BigInt, _>(limit)
                .bind::<Bool, _>(request.write_calls)
                .load(conn)
                .await?
        }
    };
    let mut claimed = Vec::with_capacity(rows.len());
    for row in rows {
        let r = &row.recipient;
        if r.state()? != RecipientState::Dialing {
            continue;
        }
        let attempt = r.attempt();
        let rules = r.rules()?;
        // Due inside the window, but a dialer running late (a backlog, an outage) must not
        // start the attempt after the window closed: back to the next opening instead.
        match rules.due_from(now) {
            Due::At(at) if at <= now => {}
            next => {
                unclaim(conn, r.id, r.attempt, next, now).await?;
                continue;
            }
        }
        claimed.push(ClaimedAttempt {
            recipient_id: r.id,
            batch_id: BatchId::from_uuid(r.batch_id),
            attempt,
            driver: r.driver(&row.batch_timestamp, attempt)?,
            rules,
            due_at: row.due_at,
            call_written: false,
        });
    }
    if request.write_calls {
        let refs: Vec<&ClaimedAttempt> = claimed.iter().collect();
        let written = write_attempt_calls(conn, &refs, OffsetDateTime::now_utc()).await?;
        claimed.retain(|c| written.contains(&c.recipient_id));
        for c in &mut claimed {
            c.call_written = true;
        }
    }
    claimed.sort_by_key(|c| (c.due_at, c.recipient_id));
    Ok(claimed)
}

async fn lock_recipient(
    conn: &mut AsyncPgConnection,
    id: i64,
) -> Result<Option<(RecipientRow, bool)>, DbError> {
    let row: Option<RecipientRow> = batch_recipients::table
        .find(id)
        .select(RecipientRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()?;
    let Some(row) = row else { return Ok(None) };
    let cancelled: Option<OffsetDateTime> = batches::table
        .find(row.batch_id)
        .select(batches::cancelled_at)
        .first(conn)
        .await?;
    Ok(Some((row, cancelled.is_some())))
}

/// Applies the domain's settlement rule to the recipient whose attempt `call_sid` is.
async fn settle_in_transaction(
    conn: &mut AsyncPgConnection,
    call_sid: &str,
    redialable: bool,
    now: OffsetDateTime,
) -> Result<Option<RecipientState>, DbError> {
    let link: Option<(Option<i64>, Option<i32>)> = calls::table
        .filter(calls::call_sid.eq(call_sid))
        .select((calls::recipient_id, calls::attempt))
        .first(conn)
        .await
        .optional()?;
    let Some((Some(recipient_id), Some(ended_attempt))) = link else {
        return Ok(None);
    };
    let Some((row, cancelled)) = lock_recipient(conn, recipient_id).await? else {
        return Ok(None);
    };
    // Read under the recipient's lock, after whatever ended the Call has committed.
    let (status, reason): (String, Option<String>) = calls::table
        .filter(calls::call_sid.eq(call_sid))
        .select((calls::status, calls::failure_reason))
        .first(conn)
        .await?;
    let state = row.state()?;
    let rules = row.rules()?;
    let decision = decide_settlement(&SettleInput {
        state,
        current_attempt: row.attempt(),
        ended_attempt: u32::try_from(ended_attempt).unwrap_or(0),
        batch_cancelled: cancelled,
        call_status: status.parse().map_err(|e| invalid("calls", e))?,
        call_failure_reason: reason.as_deref(),
        redialable,
        rules: &rules,
        now,
    });
    apply_settlement(conn, row.id, &decision, now).await?;
    Ok(Some(decision.state().unwrap_or(state)))
}

async fn apply_settlement(
    conn: &mut AsyncPgConnection,
    id: i64,
    decision: &Settlement,
    now: OffsetDateTime,
) -> Result<(), DbError> {
    let (state, next, reason): (RecipientState, Option<OffsetDateTime>, Option<&str>) =
        match decision {
            Settlement::Unchanged => return Ok(()),
            Settlement::Completed => (RecipientState::Completed, None, None),
            Settlement::Scheduled { at, .. } => {
                (RecipientState::Scheduled, Some(micros(*at)), None)
            }
            Settlement::Failed { reason } => (RecipientState::Failed, None, Some(reason.as_str())),
            Settlement::Cancelled { reason } => {
                (RecipientState::Cancelled, None, reason.as_deref())
            }
        };
    diesel::update(batch_recipients::table.find(id))
        .set((
            batch_recipients::state.eq(state.as_str()),
            batch_recipients::next_attempt_at.eq(next),
            batch_recipients::held_since.eq(None::<OffsetDateTime>),
            batch_recipients::failure_reason.eq(reason),
            batch_recipients::updated_at.eq(now),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Gives back claims whose holder died before writing the attempt's Call.
async fn release_dead_holds(
    conn: &mut AsyncPgConnection,
    now: OffsetDateTime,
    cutoff: OffsetDateTime,
) -> Result<u64, DbError> {
    let rows: Vec<RecipientRow> = diesel::sql_query(
        "SELECT * FROM batch_recipients WHERE state = 'dialing' AND held_since < $1 \
         LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind::<Timestamptz, _>(cutoff)
    .bind::<BigInt, _>(SWEEP_LIMIT)
    .load(conn)
    .await?;
    for row in &rows {
        let cancelled: Option<OffsetDateTime> = batches::table
            .find(row.batch_id)
            .select(batches::cancelled_at)
            .first(conn)
            .await?;
        let (state, next, reason) = if cancelled.is_some() {
            (
                RecipientState::Cancelled,
                None,
                row.failure_reason.as_deref(),
            )
        } else {
            match row.rules()?.due_from(now) {
                Due::At(at) => (RecipientState::Scheduled, Some(micros(at)), None),
                Due::Expired => (RecipientState::Failed, None, Some(EXPIRED)),
            }
        };
        diesel::update(batch_recipients::table.find(row.id))
            .set((
                batch_recipients::state.eq(state.as_str()),
                batch_recipients::attempt.eq(row.attempt - 1),
                batch_recipients::held_since.eq(None::<OffsetDateTime>),
                batch_recipients::next_attempt_at.eq(next),
                batch_recipients::failure_reason.eq(reason),
                batch_recipients::updated_at.eq(now),
            ))
            .execute(conn)
            .await?;
    }
    Ok(rows.len() as u64)
}

async fn current_state(conn: &mut AsyncPgConnection, id: i64) -> Result<RecipientState, DbError> {
    let state: String = batch_recipients::table
        .find(id)
        .select(batch_recipients::state)
        .first(conn)
        .await?;
    state.parse().map_err(|e| invalid("batch_recipients", e))
}

async fn counts_of(
    conn: &mut AsyncPgConnection,
    ids: &[uuid::Uuid],
) -> Result<BTreeMap<uuid::Uuid, StateCounts>, DbError> {
    let rows: Vec<CountRow> = diesel::sql_query(
        "SELECT batch_id, state, count(*) AS n FROM batch_recipients \
         WHERE batch_id = ANY($1) GROUP BY batch_id, state",
    )
    .bind::<Array<SqlUuid>, _>(ids)
    .load(conn)
    .await?;
    let mut out: BTreeMap<uuid::Uuid, StateCounts> = BTreeMap::new();
    for row in rows {
        let state: RecipientState = row
            .state
            .parse()
            .map_err(|e| invalid("batch_recipients", e))?;
        out.entry(row.batch_id)
            .or_default()
            .add(state, u64::try_from(row.n).unwrap_or(0));
    }
    Ok(out)
}

#[async_trait]
impl BatchRepository for PgBatchRepository {
    #[tracing::instrument(skip_all, fields(batch_id = %batch.batch_id, recipients = batch.recipients.len()))]
    async fn create_batch(&self, batch: &NewBatch) -> Result<BatchView, RepositoryError> {
        self.retry
            .run("create_batch", &self.retries, |attempt| async move {
                let mut conn = self.conn().await?;
                let written = conn
                    .transaction(async |conn| insert_batch(conn, batch).await)
                    .await;
                match written {
                    Ok(()) => {}
                    Err(e) => {
                        let conflict = is_unique_violation(&e).map(str::to_owned);
                        // A retry after a lost commit finds our own batch: that is success.
                        if attempt > 1 {
                            if let Some(view) =
                                load_view(&mut conn, batch.batch_id.as_uuid()).await?
                            {
                                return Ok(view);
                            }
                        }
                        return Err(match conflict {
                            Some(constraint) => RepositoryError::Conflict(format!(
                                "an attempt-1 call_sid of this batch already exists ({constraint})"
                            ))
                            .into(),
                            None => e,
                        });
                    }
                }
                load_view(&mut conn, batch.batch_id.as_uuid())
                    .await?
                    .ok_or_else(|| invalid("batches", "batch vanished after its commit"))
            })
            .await
    }

    async fn get_batch(&self, batch_id: &BatchId) -> Result<Option<BatchView>, RepositoryError> {
        self.retry
            .run("get_batch", &self.retries, |_| async move {
                let mut conn = self.conn().await?;
                load_view(&mut conn, batch_id.as_uuid()).await
            })
            .await
    }

    async fn list_batches(&self, query: &BatchListQuery) -> Result<BatchPage, RepositoryError> {
        self.retry
            .run("list_batches", &self.retries, |_| async move {
                let mut conn = self.conn().await?;
                let select = (
                    batches::id,
                    batches::call_type,
                    batches::timestamp,
                    batches::created_at,
                    batches::cancelled_at,
                );
                let take = i64::from(query.limit.get()) + 1;
                let mut q = batches::table
                    .select(select)
                    .order((batches::created_at.desc(), batches::id.desc()))
                    .limit(take)
                    .into_boxed();
                if let Some(after) = query.after {
                    // A row comparison: one index condition on idx_batches_created_id
                    // (the spelled-out OR could only be filtered).
                    q = q.filter(
                        diesel::dsl::sql::<Bool>("(created_at, id) < (")
                            .bind::<Timestamptz, _>(micros(after.created_at))
                            .sql(", ")
                            .bind::<SqlUuid, _>(after.batch_id.as_uuid())
                            .sql(")"),
                    );
                }
                let rows: Vec<BatchRow> = q.load(&mut conn).await?;
                let ids: Vec<uuid::Uuid> = rows.iter().map(|b| b.id).collect();
                let counts = counts_of(&mut conn, &ids).await?;
                let summaries = rows
                    .into_iter()
                    .map(|b| {
                        let counts = counts.get(&b.id).copied().unwrap_or_default();
                        BatchSummary {
                            batch_id: BatchId::from_uuid(b.id),
                            created_at: b.created_at,
                            status: BatchStatus::of(b.cancelled_at.is_some(), &counts),
                            counts,
                        }
                    })
                    .collect();
                Ok(BatchPage::from_lookahead(summaries, query.limit))
            })
            .await
    }

    async fn cancel_batch(
        &self,
        batch_id: &BatchId,
        now: OffsetDateTime,
    ) -> Result<Option<BatchView>, RepositoryError> {
        let now = micros(now);
        self.retry
            .run("cancel_batch", &self.retries, |_| async move {
                let mut conn = self.conn().await?;
                let id = batch_id.as_uuid();
                let found = conn
                    .transaction(async |conn| {
                        let found: Option<uuid::Uuid> = diesel::update(batches::table.find(id))
                            .set(
                                batches::cancelled_at.eq(
                                    diesel::dsl::sql::<Nullable<Timestamptz>>(
                                        "COALESCE(cancelled_at, ",
                                    )
                                    .bind::<Timestamptz, _>(now)
                                    .sql(")"),
                                ),
                            )
                            .returning(batches::id)
                            .get_result(conn)
                            .await
                            .optional()?;
                        if found.is_some() {
                            diesel::update(
                                batch_recipients::table
                                    .filter(batch_recipients::batch_id.eq(id))
                                    .filter(
                                        batch_recipients::state
                                            .eq(RecipientState::Scheduled.as_str()),
                                    ),
                            )
                            .set((
                                batch_recipients::state.eq(RecipientState::Cancelled.as_str()),
                                batch_recipients::next_attempt_at.eq(None::<OffsetDateTime>),
                                batch_recipients::updated_at.eq(now),
                            ))
                            .execute(conn)
                            .await?;
                        }
                        Ok::<_, DbError>(found.is_some())
                    })
                    .await?;
                if !found {
                    return Ok(None);
                }
                load_view(&mut conn, id).await
            })
            .await
    }

    async fn claim_due(
        &self,
        request: &ClaimRequest,
    ) -> Result<Vec<ClaimedAttempt>, RepositoryError> {
        self.retry
            .run("claim_due", &self.retries, |_| async move {
                let mut conn = self.conn().await?;
                conn.transaction(async |conn| claim_in_transaction(conn, request).await)
                    .await
            })
            .await
    }

    async fn start_attempt(
        &self,
        claimed: &ClaimedAttempt,
        now: OffsetDateTime,
    ) -> Result<bool, RepositoryError> {
        let now = micros(now);
        self.retry
            .run("start_attempt", &self.retries, |_| async move {
                let mut conn = self.conn().await?;
                conn.transaction(async |conn| {
                    let Some((row, cancelled)) = lock_recipient(conn, claimed.recipient_id).await?
                    else {
                        return Ok(false);
                    };
                    let holds = row.state()? == RecipientState::Dialing
                        && row.attempt() == claimed.attempt
                        && row.held_since.is_some();
                    if !holds {
                        return Ok(false);
                    }
                    if cancelled {
                        diesel::update(batch_recipients::table.find(row.id))
                            .set((
                                batch_recipients::state.eq(RecipientState::Cancelled.as_str()),
                                batch_recipients::held_since.eq(None::<OffsetDateTime>),
                                batch_recipients::attempt.eq(row.attempt - 1),
                                batch_recipients::updated_at.eq(now),
                            ))
                            .execute(conn)
                            .await?;
                        return Ok(false);
                    }
                    // Past the expiry, or the window closed during the check: not now.
                    match row.rules()?.due_from(now) {
                        Due::At(at) if at <= now => {}
                        next => {
                            unclaim(conn, row.id, row.attempt, next, now).await?;
                            return Ok(false);
                        }
                    }
                    let written = write_attempt_calls(conn, &[claimed], now).await?;
                    Ok::<_, DbError>(!written.is_empty())
                })
                .await
            })
            .await
    }

    async fn record_check(
        &self,
        claimed: &ClaimedAttempt,
        check: &LastCheck,
        next: Option<Due>,
    ) -> Result<RecipientState, RepositoryError> {
        let json =
            serde_json::to_value(check).map_err(|e| RepositoryError::Unexpected(Box::new(e)))?;
        self.retry
            .run("record_check", &self.retries, |_| {
                let json = json.clone();
                async move {
                    let mut conn = self.conn().await?;
                    let now = micros(OffsetDateTime::now_utc());
                    // Back to scheduled (or failed/cancelled) without using the attempt:
                    // only while the claim still holds and no Call was written.
                    let sql = match next {
                        None => "UPDATE batch_recipients SET last_check = $1, updated_at = $2 \
                                 WHERE id = $3 AND attempt = $4 AND state = 'dialing' \
                                 RETURNING id"
                            .to_owned(),
                        Some(_) => "UPDATE batch_recipients r SET last_check = $1, updated_at = $2, \
                                 attempt = r.attempt - 1, held_since = NULL, \
                                 state = CASE WHEN b.cancelled_at IS NOT NULL THEN 'cancelled' \
                                              WHEN $5::timestamptz IS NULL THEN 'failed' \
                                              ELSE 'scheduled' END, \
                                 next_attempt_at = CASE WHEN b.cancelled_at IS NULL THEN $5 END, \
                                 failure_reason = CASE WHEN b.cancelled_at IS NULL AND $5::timestamptz IS NULL \
                                                       THEN $6 ELSE r.failure_reason END \
                                 FROM batches b \
                                 WHERE b.id = r.batch_id AND r.id = $3 AND r.attempt = $4 \
                                   AND r.state = 'dialing' AND r.held_since IS NOT NULL \
                                 RETURNING r.id"
                            .to_owned(),
                    };
                    let at = match next {
                        Some(Due::At(t)) => Some(micros(t)),
                        _ => None,
                    };
                    let q = diesel::sql_query(sql)
                        .bind::<Jsonb, _>(json)
                        .bind::<Timestamptz, _>(now)
                        .bind::<BigInt, _>(claimed.recipient_id)
                        .bind::<Integer, _>(i32::try_from(claimed.attempt).unwrap_or(i32::MAX));
                    let _: Vec<IdRow> = if next.is_some() {
                        q.bind::<Nullable<Timestamptz>, _>(at)
                            .bind::<Text, _>(EXPIRED)
                            .load(&mut conn)
                            .await?
                    } else {
                        q.load(&mut conn).await?
                    };
                    current_state(&mut conn, claimed.recipient_id).await
                }
            })
            .await
    }

    async fn record_placed(
        &self,
        claimed: &ClaimedAttempt,
        conversation_id: &ConversationId,
    ) -> Result<RecipientState, RepositoryError> {
        self.retry
            .run("record_placed", &self.retries, |_| async move {
                let mut conn = self.conn().await?;
                let now = micros(OffsetDateTime::now_utc());
                let linked = conn
                    .transaction(async |conn| {
                        diesel::update(
                            calls::table
                                .filter(calls::call_sid.eq(claimed.call_sid().as_str()))
                                .filter(calls::conversation_id.is_null()),
                        )
                        .set((
                            calls::conversation_id.eq(conversation_id.as_str()),
                            calls::updated_at.eq(now),
                        ))
                        .execute(conn)
                        .await?;
                        diesel::update(
                            batch_recipients::table
                                .find(claimed.recipient_id)
                                .filter(batch_recipients::state.eq(RecipientState::Dialing.as_str()))
                                .filter(batch_recipients::attempt.eq(
                                    i32::try_from(claimed.attempt).unwrap_or(i32::MAX),
                                )),
                        )
                        .set((
                            batch_recipients::state.eq(RecipientState::InCall.as_str()),
                            batch_recipients::updated_at.eq(now),
                        ))
                        .execute(conn)
                        .await?;
                        current_state(conn, claimed.recipient_id).await
                    })
                    .await;
                match linked {
                    Err(e) => match is_unique_violation(&e) {
                        Some(constraint) => Err(RepositoryError::Conflict(format!(
                            "conversation_id {conversation_id} belongs to another call ({constraint})"
                        ))
                        .into()),
                        None => Err(e),
                    },
                    ok => ok,
                }
            })
            .await
    }

    async fn record_dial_failure(
        &self,
        claimed: &ClaimedAttempt,
        reason: &str,
        redialable: bool,
        now: OffsetDateTime,
    ) -> Result<RecipientState, RepositoryError> {
        let now = micros(now);
        self.retry
            .run("record_dial_failure", &self.retries, |_| async move {
                let mut conn = self.conn().await?;
                conn.transaction(async |conn| {
                    let sid = claimed.call_sid().as_str();
                    diesel::update(
                        calls::table
                            .filter(calls::call_sid.eq(sid))
                            .filter(calls::status.eq(CallStatus::InProgress.as_str())),
                    )
                    .set((
                        calls::status.eq(CallStatus::Failed.as_str()),
                        calls::failure_reason.eq(reason),
                        calls::call_end_time.eq(now),
                        calls::updated_at.eq(now),
                    ))
                    .execute(conn)
                    .await?;
                    match settle_in_transaction(conn, sid, redialable, now).await? {
                        Some(state) => Ok(state),
                        None => current_state(conn, claimed.recipient_id).await,
                    }
                })
                .await
            })
            .await
    }

    async fn settle_call(
        &self,
        call_sid: &CallSid,
        redialable: bool,
        now: OffsetDateTime,
    ) -> Result<Option<RecipientState>, RepositoryError> {
        let now = micros(now);
        self.retry
            .run("settle_call", &self.retries, |_| async move {
                let mut conn = self.conn().await?;
                conn.transaction(async |conn| {
                    settle_in_transaction(conn, call_sid.as_str(), redialable, now).await
                })
                .await
            })
            .await
    }

    async fn recipient_counts(&self) -> Result<StateCounts, RepositoryError> {
        #[derive(QueryableByName)]
        struct StateRow {
            #[diesel(sql_type = Text)]
            state: String,
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        self.retry
            .run("recipient_counts", &self.retries, |_| async move {
                let mut conn = self.conn().await?;
                // A scan of the table: fine at a scrape every few seconds for millions of
                // rows; the live states alone would come from the partial indexes.
                let rows: Vec<StateRow> = diesel::sql_query(
                    "SELECT state, count(*) AS n FROM batch_recipients GROUP BY state",
                )
                .load(&mut conn)
                .await?;
                let mut counts = StateCounts::default();
                for row in rows {
                    let state: RecipientState = row
                        .state
                        .parse()
                        .map_err(|e| invalid("batch_recipients", e))?;
                    counts.add(state, u64::try_from(row.n).unwrap_or(0));
                }
                Ok(counts)
            })
            .await
    }

    async fn sweep(
        &self,
        now: OffsetDateTime,
        release_claims_before: OffsetDateTime,
    ) -> Result<SweepOutcome, RepositoryError> {
        let now = micros(now);
        let cutoff = micros(release_claims_before);
        self.retry
            .run("sweep", &self.retries, |_| async move {
                let mut conn = self.conn().await?;
                let mut out = SweepOutcome::default();
                // Scheduled past the expiry (due at or before it, so the due index finds them).
                let expired: Vec<IdRow> = diesel::sql_query(
                    "UPDATE batch_recipients r SET state = 'failed', failure_reason = $2, \
                         next_attempt_at = NULL, updated_at = $1 \
                     WHERE r.id IN (SELECT id FROM batch_recipients \
                         WHERE state = 'scheduled' AND next_attempt_at <= $1 AND expires_at <= $1 \
                         LIMIT $3 FOR UPDATE SKIP LOCKED) \
                     RETURNING r.id",
                )
                .bind::<Timestamptz, _>(now)
                .bind::<Text, _>(EXPIRED)
                .bind::<BigInt, _>(SWEEP_LIMIT)
                .load(&mut conn)
                .await?;
                out.expired = expired.len() as u64;
                // Claims whose holder died before writing the Call: nobody was dialed, so
                // the same attempt is due again, by the rule (the window may have closed).
                out.released = conn
                    .transaction(async |conn| release_dead_holds(conn, now, cutoff).await)
                    .await?;
                // Attempts under way whose Call ended without the recipient being settled
                // (a crash between the two), or an earlier attempt that completed. (A
                // scheduled recipient with a completed attempt is settled by the claim.)
                let ended: Vec<SidRow> = diesel::sql_query(
                    "SELECT c.call_sid FROM batch_recipients r \
                     JOIN calls c ON c.recipient_id = r.id \
                     WHERE r.state IN ('dialing', 'in_call') AND c.status <> 'in_progress' \
                       AND (c.attempt = r.attempt OR c.status = 'completed') \
                     LIMIT $1",
                )
                .bind::<BigInt, _>(SWEEP_LIMIT)
                .load(&mut conn)
                .await?;
                for row in ended {
                    let changed = conn
                        .transaction(async |conn| {
                            settle_in_transaction(conn, &row.call_sid, true, now).await
                        })
                        .await?;
                    if changed.is_some() {
                        out.settled += 1;
                    }
                }
                Ok(out)
            })
            .await
    }

    async fn attempt_of_call(
        &self,
        call_sid: &CallSid,
    ) -> Result<Option<(BatchId, u32)>, RepositoryError> {
        self.retry
            .run("attempt_of_call", &self.retries, |_| async move {
                let mut conn = self.conn().await?;
                let found: Option<(uuid::Uuid, Option<i32>)> = calls::table
                    .inner_join(
                        batch_recipients::table
                            .on(calls::recipient_id.eq(batch_recipients::id.nullable())),
                    )
                    .filter(calls::call_sid.eq(call_sid.as_str()))
                    .select((batch_recipients::batch_id, calls::attempt))
                    .first(&mut conn)
                    .await
                    .optional()?;
                Ok(found.map(|(batch_id, attempt)| {
                    (
                        BatchId::from_uuid(batch_id),
                        attempt.and_then(|a| u32::try_from(a).ok()).unwrap_or(1),
                    )
                }))
            })
            .await
    }
}
