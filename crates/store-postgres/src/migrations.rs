//! The embedded migration history and the `migrate` command behind both
//! `calls-server migrate` and `cargo xtask migrate`.

use diesel::connection::SimpleConnection;
use diesel::migration::{Migration, MigrationConnection, MigrationSource};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::{Bool, Text};
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use secrecy::ExposeSecret;

use crate::errors::StoreError;
use crate::pool::{DbConfig, SchemaName};

pub(crate) const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

/// The version of the legacy schema, the one `--baseline` marks as applied.
const LEGACY_VERSION: u32 = 1;

type SyncConn = AsyncConnectionWrapper<AsyncPgConnection>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrateCommand {
    /// Apply every pending migration.
    Latest,
    /// Go up or down to exactly this version (`0` reverts everything).
    To(u32),
    /// Revert the last applied migration.
    Revert,
    /// Adopt a legacy database: mark the legacy-schema migration applied when its tables
    /// already exist and no migration history does.
    Baseline,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    pub applied: Vec<String>,
    pub reverted: Vec<String>,
    pub baselined: Option<String>,
    /// Applied versions afterwards, oldest first.
    pub current: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    pub applied: Vec<String>,
    pub pending: Vec<String>,
}

/// Every migration's name (`0001_legacy_schema`, …), oldest first.
pub fn migration_names() -> Result<Vec<String>, StoreError> {
    let mut names: Vec<String> = all_migrations()?
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    names.sort();
    Ok(names)
}

fn all_migrations() -> Result<Vec<Box<dyn Migration<Pg>>>, StoreError> {
    MigrationSource::<Pg>::migrations(&MIGRATIONS).map_err(StoreError::Migration)
}

fn version_number(version: &str) -> Option<u32> {
    version.trim_start_matches('0').parse().ok().or_else(|| {
        // "0000" and friends
        version.chars().all(|c| c == '0').then_some(0)
    })
}

/// Runs a migrate command. Migrations are sync in diesel, so they run on a thread of
/// their own (with its own small runtime inside the connection wrapper).
pub async fn migrate(
    config: &DbConfig,
    command: MigrateCommand,
) -> Result<MigrationReport, StoreError> {
    let config = config.clone();
    run_blocking(move || {
        let mut conn = open(config.url.expose_secret(), &config.schema)?;
        lock(&mut conn, &config.schema)?;
        let result = migrate_locked(&mut conn, &config.schema, &command);
        let _ = conn.batch_execute(&unlock_sql(&config.schema));
        result
    })
    .await
}

/// Applied and pending versions.
pub async fn migration_status(config: &DbConfig) -> Result<MigrationStatus, StoreError> {
    let config = config.clone();
    run_blocking(move || {
        let mut conn = open(config.url.expose_secret(), &config.schema)?;
        let applied = applied_versions(&mut conn)?;
        let pending = all_migrations()?
            .iter()
            .map(|m| m.name().version().to_string())
            .filter(|v| !applied.contains(v))
            .collect();
        Ok(MigrationStatus { applied, pending })
    })
    .await
}

async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("migrations".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| StoreError::Migration(Box::new(e)))?;
    rx.await
        .map_err(|_| StoreError::Refused("the migration thread panicked".into()))?
}

fn open(url: &str, schema: &SchemaName) -> Result<SyncConn, StoreError> {
    let mut conn = SyncConn::establish(url)?;
    conn.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {q}; SET search_path TO {q}; SET application_name = 'calls-migrate'",
        q = schema.quoted()
    ))?;
    Ok(conn)
}

/// One migrator per schema at a time (several instances may start together).
fn lock(conn: &mut SyncConn, schema: &SchemaName) -> Result<(), StoreError> {
    conn.batch_execute(&format!(
        "SELECT pg_advisory_lock(hashtext('calls-migrate:' || '{}'))",
        schema.as_str()
    ))?;
    Ok(())
}

fn unlock_sql(schema: &SchemaName) -> String {
    format!(
        "SELECT pg_advisory_unlock(hashtext('calls-migrate:' || '{}'))",
        schema.as_str()
    )
}

#[derive(QueryableByName)]
struct Exists {
    #[diesel(sql_type = Bool)]
    exists: bool,
}

fn table_exists(conn: &mut SyncConn, schema: &SchemaName, table: &str) -> Result<bool, StoreError> {
    let row: Exists = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM information_schema.tables \
         WHERE table_schema = $1 AND table_name = $2) AS exists",
    )
    .bind::<Text, _>(schema.as_str())
    .bind::<Text, _>(table)
    .get_result(conn)?;
    Ok(row.exists)
}

