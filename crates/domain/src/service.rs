//! Use cases. Each takes its ports as `Arc<dyn …>` so the HTTP layer stays non-generic.

pub mod batches;
pub mod place_calls;
pub mod post_call;
pub mod prompt;
pub mod reconcile_stale;
pub mod record_turn;
pub mod transcript_merge;

pub use batches::{CancelBatch, CreateBatch, CreateBatchError, DialOutcome, Dialer, ReadBatches};
pub use place_calls::{BatchOutcome, DriverCallResult, PlaceCalls, PlaceCallsError};
pub use post_call::{ApplyPostCall, PostCallError, PostCallEvent, PostCallOutcome};
pub use prompt::CallContext;
pub use reconcile_stale::{
    PassOutcome, ReconcileError, ReconcileResult, ReconcileSettings, ReconcileStale, Reconciled,
};
pub use record_turn::{NotFoundReason, RecordTurn, RecordTurnError};

use crate::ports::{BoxError, RepositoryError};

/// How a use case fails when its repository does: the database-down case stays
/// distinguishable (the HTTP layer answers it with the retry hint), anything else is a bug.
/// Use cases whose only failure is the repository's share it.
#[derive(Debug, thiserror::Error)]
pub enum StoreFailure {
    #[error("database unavailable")]
    Unavailable(#[source] BoxError),
    #[error("unexpected repository error")]
    Unexpected(#[source] BoxError),
}

impl From<RepositoryError> for StoreFailure {
    fn from(e: RepositoryError) -> Self {
        match e {
            RepositoryError::Unavailable(inner) => Self::Unavailable(inner),
            other => Self::Unexpected(Box::new(other)),
        }
    }
}
