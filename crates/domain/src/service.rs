//! Use cases. Each takes its ports as `Arc<dyn …>` so the HTTP layer stays non-generic.

pub mod place_calls;
pub mod post_call;
pub mod prompt;
pub mod record_turn;

pub use place_calls::{BatchOutcome, DriverCallResult, PlaceCalls, PlaceCallsError};
pub use post_call::{ApplyPostCall, EventTurn, PostCallError, PostCallEvent, PostCallOutcome};
pub use prompt::CallContext;
pub use record_turn::{NotFoundReason, RecordTurn, RecordTurnError};
