//! Use cases. Each takes its ports as `Arc<dyn …>` so the HTTP layer stays non-generic.

pub mod record_turn;

pub use record_turn::{RecordTurn, RecordTurnError};
