//! The console's per-instance state. Below `crate::state` (which holds it), so it
//! depends on nothing of the server but the settings and the console's own leaves.

use std::sync::Arc;

use calls_domain::ports::ConsoleSessions;
use calls_store_postgres::{
    CallChange, ChangeFeed, ChangeNotifier, PgConsoleSessions, RetryPolicy,
};
use tokio::sync::{broadcast, watch};

use super::ConsoleError;
use super::limiter::{LoginLimiter, LoginLimits};
use crate::config::Settings;

/// What the console keeps per instance.
pub struct ConsoleState {
    sessions: Option<Arc<dyn ConsoleSessions>>,
    feed: Option<ChangeFeed>,
    notifier: Option<ChangeNotifier>,
    /// Flips to `true` when the process is told to stop: live streams end then, so open
    /// pages do not hold the graceful shutdown for its whole timeout (they reconnect, to
    /// another instance, and catch up).
    closing: watch::Sender<bool>,
    pub limiter: LoginLimiter,
}

impl ConsoleState {
    /// Sessions on the service's pool; the change feed on its own connection. Without
    /// PostgreSQL (tests of other parts with mocks) the console answers 503.
    pub fn new(settings: &Settings, pool: Option<&calls_store_postgres::DbPool>) -> Self {
        let (closing, _) = watch::channel(false);
        let on_signal = closing.clone();
        tokio::spawn(async move {
            stop_signal().await;
            on_signal.send_replace(true);
        });
        Self {
            closing,
            sessions: pool.map(|pool| {
                Arc::new(PgConsoleSessions::new(pool.clone(), RetryPolicy::default()))
                    as Arc<dyn ConsoleSessions>
            }),
            feed: pool.map(|_| {
                ChangeFeed::spawn(
                    settings.console.listen_url.clone(),
                    settings.database.schema.clone(),
                )
            }),
            notifier: pool.map(|_| {
                ChangeNotifier::spawn(
                    settings.console.listen_url.clone(),
                    settings.database.schema.clone(),
                )
            }),
            limiter: LoginLimiter::new(LoginLimits::default()),
        }
    }

    pub(super) fn sessions(&self) -> Result<&Arc<dyn ConsoleSessions>, ConsoleError> {
        self.sessions.as_ref().ok_or(ConsoleError::Unavailable)
    }

    /// Tells every instance's open pages of this Call that turns were stored (after the
    /// commit; never waits).
    pub fn turn_stored(&self, call_sid: &str) {
        if let Some(notifier) = &self.notifier {
            notifier.turn_stored(call_sid);
        }
    }

    /// Ends every live stream of this instance (on SIGTERM/SIGINT; tests call it directly).
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    pub(super) fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    pub(super) fn subscribe(&self) -> Result<broadcast::Receiver<CallChange>, ConsoleError> {
        self.feed
            .as_ref()
            .map(ChangeFeed::subscribe)
            .ok_or(ConsoleError::Unavailable)
    }
}

/// SIGTERM or SIGINT, the signals on which the HTTP server shuts down gracefully.
async fn stop_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
