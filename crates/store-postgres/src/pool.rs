use std::fmt;
use std::time::Duration;

use diesel::ConnectionError;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use futures_util::FutureExt;
use secrecy::{ExposeSecret, SecretString};

use crate::errors::StoreError;

/// A PostgreSQL schema name from `DATABASE_SCHEMA`; only plain identifiers are accepted, so
/// it can be quoted into `SET search_path` without any escaping question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaName(String);

impl SchemaName {
    pub fn parse(name: &str) -> Result<Self, StoreError> {
        let mut chars = name.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !first_ok
            || name.len() > 63
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(StoreError::InvalidSchemaName(name.to_owned()));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The double-quoted identifier for SQL text.
    pub(crate) fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

impl Default for SchemaName {
    fn default() -> Self {
        Self("public".to_owned())
    }
}

impl fmt::Display for SchemaName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How to reach the database, and how long anything may wait on it.
///
/// The waits are chosen so that a request never outlives its caller's patience: ElevenLabs'
/// webhook tool gives up after `response_timeout_secs` (20 s in our tool config; its
/// default is about 20 s too). A pool that stays full, a row lock that is never released or
/// a statement that never ends each fail one attempt within seconds instead.
/// `Debug` shows the URL as `[REDACTED]`: it may carry a password.
#[derive(Debug, Clone)]
pub struct DbConfig {
    pub url: SecretString,
    pub schema: SchemaName,
    pub pool_size: usize,
    /// How long a request waits for a free connection. Not retried: a pool that is full now
    /// will not be empty 50 ms later, and every waiter holds a worker.
    pub wait_timeout: Duration,
    /// How long establishing one connection may take.
    pub connect_timeout: Duration,
    /// `statement_timeout` of every pooled connection: the longest a query may run.
    pub statement_timeout: Duration,
    /// `lock_timeout` of every pooled connection: the longest a statement waits for a row
    /// lock (the append waits for the Call's row; a stuck transaction holding it must not
    /// hold every webhook of that call).
    pub lock_timeout: Duration,
}

/// Defaults of [`DbConfig`]; docs/operations.md explains the figures.
pub const DEFAULT_POOL_WAIT: Duration = Duration::from_secs(2);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Well under the pool wait: requests stuck behind one locked Call give their connection
/// back quickly, so they cannot starve requests for other Calls (`cargo xtask drill`, 4).
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_millis(500);

impl DbConfig {
    pub fn new(url: impl Into<SecretString>, schema: SchemaName) -> Self {
        Self {
            url: url.into(),
            schema,
            pool_size: 10,
            wait_timeout: DEFAULT_POOL_WAIT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        }
    }
}

/// SQL run on every new connection: the schema, and a name that shows in pg_stat_activity
/// (`calls-server/<schema>`, so an operator can tell deployments apart).
pub(crate) fn session_setup_sql(schema: &SchemaName) -> String {
    format!(
        "SET search_path TO {}; SET application_name = '{}'",
        schema.quoted(),
        application_name(schema)
    )
}

/// Pooled connections (the service's requests) also get the statement and lock timeouts.
/// Migrations and the backfill use their own connections without them: DDL and long
/// batches may legitimately run longer.
fn pooled_session_setup_sql(config: &DbConfig) -> String {
    format!(
        "{}; SET statement_timeout = {}; SET lock_timeout = {}",
        session_setup_sql(&config.schema),
        millis(config.statement_timeout),
        millis(config.lock_timeout)
    )
}

/// Whole milliseconds, at least 1 (0 would mean "no timeout" to PostgreSQL).
fn millis(d: Duration) -> u128 {
    d.as_millis().max(1)
}

pub fn application_name(schema: &SchemaName) -> String {
    format!("calls-server/{}", schema.as_str())
}

/// Opens one connection with the session set up (used outside the pool, e.g. migrations).
pub(crate) async fn connect(config: &DbConfig) -> Result<AsyncPgConnection, ConnectionError> {
    establish(
        config.url.expose_secret(),
        &session_setup_sql(&config.schema),
        config.connect_timeout,
    )
    .await
}

async fn establish(
    url: &str,
    setup_sql: &str,
    timeout: Duration,
) -> Result<AsyncPgConnection, ConnectionError> {
    let mut conn = tokio::time::timeout(timeout, AsyncPgConnection::establish(url))
        .await
        .map_err(|_| ConnectionError::BadConnection("connect timed out".to_owned()))??;
    conn.batch_execute(setup_sql)
        .await
        .map_err(ConnectionError::CouldntSetupConfiguration)?;
    Ok(conn)
}

/// The connection pool, cheap to clone.
#[derive(Clone)]
pub struct DbPool {
    pub(crate) inner: Pool<AsyncPgConnection>,
    /// One connection of its own for readiness, so that `/readyz` reports whether the
    /// database answers even while requests have taken every connection of `inner`.
    pub(crate) health: Pool<AsyncPgConnection>,
    pub(crate) schema: SchemaName,
}

/// A snapshot of the pool for metrics and diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub max_size: usize,
    pub size: usize,
    pub available: usize,
    pub in_use: usize,
    pub waiting: usize,
}

impl DbPool {
    pub fn stats(&self) -> PoolStats {
        let status = self.inner.status();
        PoolStats {
            max_size: status.max_size,
            size: status.size,
            available: status.available,
            in_use: status.size.saturating_sub(status.available),
            waiting: status.waiting,
        }
    }