fn applied_versions(conn: &mut SyncConn) -> Result<Vec<String>, StoreError> {
    let mut versions: Vec<String> = conn
        .applied_migrations()
        .map_err(StoreError::Migration)?
        .into_iter()
        .map(|v| v.to_string())
        .collect();
    versions.sort();
    Ok(versions)
}

fn migrate_locked(
    conn: &mut SyncConn,
    schema: &SchemaName,
    command: &MigrateCommand,
) -> Result<MigrationReport, StoreError> {
    let mut report = MigrationReport::default();
    let history_exists = table_exists(conn, schema, "__diesel_schema_migrations")?;
    let has_history = history_exists && !applied_versions(conn)?.is_empty();
    let legacy_tables = table_exists(conn, schema, "calls")?;

    if *command == MigrateCommand::Baseline {
        if has_history {
            return Err(StoreError::Refused(format!(
                "schema {schema} already has a migration history; nothing to baseline"
            )));
        }
        if !legacy_tables {
            return Err(StoreError::Refused(format!(
                "schema {schema} has no legacy `calls` table; run `migrate` without --baseline"
            )));
        }
        MigrationConnection::setup(conn).map_err(StoreError::Query)?;
        let legacy = all_migrations()?
            .into_iter()
            .find(|m| version_number(&m.name().version().to_string()) == Some(LEGACY_VERSION))
            .ok_or_else(|| StoreError::Refused("legacy migration missing".into()))?;
        let version = legacy.name().version().to_string();
        diesel::sql_query("INSERT INTO __diesel_schema_migrations (version) VALUES ($1)")
            .bind::<Text, _>(&version)
            .execute(conn)?;
        tracing::info!(%version, "baselined legacy database");
        report.baselined = Some(version);
        report.current = applied_versions(conn)?;
        return Ok(report);
    }

    if !has_history && legacy_tables {
        return Err(StoreError::Refused(format!(
            "schema {schema} has the legacy tables but no migration history: adopt it with \
             `migrate --baseline` first (see docs/operations.md)"
        )));
    }

    match command {
        MigrateCommand::Latest => {
            for version in conn
                .run_pending_migrations(MIGRATIONS)
                .map_err(StoreError::Migration)?
            {
                tracing::info!(%version, "applied migration");
                report.applied.push(version.to_string());
            }
        }
        MigrateCommand::Revert => {
            let version = conn
                .revert_last_migration(MIGRATIONS)
                .map_err(StoreError::Migration)?;
            tracing::info!(%version, "reverted migration");
            report.reverted.push(version.to_string());
        }
        MigrateCommand::To(target) => {
            let known = all_migrations()?
                .iter()
                .filter_map(|m| version_number(&m.name().version().to_string()))
                .any(|v| v == *target);
            if *target != 0 && !known {
                return Err(StoreError::Refused(format!(
                    "unknown migration version {target}"
                )));
            }
            // Down first: revert while the newest applied version is above the target.
            loop {
                let applied = applied_versions(conn)?;
                let Some(last) = applied.last() else { break };
                if version_number(last).is_none_or(|v| v <= *target) {
                    break;
                }
                let version = conn
                    .revert_last_migration(MIGRATIONS)
                    .map_err(StoreError::Migration)?;
                tracing::info!(%version, "reverted migration");
                report.reverted.push(version.to_string());
            }
            // Then up, one at a time, to the target.
            loop {
                let pending = conn
                    .pending_migrations(MIGRATIONS)
                    .map_err(StoreError::Migration)?;
                let Some(next) = pending.first() else { break };
                if version_number(&next.name().version().to_string()).is_none_or(|v| v > *target) {
                    break;
                }
                let version = conn
                    .run_migration(next.as_ref())
                    .map_err(StoreError::Migration)?;
                tracing::info!(%version, "applied migration");
                report.applied.push(version.to_string());
            }
        }
        MigrateCommand::Baseline => {}
    }
    report.current = applied_versions(conn)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_as_numbers() {
        assert_eq!(version_number("0001"), Some(1));
        assert_eq!(version_number("0007"), Some(7));
        assert_eq!(version_number("0000"), Some(0));
        assert_eq!(version_number("x"), None);
    }

    #[test]
    fn the_history_replays_the_seed_story_in_order() {
        let names = migration_names().expect("embedded");
        assert_eq!(
            names,
            [
                "0001_legacy_schema",
                "0002_add_call_sid",
                "0003_backfill_call_sid",
                "0004_call_sid_constraints",
                "0005_conversation_id_nullable",
                "0006_final_column_types",
                "0007_transcript_ordering_and_indexes",
                "0008_call_outcome",
                "0009_calls_listing_indexes",
                "0010_append_turn_function",
                "0011_batches",
                "0012_console",
                "0013_append_turn_result",
                "0014_reconcile_lease_and_checks",
                "0015_append_without_scans",
            ]
        );
    }
}
