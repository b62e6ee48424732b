//! PostgreSQL adapter of the calls domain: the `CallRepository` on diesel-async with a
//! deadpool pool, the embedded migrations (with baseline adoption of a legacy database),
//! and the batched call_sid backfill.
//!
//! Errors: functions here return [`StoreError`] for operational commands (migrate,
//! backfill) and the domain's `RepositoryError` from the repository; diesel and pool
//! errors never leave this crate.

mod backfill;
mod batches;
mod console;
mod errors;
mod listing;
mod migrations;
mod models;
mod pool;
mod reconciler;
mod repository;
mod retry;
mod schema;
#[cfg(feature = "testing")]
pub mod testing;

pub use backfill::{BackfillOptions, BackfillReport, backfill_call_sids};
pub use batches::PgBatchRepository;
pub use console::{CallChange, ChangeFeed, ChangeNotifier, PgConsoleSessions, channel_name};
pub use errors::StoreError;
pub use migrations::{
    MigrateCommand, MigrationReport, MigrationStatus, migrate, migration_names, migration_status,
};
pub use pool::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_LOCK_TIMEOUT, DEFAULT_POOL_WAIT, DEFAULT_STATEMENT_TIMEOUT,
    DbConfig, DbPool, PoolStats, SchemaName, application_name, build_pool,
};
pub use repository::PgCallRepository;
pub use retry::{RetryCounter, RetryPolicy};