    pub fn schema(&self) -> &SchemaName {
        &self.schema
    }
}

/// Builds the pool (and the one-connection readiness pool); no connection is opened until
/// one is needed, so the service can start (and report not-ready) while the database is
/// down.
pub fn build_pool(config: &DbConfig) -> Result<DbPool, StoreError> {
    let inner = pool(config, config.pool_size.max(1), config.wait_timeout)?;
    // A readiness probe waits at most this long for the previous probe's connection.
    let health = pool(config, 1, config.wait_timeout.min(Duration::from_secs(1)))?;
    Ok(DbPool {
        inner,
        health,
        schema: config.schema.clone(),
    })
}

fn pool(
    config: &DbConfig,
    size: usize,
    wait: Duration,
) -> Result<Pool<AsyncPgConnection>, StoreError> {
    let setup_sql = pooled_session_setup_sql(config);
    let connect_timeout = config.connect_timeout;
    let mut manager_config = ManagerConfig::<AsyncPgConnection>::default();
    // No `SELECT 1` per checkout (a round trip per turn): a connection the server closed is
    // dropped as broken when recycled, and any other dead one fails its first query with a
    // transient error, which the repository retries on a fresh connection.
    manager_config.recycling_method = diesel_async::pooled_connection::RecyclingMethod::Fast;
    manager_config.custom_setup = Box::new(move |url| {
        let setup_sql = setup_sql.clone();
        async move { establish(url, &setup_sql, connect_timeout).await }.boxed()
    });
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
        config.url.expose_secret(),
        manager_config,
    );
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(wait))
        .create_timeout(Some(config.connect_timeout))
        .recycle_timeout(Some(config.connect_timeout))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Pool(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(SchemaName::parse("dev").is_ok());
        assert!(SchemaName::parse("test_abc_123").is_ok());
        for bad in [
            "",
            "1abc",
            "a-b",
            "a\"b",
            "x; DROP TABLE calls",
            &"a".repeat(64),
        ] {
            assert!(SchemaName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pooled_connections_get_the_timeouts_in_milliseconds() {
        let mut config = DbConfig::new("postgres://x/y", SchemaName::default());
        config.statement_timeout = Duration::from_millis(1500);
        config.lock_timeout = Duration::ZERO;
        let sql = pooled_session_setup_sql(&config);
        assert!(
            sql.ends_with("SET statement_timeout = 1500; SET lock_timeout = 1"),
            "{sql}"
        );
        assert!(!session_setup_sql(&config.schema).contains("timeout"));
    }
}
