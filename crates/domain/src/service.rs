//! Use cases. Each takes its ports as `Arc<dyn …>` so the HTTP layer stays non-generic.

pub mod place_calls;
pub mod post_call;
pub mod prompt;
pub mod reconcile_stale;
pub mod record_turn;
pub mod transcript_merge;

pub use place_calls::{BatchOutcome, DriverCallResult, PlaceCalls, PlaceCallsError};
pub use post_call::{ApplyPostCall, PostCallError, PostCallEvent, PostCallOutcome};
pub use prompt::CallContext;
pub use reconcile_stale::{
    PassOutcome, ReconcileError, ReconcileResult, ReconcileSettings, ReconcileStale, Reconciled,
};
pub use record_turn::{NotFoundReason, RecordTurn, RecordTurnError};
