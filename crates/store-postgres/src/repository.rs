use async_trait::async_trait;
use calls_domain::{
    AppendOutcome, Call, CallRepository, CallSid, CallStatus, CallTranscription, ConversationId,
    NewCall, NewTurn, RepositoryError, StoredTurn,
};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Integer, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use time::OffsetDateTime;

use crate::errors::{DbError, is_unique_violation};
use crate::models::{CallRow, NewCallRow, TranscriptionRow};
use crate::pool::DbPool;
use crate::retry::RetryPolicy;
use crate::schema::{call_transcriptions, calls};

/// `CallRepository` on PostgreSQL.
#[derive(Clone)]
pub struct PgCallRepository {
    pool: DbPool,
    retry: RetryPolicy,
}

impl PgCallRepository {
    pub fn new(pool: DbPool, retry: RetryPolicy) -> Self {
        Self { pool, retry }
    }

    pub fn pool(&self) -> &DbPool {
        &self.pool
    }

    async fn conn(
        &self,
    ) -> Result<diesel_async::pooled_connection::deadpool::Object<AsyncPgConnection>, DbError> {
        Ok(self.pool.inner.get().await?)
    }
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
        self.retry
            .run("create_call", |attempt| async move {
                let mut conn = self.conn().await?;
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
                    .get_result(&mut conn)
                    .await
                    .map_err(DbError::from);
                match inserted {
                    Ok(row) => to_call(row),
                    Err(e) => match is_unique_violation(&e) {
                        Some(constraint) => {
                            // A retry after a lost commit finds our own row: that is success.
                            if attempt > 1 {
                                if let Some(existing) =
                                    find_by_call_sid(&mut conn, new.call_sid.as_str()).await?
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
        self.retry
            .run("get_by_call_sid", |_| async move {
                let mut conn = self.conn().await?;
                find_by_call_sid(&mut conn, call_sid.as_str())
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
        self.retry
            .run("get_by_conversation_id", |_| async move {
                let mut conn = self.conn().await?;
                calls::table
                    .filter(calls::conversation_id.eq(conversation_id.as_str()))
                    .select(CallRow::as_select())
                    .first(&mut conn)
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
        self.retry
            .run("set_conversation_id", |_| async move {
                let mut conn = self.conn().await?;
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
                .get_result(&mut conn)
                .await
                .optional();
                match updated {
                    Ok(Some(row)) => to_call(row),
                    Ok(None) => match find_by_call_sid(&mut conn, call_sid.as_str()).await? {
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
        self.retry
            .run("set_status", |_| async move {
                let mut conn = self.conn().await?;
                diesel::update(calls::table.filter(calls::call_sid.eq(call_sid.as_str())))
                    .set((
                        calls::status.eq(status.as_str()),
                        calls::call_end_time.eq(end),
                        calls::failure_reason.eq(reason),
                        calls::updated_at.eq(OffsetDateTime::now_utc()),
                    ))
                    .returning(CallRow::as_returning())
                    .get_result(&mut conn)
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
        self.retry
            .run("list_turns", |_| async move {
                let mut conn = self.conn().await?;
                let conversation: Option<Option<String>> = calls::table
                    .filter(calls::call_sid.eq(call_sid.as_str()))
                    .select(calls::conversation_id)
                    .first(&mut conn)
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
                    .load(&mut conn)
                    .await?;
                rows.into_iter()
                    .map(|row| CallTranscription::try_from(row).map_err(DbError::from))
                    .collect()
            })
            .await
    }

    #[tracing::instrument(skip_all, fields(call_sid = %turn.call_sid))]
    async fn append_turn(&self, turn: &NewTurn) -> Result<AppendOutcome, RepositoryError> {
        // The whole append is one transaction: on any failure it is rolled back, and a
        // replay of a committed append is caught by the duplicate check. So it is retryable.
        self.retry
            .run("append_turn", |_| async move {
                let mut conn = self.conn().await?;
                conn.transaction(async |conn| append_in_transaction(conn, turn).await)
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
}

async fn append_in_transaction(
    conn: &mut AsyncPgConnection,
    turn: &NewTurn,
) -> Result<AppendOutcome, DbError> {
    // Lock the Call's row: appends for one call are serialized here, across connections,
    // processes and server instances; appends for other calls do not wait.
    let call: Option<(Option<String>, String)> = calls::table
        .filter(calls::call_sid.eq(turn.call_sid.as_str()))
        .select((calls::conversation_id, calls::status))
        .for_no_key_update()
        .first(conn)
        .await
        .optional()?;
    let Some((conversation_id, status)) = call else {
        return Err(RepositoryError::NotFound.into());
    };
    let status: CallStatus = status
        .parse()
        .map_err(|e| RepositoryError::Unexpected(Box::new(e)))?;
    // A failed Call takes no turns, even when it got a conversation_id (SPEC).
    let conversation_id = match conversation_id {
        Some(c) if status != CallStatus::Failed => c,
        _ => return Err(RepositoryError::Incomplete { status }.into()),
    };
    // One statement, so the lock is held for one round trip plus the commit: the same
    // turn stored before wins (its ids come back); otherwise the next number is inserted.
    // It runs after the lock statement, so its snapshot sees every append committed before.
    let row: AppendRow = diesel::sql_query(APPEND_SQL)
        .bind::<Text, _>(&conversation_id)
        .bind::<Text, _>(turn.speaker.as_str())
        .bind::<Timestamptz, _>(micros(turn.timestamp))
        .bind::<Text, _>(&turn.message)
        .get_result(conn)
        .await?;
    let stored = StoredTurn {
        transcription_id: row.id,
        sequence_number: row.sequence_number,
    };
    Ok(if row.duplicate {
        AppendOutcome::Duplicate(stored)
    } else {
        AppendOutcome::Created(stored)
    })
}

const APPEND_SQL: &str = "
WITH dup AS (
    SELECT id, sequence_number FROM call_transcriptions
    WHERE conversation_id = $1 AND speaker_type = $2 AND timestamp = $3 AND message_text = $4
    LIMIT 1
), ins AS (
    INSERT INTO call_transcriptions
        (conversation_id, speaker_type, message_text, timestamp, sequence_number, created_at)
    SELECT $1, $2, $4, $3,
           COALESCE((SELECT max(sequence_number) FROM call_transcriptions WHERE conversation_id = $1), 0) + 1,
           now()
    WHERE NOT EXISTS (SELECT 1 FROM dup)
    RETURNING id, sequence_number
)
SELECT id, sequence_number, false AS duplicate FROM ins
UNION ALL
SELECT id, sequence_number, true AS duplicate FROM dup";

#[derive(QueryableByName)]
struct AppendRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Integer)]
    sequence_number: i32,
    #[diesel(sql_type = Bool)]
    duplicate: bool,
}
