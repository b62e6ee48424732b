//! HTTP tests: the real server on port 0, a real PostgreSQL schema per test, and a fake
//! ElevenLabs (wiremock).

mod batch_calls;
mod batches;
#[cfg(feature = "browser-tests")]
mod browser;
mod busy_database;
mod calls;
mod console;
mod console_batches;
mod health;
mod helpers;
mod hostile;
mod limits;
mod listing;
mod openapi;
mod outage;
mod post_call;
mod reconcile;
mod startup;
mod transcription_webhook;
