//! The `calls-server` binary's library: configuration, HTTP routes, auth, telemetry and
//! wiring. The domain lives in `calls-domain`; adapters in `calls-store-postgres` and
//! `calls-elevenlabs`. This crate only wires and translates.

pub mod auth;
pub mod body;
pub mod cli;
pub mod commands;
pub mod config;
pub mod console;
pub mod dialer;
pub mod errors;
pub mod limits;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod reconcile;
pub mod routes;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod telephony_metrics;
pub mod timing;
