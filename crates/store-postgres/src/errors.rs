use calls_domain::RepositoryError;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::deadpool::PoolError;

/// Errors of the operational commands (migrate, backfill, pool set-up).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid schema name {0:?}: use letters, digits and underscores")]
    InvalidSchemaName(String),
    #[error("cannot connect to the database")]
    Connect(#[source] diesel::ConnectionError),
    #[error("database query failed")]
    Query(#[source] DieselError),
    #[error("cannot build the connection pool: {0}")]
    Pool(String),
    #[error("migration failed")]
    Migration(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("{0}")]
    Refused(String),
}

impl From<DieselError> for StoreError {
    fn from(e: DieselError) -> Self {
        Self::Query(e)
    }
}

impl From<diesel::ConnectionError> for StoreError {
    fn from(e: diesel::ConnectionError) -> Self {
        Self::Connect(e)
    }
}

/// What can go wrong inside one attempt of a repository operation.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DbError {
    #[error("no database connection")]
    Pool(#[source] PoolError),
    #[error("query failed")]
    Query(#[source] DieselError),
    #[error(transparent)]
    Domain(RepositoryError),
}

impl From<DieselError> for DbError {
    fn from(e: DieselError) -> Self {
        Self::Query(e)
    }
}

impl From<PoolError> for DbError {
    fn from(e: PoolError) -> Self {
        Self::Pool(e)
    }
}

impl From<RepositoryError> for DbError {
    fn from(e: RepositoryError) -> Self {
        Self::Domain(e)
    }
}

impl From<crate::models::InvalidRow> for DbError {
    fn from(e: crate::models::InvalidRow) -> Self {
        Self::Domain(RepositoryError::Unexpected(Box::new(e)))
    }
}

impl DbError {
    /// Failures that a later attempt can succeed past: no connection, a dropped connection,
    /// an aborted (rolled back) transaction.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Self::Pool(e) => !matches!(e, PoolError::Closed | PoolError::NoRuntimeSpecified),
            Self::Query(e) => is_transient_query_error(e),
            Self::Domain(_) => false,
        }
    }

    /// Converts a final failure into the domain's error.
    pub(crate) fn into_repository_error(self) -> RepositoryError {
        match self {
            Self::Domain(e) => e,
            e if e.is_transient() => RepositoryError::Unavailable(Box::new(e)),
            e => RepositoryError::Unexpected(Box::new(e)),
        }
    }
}

fn is_transient_query_error(e: &DieselError) -> bool {
    match e {
        DieselError::DatabaseError(kind, info) => match kind {
            DatabaseErrorKind::SerializationFailure
            | DatabaseErrorKind::ClosedConnection
            | DatabaseErrorKind::UnableToSendCommand => true,
            DatabaseErrorKind::Unknown => {
                // diesel-async maps only some SQLSTATEs to kinds; the rest are recognised
                // by PostgreSQL's message: deadlock (40P01), admin shutdown (57P01),
                // crash/shutdown/startup (57P02, 57P03), lock timeout (55P03).
                let message = info.message();
                [
                    "deadlock detected",
                    "terminating connection",
                    "the database system is",
                    "could not obtain lock",
                ]
                .iter()
                .any(|needle| message.contains(needle))
            }
            _ => false,
        },
        DieselError::BrokenTransactionManager => true,
        _ => false,
    }
}

pub(crate) fn is_unique_violation(e: &DbError) -> Option<&str> {
    match e {
        DbError::Query(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info)) => {
            Some(info.constraint_name().unwrap_or("unique constraint"))
        }
        _ => None,
    }
}
