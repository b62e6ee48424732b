//! TEMPORARY until batches-core's PostgreSQL batch repository lands: a BatchRepository
//! that is always unavailable, so the server compiles. Removed on merge.
#![allow(dead_code)]

use calls_domain::RepositoryError;
use calls_domain::models::*;
use calls_domain::ports::*;
use calls_store_postgres::{DbPool, RetryPolicy};
use time::OffsetDateTime;

pub struct PgBatchRepository;

impl PgBatchRepository {
    pub fn new(_pool: DbPool, _retry: RetryPolicy) -> Self {
        Self
    }
}

fn down<T>() -> Result<T, RepositoryError> {
    Err(RepositoryError::Unavailable(
        "batch store not wired yet".into(),
    ))
}

#[async_trait::async_trait]
impl BatchRepository for PgBatchRepository {
    async fn create_batch(&self, _: &NewBatch) -> Result<BatchView, RepositoryError> {
        down()
    }
    async fn get_batch(&self, _: &BatchId) -> Result<Option<BatchView>, RepositoryError> {
        down()
    }
    async fn list_batches(&self, _: &BatchListQuery) -> Result<BatchPage, RepositoryError> {
        down()
    }
    async fn cancel_batch(
        &self,
        _: &BatchId,
        _: OffsetDateTime,
    ) -> Result<Option<BatchView>, RepositoryError> {
        down()
    }
    async fn claim_due(&self, _: &ClaimRequest) -> Result<Vec<ClaimedAttempt>, RepositoryError> {
        down()
    }
    async fn start_attempt(
        &self,
        _: &ClaimedAttempt,
        _: OffsetDateTime,
    ) -> Result<bool, RepositoryError> {
        down()
    }
    async fn record_check(
        &self,
        _: &ClaimedAttempt,
        _: &LastCheck,
        _: Option<Due>,
    ) -> Result<RecipientState, RepositoryError> {
        down()
    }
    async fn record_placed(
        &self,
        _: &ClaimedAttempt,
        _: &ConversationId,
    ) -> Result<RecipientState, RepositoryError> {
        down()
    }
    async fn record_dial_failure(
        &self,
        _: &ClaimedAttempt,
        _: &str,
        _: bool,
        _: OffsetDateTime,
    ) -> Result<RecipientState, RepositoryError> {
        down()
    }
    async fn settle_call(
        &self,
        _: &CallSid,
        _: bool,
        _: OffsetDateTime,
    ) -> Result<Option<RecipientState>, RepositoryError> {
        down()
    }
    async fn sweep(
        &self,
        _: OffsetDateTime,
        _: OffsetDateTime,
    ) -> Result<SweepOutcome, RepositoryError> {
        down()
    }
}
