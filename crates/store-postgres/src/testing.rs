//! `TestDatabase`: each test gets its own freshly migrated schema on the server named by
//! `TEST_DATABASE_URL` (or `DATABASE_URL`), dropped again when the value is dropped. This
//! also exercises `DATABASE_SCHEMA` handling on every connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_async::pooled_connection::deadpool::Object;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use secrecy::ExposeSecret;

use crate::{
    DbConfig, DbPool, MigrateCommand, PgBatchRepository, PgCallRepository, RetryPolicy, SchemaName,
    build_pool, migrate,
};

pub struct TestDatabase {
    config: DbConfig,
    pool: DbPool,
}

/// The server URL for tests; `cargo xtask test` sets it.
pub fn test_database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| {
            panic!(
                "set TEST_DATABASE_URL or DATABASE_URL, or run the tests with `cargo xtask test`"
            )
        })
}

fn unique_schema() -> SchemaName {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = format!(
        "test_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos
    );
    SchemaName::parse(&name).unwrap_or_default()
}

impl TestDatabase {
    /// A schema migrated to the latest version.
    pub async fn new() -> Self {
        let db = Self::empty().await;
        migrate(&db.config, MigrateCommand::Latest)
            .await
            .unwrap_or_else(|e| panic!("migrating the test schema failed: {e:?}"));
        db
    }

    /// An empty schema (created, nothing in it), for migration tests.
    pub async fn empty() -> Self {
        let schema = unique_schema();
        let url = test_database_url();
        let mut admin = AsyncPgConnection::establish(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test database: {e}"));
        admin
            .batch_execute(&format!("CREATE SCHEMA {}", schema.quoted()))
            .await
            .unwrap_or_else(|e| panic!("cannot create test schema: {e}"));
        let mut config = DbConfig::new(url, schema);
        config.pool_size = 8;
        config.wait_timeout = Duration::from_secs(30);
        let pool = build_pool(&config).unwrap_or_else(|e| panic!("pool: {e}"));
        Self { config, pool }
    }

    pub fn config(&self) -> &DbConfig {
        &self.config
    }

    pub fn pool(&self) -> &DbPool {
        &self.pool
    }

    pub fn schema(&self) -> &SchemaName {
        &self.config.schema
    }

    pub fn repository(&self) -> PgCallRepository {
        PgCallRepository::new(self.pool.clone(), RetryPolicy::default())
    }

    pub fn batch_repository(&self) -> PgBatchRepository {
        PgBatchRepository::new(self.pool.clone(), RetryPolicy::default())
    }

    /// A pooled connection with the test schema on its search_path.
    pub async fn conn(&self) -> Object<AsyncPgConnection> {
        self.pool
            .inner
            .get()
            .await
            .unwrap_or_else(|e| panic!("test connection: {e}"))
    }

    /// A connection of its own, outside the pool.
    pub async fn new_connection(&self) -> AsyncPgConnection {
        crate::pool::connect(&self.config)
            .await
            .unwrap_or_else(|e| panic!("test connection: {e}"))
    }

    /// Terminates every server connection of this schema's pools (like an admin or a
    /// failover would), from a connection of its own; returns how many were killed.
    pub async fn terminate_connections(&self) -> usize {
        let mut admin = AsyncPgConnection::establish(self.config.url.expose_secret())
            .await
            .unwrap_or_else(|e| panic!("admin connection: {e}"));
        #[derive(QueryableByName)]
        struct Killed {
            #[diesel(sql_type = diesel::sql_types::Bool)]
            killed: bool,
        }
        let rows: Vec<Killed> = diesel::sql_query(
            "SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity WHERE application_name = $1",
        )
        .bind::<Text, _>(crate::application_name(self.schema()))
        .load(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("terminate: {e}"));
        rows.iter().filter(|r| r.killed).count()
    }

    pub async fn execute(&self, sql: &str) {
        self.conn()
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// A one-column text query, for assertions (`SELECT x::text AS value …`).
    pub async fn strings(&self, sql: &str) -> Vec<String> {
        strings_on(&self.pool, sql).await
    }

    /// A text description of everything in the schema (tables, columns, constraints,
    /// indexes, enum and composite types, functions, sequences), for comparing schemas.
    pub async fn schema_fingerprint(&self) -> Vec<String> {
        let schema = self.schema().as_str().replace('\'', "");
        let sql = format!(
            "SELECT value FROM (
               SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type || ' '
                      || COALESCE(character_maximum_length::text, '') || ' ' || is_nullable
                      || ' ' || COALESCE(regexp_replace(column_default, '{schema}\\.', '', 'g'), '')
                      || ' ' || udt_name AS value
                 FROM information_schema.columns WHERE table_schema = '{schema}'
               UNION ALL
               SELECT 'constraint ' || conrelid::regclass::text || ' ' || conname || ' '
                      || pg_get_constraintdef(oid)
                 FROM pg_constraint WHERE connamespace = '{schema}'::regnamespace
               UNION ALL
               SELECT 'index ' || indexname || ' ' || regexp_replace(indexdef, '{schema}\\.', '', 'g')
                 FROM pg_indexes WHERE schemaname = '{schema}'
               UNION ALL
               SELECT 'type ' || t.typname || ' ' || COALESCE(string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder), '')
                 FROM pg_type t LEFT JOIN pg_enum e ON e.enumtypid = t.oid
                WHERE t.typnamespace = '{schema}'::regnamespace AND t.typtype = 'e'
                GROUP BY t.typname
               UNION ALL
               SELECT 'composite ' || t.typname || ' '
                      || string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ',' ORDER BY a.attnum)
                 FROM pg_type t JOIN pg_class c ON c.oid = t.typrelid AND c.relkind = 'c'
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
                WHERE t.typnamespace = '{schema}'::regnamespace
                GROUP BY t.typname
               UNION ALL
               SELECT 'function ' || p.proname || '(' || pg_get_function_identity_arguments(p.oid)
                      || ') ' || pg_get_function_result(p.oid) || ' ' || md5(p.prosrc)
                 FROM pg_proc p WHERE p.pronamespace = '{schema}'::regnamespace
               UNION ALL
               SELECT 'sequence ' || sequence_name || ' ' || data_type
                 FROM information_schema.sequences WHERE sequence_schema = '{schema}'
             ) AS s ORDER BY value"
        );
        self.strings(&sql).await
    }
}

/// A one-column text query on a connection of `pool` (`SELECT x::text AS value …`).
pub async fn strings_on(pool: &DbPool, sql: &str) -> Vec<String> {
    #[derive(QueryableByName)]
    struct Value {
        #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
        value: Option<String>,
    }
    let mut conn = pool
        .inner
        .get()
        .await
        .unwrap_or_else(|e| panic!("test connection: {e}"));
    let rows: Vec<Value> = diesel::sql_query(sql)
        .load(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.into_iter()
        .map(|r| r.value.unwrap_or_else(|| "NULL".into()))
        .collect()
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let url = self.config.url.expose_secret().to_owned();
        let sql = format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            self.config.schema.quoted()
        );
        // Drop cannot be async: use a thread with its own runtime, and don't panic here.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut conn) = AsyncPgConnection::establish(&url).await {
                    let _ = conn.batch_execute(&sql).await;
                }
            });
        })
        .join();
    }
}
