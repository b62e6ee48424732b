use async_trait::async_trait;
use calls_domain::models::{CallListQuery, CallPage};
use calls_domain::service::transcript_merge;
use calls_domain::{
    AppendOutcome, Call, CallFinish, CallOutcome, CallRepository, CallSid, CallStatus,
    CallTranscription, ConversationId, Ending, EventTurn, Finished, NewCall, NewTurn,
    ReconcilerLease, RepositoryError, StoredTurn,
};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Integer, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use time::OffsetDateTime;

use crate::errors::{DbError, is_unique_violation};
use crate::models::{CallRow, NewCallRow, TranscriptionRow};
use crate::pool::DbPool;
use crate::retry::{RetryCounter, RetryPolicy};
use crate::schema::{call_transcriptions, calls};

/// `CallRepository` on PostgreSQL.
#[derive(Clone)]
pub struct PgCallRepository {
    pool: DbPool,
    retry: RetryPolicy,
    retries: RetryCounter,
}

impl PgCallRepository {
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

    pub fn pool(&self) -> &DbPool {
        &self.pool
    }

    async fn conn(
        &self,
    ) -> Result<diesel_async::pooled_connection::deadpool::Object<AsyncPgConnection>, DbError> {
        Ok(self.pool.inner.get().await?)
    }

