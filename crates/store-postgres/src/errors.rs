use calls_domain::RepositoryError;
use deadpool::managed::TimeoutType;
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

/// How a failed attempt should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// A later attempt can succeed: no connection could be made, a connection dropped, a
    /// transaction was aborted (serialization failure, deadlock). Retried.
    Transient,
    /// The database is there but cannot serve us in time: the pool stayed full for its
    /// wait timeout, a row lock was not granted within `lock_timeout`, a statement hit
    /// `statement_timeout`. Not retried: the caller gets "unavailable" at once instead of
    /// queueing again behind the same obstacle.
    Busy,
    /// A bug or a broken invariant.
    Permanent,
}

impl DbError {
    pub(crate) fn failure(&self) -> Failure {
        match self {
            Self::Pool(PoolError::Timeout(TimeoutType::Wait)) => Failure::Busy,
            Self::Pool(PoolError::Closed | PoolError::NoRuntimeSpecified) => Failure::Permanent,
            Self::Pool(_) => Failure::Transient,
            Self::Query(e) => query_failure(e),
            Self::Domain(_) => Failure::Permanent,
        }
    }

    /// Converts a final failure into the domain's error.
    pub(crate) fn into_repository_error(self) -> RepositoryError {
        match self {
            Self::Domain(e) => e,
            e if e.failure() == Failure::Permanent => RepositoryError::Unexpected(Box::new(e)),
            e => RepositoryError::Unavailable(Box::new(e)),
        }
    }
}

fn query_failure(e: &DieselError) -> Failure {
    match e {
        DieselError::DatabaseError(kind, info) => match kind {
            DatabaseErrorKind::SerializationFailure
            | DatabaseErrorKind::ClosedConnection
            | DatabaseErrorKind::UnableToSendCommand => Failure::Transient,
            DatabaseErrorKind::Unknown => {
                // diesel-async maps only some SQLSTATEs to kinds; the rest are recognised
                // by PostgreSQL's message.
                let message = info.message();
                let busy = [
                    // 55P03 lock_not_available (lock_timeout, NOWAIT)
                    "canceling statement due to lock timeout",
                    "could not obtain lock",
                    // 57014 query_canceled by statement_timeout
                    "canceling statement due to statement timeout",
                ];
                let transient = [
                    // 40P01 deadlock; 57P01 admin shutdown; 57P02/57P03 crash, shutdown, startup
                    "deadlock detected",
                    "terminating connection",
                    "the database system is",
                ];
                if message.starts_with("prepared statement") && message.ends_with("does not exist")
                {
                    // 26000: a transaction-pooling PgBouncer before 1.21 (or without
                    // max_prepared_statements) sent our statement to another server
                    // connection. Nothing ran; the caller is told to retry, the operator how
                    // to fix it (docs/scaling.md).
                    tracing::error!(
                        "the connection pooler does not carry prepared statements: use PgBouncer >= 1.21 with max_prepared_statements > 0, or session pooling"
                    );
                    Failure::Busy
                } else if busy.iter().any(|needle| message.contains(needle)) {
                    Failure::Busy
                } else if transient.iter().any(|needle| message.contains(needle)) {
                    Failure::Transient
                } else {
                    Failure::Permanent
                }
            }
            _ => Failure::Permanent,
        },
        DieselError::BrokenTransactionManager => Failure::Transient,
        _ => Failure::Permanent,
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

#[cfg(test)]
mod tests {
    use super::*;

    struct Info(&'static str);

    impl diesel::result::DatabaseErrorInformation for Info {
        fn message(&self) -> &str {
            self.0
        }
        fn details(&self) -> Option<&str> {
            None
        }
        fn hint(&self) -> Option<&str> {
            None
        }
        fn table_name(&self) -> Option<&str> {
            None
        }
        fn column_name(&self) -> Option<&str> {
            None
        }
        fn constraint_name(&self) -> Option<&str> {
            None
        }
        fn statement_position(&self) -> Option<i32> {
            None
        }
    }

    fn unknown(message: &'static str) -> Failure {
        query_failure(&DieselError::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new(Info(message)),
        ))
    }

    #[test]
    fn a_pooler_that_loses_prepared_statements_is_busy_not_a_bug() {
        assert_eq!(
            unknown("prepared statement \"s10\" does not exist"),
            Failure::Busy
        );
        assert_eq!(
            unknown("canceling statement due to lock timeout"),
            Failure::Busy
        );
        assert_eq!(unknown("deadlock detected"), Failure::Transient);
        assert_eq!(unknown("syntax error at or near"), Failure::Permanent);
    }
}
