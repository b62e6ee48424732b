use std::fmt;
use std::time::Duration;

use diesel::ConnectionError;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use futures_util::FutureExt;

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

/// How to reach the database.
#[derive(Clone)]
pub struct DbConfig {
    pub url: String,
    pub schema: SchemaName,
    pub pool_size: usize,
    /// How long a request waits for a free connection before the pool gives up.
    pub wait_timeout: Duration,
    /// How long establishing one connection may take.
    pub connect_timeout: Duration,
}

impl fmt::Debug for DbConfig {
    // The URL may carry a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbConfig")
            .field("url", &redact_url(&self.url))
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

impl DbConfig {
    pub fn new(url: impl Into<String>, schema: SchemaName) -> Self {
        Self {
            url: url.into(),
            schema,
            pool_size: 10,
            wait_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
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

pub fn application_name(schema: &SchemaName) -> String {
    format!("calls-server/{}", schema.as_str())
}

/// Opens one connection with the session set up (used outside the pool, e.g. migrations).
pub(crate) async fn connect(config: &DbConfig) -> Result<AsyncPgConnection, ConnectionError> {
    establish(
        &config.url,
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

/// Builds the pool; no connection is opened until one is needed, so the service can start
/// (and report not-ready) while the database is down.
pub fn build_pool(config: &DbConfig) -> Result<DbPool, StoreError> {
    let setup_sql = session_setup_sql(&config.schema);
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
        &config.url,
        manager_config,
    );
    let inner = Pool::builder(manager)
        .max_size(config.pool_size.max(1))
        .wait_timeout(Some(config.wait_timeout))
        .create_timeout(Some(config.connect_timeout))
        .recycle_timeout(Some(config.connect_timeout))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Pool(e.to_string()))?;
    Ok(DbPool {
        inner,
        schema: config.schema.clone(),
    })
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
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    }
}