    /// Runs `f` on a pooled connection under the retry policy, with a fresh connection and
    /// the attempt number (1, 2, …) each time. Only for operations safe to repeat.
    async fn with_retry<T, F>(&self, op: &'static str, f: F) -> Result<T, RepositoryError>
    where
        F: for<'c> OnConnection<'c, T> + Clone + Send + Sync,
        T: Send,
    {
        self.retry
            .run(op, &self.retries, |attempt| {
                let f = f.clone();
                async move {
                    let mut conn = self.conn().await?;
                    f(&mut conn, attempt).await
                }
            })
            .await
    }
}

/// An async closure over a connection and the attempt number whose future is `Send` (as
/// `#[async_trait]` needs). Naming the future as an associated type is what lets the bound
/// say so for every lifetime of the connection; diesel-async's `AsyncFunc` does the same.
trait OnConnection<'c, T>:
    AsyncFnOnce(&'c mut AsyncPgConnection, u32) -> Result<T, DbError>
    + FnOnce(&'c mut AsyncPgConnection, u32) -> <Self as OnConnection<'c, T>>::Fut
{
    type Fut: Future<Output = Result<T, DbError>> + Send;
}

impl<'c, T, F, Fut> OnConnection<'c, T> for F
where
    F: AsyncFnOnce(&'c mut AsyncPgConnection, u32) -> Result<T, DbError>
        + FnOnce(&'c mut AsyncPgConnection, u32) -> Fut,
    Fut: Future<Output = Result<T, DbError>> + Send,
{
    type Fut = Fut;
}

/// PostgreSQL keeps microseconds; truncating first makes what we return equal what we stored.
fn micros(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(t.nanosecond() / 1_000 * 1_000)
        .unwrap_or(t)
}

async fn find_by_call_sid(
    conn: &mut AsyncPgConnection,
    call_sid: &str,
) -> Result<Option<CallRow>, DbError> {
    Ok(calls::table
        .filter(calls::call_sid.eq(call_sid))
        .select(CallRow::as_select())
        .first(conn)
        .await
        .optional()?)
}

fn to_call(row: CallRow) -> Result<Call, DbError> {
    Ok(Call::try_from(row)?)
}

#[async_trait]
impl CallRepository for PgCallRepository {
    #[tracing::instrument(skip_all, fields(call_sid = %new.call_sid))]
    async fn create_call(&self, new: &NewCall) -> Result<Call, RepositoryError> {
        let start = micros(new.call_start_time);
        self.with_retry("create_call", async |conn, attempt| {
            let now = OffsetDateTime::now_utc();
            let row = NewCallRow {
                call_sid: new.call_sid.as_str(),
                driver_id: new.driver_id,
                call_start_time: start,
                status: CallStatus::InProgress.as_str(),
                created_at: now,
                updated_at: now,
            };
            let inserted = diesel::insert_into(calls::table)
                .values(&row)
                .returning(CallRow::as_returning())
                .get_result(conn)
                .await
                .map_err(DbError::from);
            match inserted {
                Ok(row) => to_call(row),
                Err(e) => match is_unique_violation(&e) {
                    Some(constraint) => {
                        // A retry after a lost commit finds our own row: that is success.
                        if attempt > 1 {
                            if let Some(existing) =
                                find_by_call_sid(conn, new.call_sid.as_str()).await?
                            {
                                if existing.driver_id == new.driver_id
                                    && existing.call_start_time == start
                                {
                                    return to_call(existing);
                                }
                            }
                        }
                        Err(RepositoryError::Conflict(format!(
                            "call_sid {} already exists ({constraint})",
                            new.call_sid
                        ))
                        .into())
                    }
                    None => Err(e),
                },
            }
        })
        .await
    }

    async fn get_by_call_sid(&self, call_sid: &CallSid) -> Result<Option<Call>, RepositoryError> {
        self.with_retry("get_by_call_sid", async |conn, _| {
            find_by_call_sid(conn, call_sid.as_str())
                .await?
                .map(to_call)
                .transpose()
        })
        .await
    }

    async fn get_by_conversation_id(
        &self,
        conversation_id: &ConversationId,
    ) -> Result<Option<Call>, RepositoryError> {
        self.with_retry("get_by_conversation_id", async |conn, _| {
            calls::table
                .filter(calls::conversation_id.eq(conversation_id.as_str()))
                .select(CallRow::as_select())
                .first(conn)
                .await
                .optional()?
                .map(to_call)
                .transpose()
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(call_sid = %call_sid))]
    async fn set_conversation_id(
        &self,
        call_sid: &CallSid,
        conversation_id: &ConversationId,
    ) -> Result<Call, RepositoryError> {
        self.with_retry("set_conversation_id", async |conn, _| {
            // Only fills an empty slot (or re-sets the same value): idempotent, so retryable.
            let updated = diesel::update(
                calls::table
                    .filter(calls::call_sid.eq(call_sid.as_str()))
                    .filter(
                        calls::conversation_id
                            .is_null()
                            .or(calls::conversation_id.eq(conversation_id.as_str())),
                    ),
            )
            .set((
                calls::conversation_id.eq(conversation_id.as_str()),
                calls::updated_at.eq(OffsetDateTime::now_utc()),
            ))
            .returning(CallRow::as_returning())
            .get_result(conn)
            .await
            .optional();
            match updated {
                Ok(Some(row)) => to_call(row),
                Ok(None) => match find_by_call_sid(conn, call_sid.as_str()).await? {
                    None => Err(RepositoryError::NotFound.into()),
                    Some(row) => Err(RepositoryError::Conflict(format!(
                        "call {call_sid} already has conversation_id {}",
                        row.conversation_id.unwrap_or_default()
                    ))
                    .into()),
                },
                Err(e) => {
                    let e = DbError::from(e);
                    match is_unique_violation(&e) {
                        Some(_) => Err(RepositoryError::Conflict(format!(
                            "conversation_id {conversation_id} belongs to another call"
                        ))
                        .into()),
                        None => Err(e),
                    }
                }
            }
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(call_sid = %call_sid, status = %status))]
    async fn set_status(
        &self,
        call_sid: &CallSid,
        status: CallStatus,
        call_end_time: Option<OffsetDateTime>,
        failure_reason: Option<String>,
    ) -> Result<Call, RepositoryError> {
        let end = call_end_time.map(micros);
        let reason = failure_reason.as_deref();
        self.with_retry("set_status", async |conn, _| {
            diesel::update(calls::table.filter(calls::call_sid.eq(call_sid.as_str())))
                .set((
                    calls::status.eq(status.as_str()),
                    calls::call_end_time.eq(end),
                    calls::failure_reason.eq(reason),
                    calls::updated_at.eq(OffsetDateTime::now_utc()),
                ))
                .returning(CallRow::as_returning())
                .get_result(conn)
                .await
                .optional()?
                .map(to_call)
                .unwrap_or(Err(RepositoryError::NotFound.into()))
        })
        .await
    }

    async fn conversation_id_for(
        &self,
        call_sid: &CallSid,
    ) -> Result<Option<ConversationId>, RepositoryError> {
        Ok(self
            .get_by_call_sid(call_sid)
            .await?
            .ok_or(RepositoryError::NotFound)?
            .conversation_id)
    }

    async fn list_turns(
        &self,
        call_sid: &CallSid,
    ) -> Result<Vec<CallTranscription>, RepositoryError> {
        self.with_retry("list_turns", async |conn, _| {
            let conversation: Option<Option<String>> = calls::table
                .filter(calls::call_sid.eq(call_sid.as_str()))
                .select(calls::conversation_id)
                .first(conn)
                .await
                .optional()?;
            let Some(conversation) = conversation else {
                return Err(RepositoryError::NotFound.into());
            };
            let Some(conversation) = conversation else {
                return Ok(Vec::new());
            };
            let rows: Vec<TranscriptionRow> = call_transcriptions::table
                .filter(call_transcriptions::conversation_id.eq(conversation))
                .order(call_transcriptions::sequence_number.asc())
                .select(TranscriptionRow::as_select())
                .load(conn)
                .await?;
            rows.into_iter()
                .map(|row| CallTranscription::try_from(row).map_err(DbError::from))
                .collect()
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(call_sid = %turn.call_sid))]
    async fn append_turn(&self, turn: &NewTurn) -> Result<AppendOutcome, RepositoryError> {
        // One call of `calls_store_turn` (migrations/0013) in autocommit: lock the Call's
        // row, check for the same turn, insert the next number, commit — one round trip, a
        // cached prepared statement. Atomic, and a replay of a committed append is caught by
        // the duplicate check, so it is retryable.
        let timestamp = micros(turn.timestamp);
        self.with_retry("append_turn", async |conn, _| {
            let result = diesel::select(calls_store_turn(
                turn.call_sid.as_str(),
                turn.speaker.as_str(),
                timestamp,
                &turn.message,
            ))
            .get_result(conn)
            .await?;
            append_outcome(result)
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(call_sid = %call_sid))]
    async fn finish_call(
        &self,
        call_sid: &CallSid,
        finish: &CallFinish,
    ) -> Result<Finished, RepositoryError> {
        // One transaction: the event is applied whole or not at all, so a failed attempt
        // leaves nothing behind and a replay of a committed one changes nothing. Retryable.
        self.with_retry("finish_call", async |conn, _| {
            conn.transaction(async |conn| finish_in_transaction(conn, call_sid, finish).await)
                .await
        })
        .await
    }

    async fn ping(&self) -> Result<(), RepositoryError> {
        // No retries: readiness should report the database as it is now. Its own
        // connection: a pool full of waiting requests does not mean the database is gone.
        let attempt = async {
            let mut conn = self.pool.health.get().await?;
            diesel::sql_query("SELECT 1").execute(&mut conn).await?;
            Ok::<_, DbError>(())
        };
        attempt.await.map_err(DbError::into_repository_error)
    }

    // GET /calls (the query is in listing.rs). A read, so always safe to retry.
    #[tracing::instrument(skip_all, fields(limit = query.limit.get()))]
    async fn list_calls(&self, query: &CallListQuery) -> Result<CallPage, RepositoryError> {
        self.with_retry("list_calls", async |conn, _| {
            crate::listing::list_calls(conn, query).await
        })
        .await
    }

    // Stale-call reconciler (the queries are in reconciler.rs). A read: safe to retry.
    #[tracing::instrument(skip_all, fields(limit = limit))]
    async fn stale_calls(
        &self,
        started_before: OffsetDateTime,
        limit: i64,
    ) -> Result<Vec<Call>, RepositoryError> {
        self.with_retry("stale_calls", async |conn, _| {
            crate::reconciler::stale_calls(conn, started_before, limit.max(0))
                .await?
                .into_iter()
                .map(to_call)
                .collect()
        })
        .await
    }

    async fn defer_reconcile(
        &self,
        call_sid: &CallSid,
        next_check_at: OffsetDateTime,
    ) -> Result<(), RepositoryError> {
        self.with_retry("defer_reconcile", async |conn, _| {
            crate::reconciler::defer(conn, call_sid.as_str(), next_check_at).await
        })
        .await
    }

    async fn try_lock_reconciler(&self) -> Result<Option<ReconcilerLease>, RepositoryError> {
        // Retrying is safe: taking the lease is one statement, and a lease taken by an
        // attempt whose answer was lost expires on its own.
        let holder = self
            .with_retry("try_lock_reconciler", async |conn, _| {
                crate::reconciler::try_take(conn).await
            })
            .await?;
        Ok(holder.map(|holder| {
            ReconcilerLease::new(Box::new(crate::reconciler::PgReconcilerLease::new(
                self.pool.clone(),
                holder,
            )))
        }))
    }
}

async fn finish_in_transaction(
    conn: &mut AsyncPgConnection,
    call_sid: &CallSid,
    finish: &CallFinish,
) -> Result<Finished, DbError> {
    let current = lock_call(conn, call_sid).await?;
    let conversation_id = conversation_after(&current, finish, call_sid)?;
    match &finish.ending {
        Ending::Completed {
            end,
            outcome,
            start,
            transcript,
        } => {
            let mut done = complete(conn, current, conversation_id.as_ref(), *end, outcome).await?;
            if let Some(conversation_id) = &conversation_id {
                (done.turns_inserted, done.turns_renumbered) =
                    reconcile_transcript(conn, conversation_id, *start, transcript).await?;
            }
            Ok(done)
        }
        Ending::Failed { end, reason } => {
            fail(conn, current, conversation_id.as_ref(), *end, reason).await
        }
    }
}

/// The Call, locked for the rest of the transaction. FOR UPDATE conflicts with the appends'
/// FOR NO KEY UPDATE: a turn arriving now waits for this transaction and then numbers
/// itself after the reconciled transcript.
async fn lock_call(conn: &mut AsyncPgConnection, call_sid: &CallSid) -> Result<Call, DbError> {
    let row = calls::table
        .filter(calls::call_sid.eq(call_sid.as_str()))
        .select(CallRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()?
        .ok_or(RepositoryError::NotFound)?;
    to_call(row)
}

/// The conversation_id the Call has after the finish: its own, else the event's; a
/// different one than its own is a conflict.
fn conversation_after(
    current: &Call,
    finish: &CallFinish,
    call_sid: &CallSid,
) -> Result<Option<ConversationId>, DbError> {
    match (&current.conversation_id, &finish.conversation_id) {
        (Some(mine), Some(theirs)) if mine != theirs => Err(RepositoryError::Conflict(format!(
            "call {call_sid} already has conversation_id {mine}"
        ))
        .into()),
        (Some(mine), _) => Ok(Some(mine.clone())),
        (None, theirs) => Ok(theirs.clone()),
    }
}

fn nothing_changed(call: Call) -> Finished {
    Finished {
        call,
        status_changed: false,
        turns_inserted: 0,
        turns_renumbered: 0,
    }
}

fn outcome_json(outcome: &CallOutcome) -> Result<serde_json::Value, DbError> {
    serde_json::to_value(outcome).map_err(|e| RepositoryError::Unexpected(Box::new(e)).into())
}

/// Marks the Call completed with its outcome (and links the conversation) unless it is so
/// already; a Call completed before keeps its end time and failure reason.
async fn complete(
    conn: &mut AsyncPgConnection,
    current: Call,
    conversation_id: Option<&ConversationId>,
    end: OffsetDateTime,
    outcome: &CallOutcome,
) -> Result<Finished, DbError> {
    let link = current.conversation_id.is_none() && conversation_id.is_some();
    let status_changed = current.status != CallStatus::Completed;
    let outcome_changed = current.outcome.as_ref() != Some(outcome);
    if !(status_changed || outcome_changed || link) {
        return Ok(nothing_changed(current));
    }
    let (end, reason) = if status_changed {
        (Some(micros(end)), None)
    } else {
        (current.call_end_time, current.failure_reason.clone())
    };
    let call = write_finish(
        conn,
        &current,
        FinishChanges {
            conversation_id: conversation_id.map(ConversationId::as_str),
            status: CallStatus::Completed.as_str(),
            call_end_time: end,
            failure_reason: reason.as_deref(),
            outcome: Some(outcome_json(outcome)?),
            updated_at: OffsetDateTime::now_utc(),
        },
    )
    .await?;
    Ok(Finished {
        status_changed,
        ..nothing_changed(call)
    })
}

/// Marks the Call failed; only a Call still in progress can turn out never to have
/// connected.
async fn fail(
    conn: &mut AsyncPgConnection,
    current: Call,
    conversation_id: Option<&ConversationId>,
    end: OffsetDateTime,
    reason: &str,
) -> Result<Finished, DbError> {
    if current.status != CallStatus::InProgress {
        return Ok(nothing_changed(current));
    }
    let outcome = current.outcome.as_ref().map(outcome_json).transpose()?;
    let call = write_finish(
        conn,
        &current,
        FinishChanges {
            conversation_id: conversation_id.map(ConversationId::as_str),
            status: CallStatus::Failed.as_str(),
            call_end_time: Some(micros(end)),
            failure_reason: Some(reason),
            outcome,
            updated_at: OffsetDateTime::now_utc(),
        },
    )
    .await?;
    Ok(Finished {
        status_changed: true,
        ..nothing_changed(call)
    })
}

/// Every column a finish writes (NULLs included: the Ending decides each value).
#[derive(AsChangeset)]
#[diesel(table_name = calls, treat_none_as_null = true)]
struct FinishChanges<'a> {
    conversation_id: Option<&'a str>,
    status: &'a str,
    call_end_time: Option<OffsetDateTime>,
    failure_reason: Option<&'a str>,
    outcome: Option<serde_json::Value>,
    updated_at: OffsetDateTime,
}

async fn write_finish(
    conn: &mut AsyncPgConnection,
    current: &Call,
    changes: FinishChanges<'_>,
) -> Result<Call, DbError> {
    let call_sid = &current.call_sid;
    let row = diesel::update(calls::table.filter(calls::id.eq(current.id)))
        .set(changes)
        .returning(CallRow::as_returning())
        .get_result(conn)
        .await
        .map_err(|e| conflict_on_unique(e.into(), call_sid))?;
    to_call(row)
}

/// A unique violation while linking a conversation_id: another Call has it.
fn conflict_on_unique(e: DbError, call_sid: &CallSid) -> DbError {
    match is_unique_violation(&e) {
        Some(constraint) => RepositoryError::Conflict(format!(
            "the conversation_id for {call_sid} belongs to another call ({constraint})"
        ))
        .into(),
        None => e,
    }
}

/// Brings the stored transcript in line with the provider's (see `transcript_merge`).
/// Runs under the Call's row lock. Returns (inserted, renumbered).
async fn reconcile_transcript(
    conn: &mut AsyncPgConnection,
    conversation_id: &ConversationId,
    start: OffsetDateTime,
    transcript: &[EventTurn],
) -> Result<(usize, usize), DbError> {
    let rows: Vec<TranscriptionRow> = call_transcriptions::table
        .filter(call_transcriptions::conversation_id.eq(conversation_id.as_str()))
        .order(call_transcriptions::sequence_number.asc())
        .select(TranscriptionRow::as_select())
        .load(conn)
        .await?;
    let stored = rows
        .into_iter()
        .map(|row| CallTranscription::try_from(row).map_err(DbError::from))
        .collect::<Result<Vec<_>, _>>()?;
    let plan = transcript_merge::plan(&stored, transcript, start);
    if plan.is_noop() {
        return Ok((0, 0));
    }

    let (ids, targets): (Vec<i64>, Vec<i32>) =
        plan.renumbered().map(|(id, _, to)| (id, to)).unzip();
    if !ids.is_empty() {
        // Two steps so the unique (conversation_id, sequence_number) constraint never sees
        // two rows on one number midway: park the moving rows on negative numbers first.
        diesel::sql_query(
            "UPDATE call_transcriptions SET sequence_number = -sequence_number WHERE id = ANY($1)",
        )
        .bind::<Array<BigInt>, _>(&ids)
        .execute(conn)
        .await?;
        diesel::sql_query(
            "UPDATE call_transcriptions AS t SET sequence_number = v.seq \
             FROM unnest($1::bigint[], $2::int[]) AS v(id, seq) WHERE t.id = v.id",
        )
        .bind::<Array<BigInt>, _>(&ids)
        .bind::<Array<Integer>, _>(&targets)
        .execute(conn)
        .await?;
    }

    let mut numbers = Vec::new();
    let mut speakers = Vec::new();
    let mut texts = Vec::new();
    let mut times = Vec::new();
    for (seq, speaker, text, at) in plan.inserted() {
        numbers.push(seq);
        speakers.push(speaker.as_str());
        texts.push(text);
        times.push(micros(at));
    }
    if !numbers.is_empty() {
        diesel::sql_query(
            "INSERT INTO call_transcriptions \
                 (conversation_id, speaker_type, message_text, timestamp, sequence_number, created_at) \
             SELECT $1, v.speaker, v.text, v.at, v.seq, now() \
             FROM unnest($2::text[], $3::text[], $4::timestamptz[], $5::int[]) AS v(speaker, text, at, seq)",
        )
        .bind::<Text, _>(conversation_id.as_str())
        .bind::<Array<Text>, _>(&speakers)
        .bind::<Array<Text>, _>(&texts)
        .bind::<Array<Timestamptz>, _>(&times)
        .bind::<Array<Integer>, _>(&numbers)
        .execute(conn)
        .await?;
    }
    Ok((numbers.len(), ids.len()))
}

diesel::define_sql_function! {
    /// The append of one turn (migrations/0013_append_turn_result): its
    /// `append_turn_result` as (outcome, transcription_id, sequence_number).
    fn calls_store_turn(call_sid: Text, speaker: Text, timestamp: Timestamptz, message: Text) -> Record<(Text, Nullable<BigInt>, Nullable<Integer>)>;
}

/// Reads `calls_store_turn`'s answer, by the outcome's name.
fn append_outcome(
    (outcome, id, seq): (String, Option<i64>, Option<i32>),
) -> Result<AppendOutcome, DbError> {
    let unexpected = || -> DbError {
        RepositoryError::Unexpected(
            format!("calls_store_turn returned ({outcome}, {id:?}, {seq:?})").into(),
        )
        .into()
    };
    let stored = || match (id, seq) {
        (Some(transcription_id), Some(sequence_number)) => Ok(StoredTurn {
            transcription_id,
            sequence_number,
        }),
        _ => Err(unexpected()),
    };
    let incomplete = |status| -> DbError { RepositoryError::Incomplete { status }.into() };
    match outcome.as_str() {
        "created" => Ok(AppendOutcome::Created(stored()?)),
        "duplicate" => Ok(AppendOutcome::Duplicate(stored()?)),
        "unknown_call" => Err(RepositoryError::NotFound.into()),
        "in_progress_without_conversation" => Err(incomplete(CallStatus::InProgress)),
        "completed_without_conversation" => Err(incomplete(CallStatus::Completed)),
        "failed" => Err(incomplete(CallStatus::Failed)),
        _ => Err(unexpected()),
    }
}
