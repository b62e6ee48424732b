use async_trait::async_trait;
use calls_domain::RepositoryError;
use calls_domain::ports::{ConsoleSessions, SessionHash};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use time::OffsetDateTime;

use crate::errors::{DbError, is_unique_violation};
use crate::pool::DbPool;
use crate::retry::{RetryCounter, RetryPolicy};
use crate::schema::console_sessions;

/// [`ConsoleSessions`] in the `console_sessions` table, on the service's pool.
#[derive(Clone)]
pub struct PgConsoleSessions {
    pool: DbPool,
    retry: RetryPolicy,
    retries: RetryCounter,
}

impl PgConsoleSessions {
    pub fn new(pool: DbPool, retry: RetryPolicy) -> Self {
        Self {
            pool,
            retry,
            retries: RetryCounter::default(),
        }
    }
}

#[async_trait]
impl ConsoleSessions for PgConsoleSessions {
    async fn create(
        &self,
        hash: &SessionHash,
        expires_at: OffsetDateTime,
    ) -> Result<(), RepositoryError> {
        self.retry
            .run("create_console_session", &self.retries, |_| async move {
                let mut conn = self.pool.inner.get().await?;
                let inserted = diesel::insert_into(console_sessions::table)
                    .values((
                        console_sessions::id_hash.eq(&hash.0[..]),
                        console_sessions::expires_at.eq(expires_at),
                    ))
                    .execute(&mut conn)
                    .await
                    .map_err(DbError::from);
                match inserted {
                    Ok(_) => Ok(()),
                    Err(e) if is_unique_violation(&e).is_some() => {
                        Err(RepositoryError::Conflict("console session exists".to_owned()).into())
                    }
                    Err(e) => Err(e),
                }
            })
            .await
    }

    async fn is_active(
        &self,
        hash: &SessionHash,
        now: OffsetDateTime,
    ) -> Result<bool, RepositoryError> {
        self.retry
            .run("find_console_session", &self.retries, |_| async move {
                let mut conn = self.pool.inner.get().await?;
                let found: Option<Vec<u8>> = console_sessions::table
                    .filter(console_sessions::id_hash.eq(&hash.0[..]))
                    .filter(console_sessions::expires_at.gt(now))
                    .select(console_sessions::id_hash)
                    .first(&mut conn)
                    .await
                    .optional()?;
                Ok(found.is_some())
            })
            .await
    }

    async fn delete(&self, hash: &SessionHash) -> Result<(), RepositoryError> {
        self.retry
            .run("delete_console_session", &self.retries, |_| async move {
                let mut conn = self.pool.inner.get().await?;
                diesel::delete(
                    console_sessions::table.filter(console_sessions::id_hash.eq(&hash.0[..])),
                )
                .execute(&mut conn)
                .await?;
                Ok(())
            })
            .await
    }

    async fn purge_expired(&self, now: OffsetDateTime) -> Result<u64, RepositoryError> {
        self.retry
            .run("purge_console_sessions", &self.retries, |_| async move {
                let mut conn = self.pool.inner.get().await?;
                let n = diesel::delete(
                    console_sessions::table.filter(console_sessions::expires_at.le(now)),
                )
                .execute(&mut conn)
                .await?;
                Ok(u64::try_from(n).unwrap_or(0))
            })
            .await
    }
}
