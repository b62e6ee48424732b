use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use futures_util::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::pool::{SchemaName, application_name};

/// What changed, as little as the notification says; readers fetch the rows themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallChange {
    /// A turn of this conversation was stored (or renumbered by a reconciliation).
    Turn { conversation_id: String },
    /// This Call's status, conversation_id, end, failure reason or outcome changed.
    Call { call_sid: String },
    /// The feed (re)connected: anything may have changed while it was away.
    Resync,
}

impl CallChange {
    fn parse(payload: &str) -> Option<Self> {
        if let Some(id) = payload.strip_prefix('t') {
            return Some(Self::Turn {
                conversation_id: id.to_owned(),
            });
        }
        payload.strip_prefix('c').map(|sid| Self::Call {
            call_sid: sid.to_owned(),
        })
    }
}

/// The notification channel of a schema, as the triggers of migration 0012 name it.
pub fn channel_name(schema: &SchemaName) -> String {
    let prefix: String = schema.as_str().chars().take(55).collect();
    format!("{prefix}.console")
}

/// Buffered changes per subscriber; one that falls further behind gets `Lagged` and
/// re-reads everything (the same as [`CallChange::Resync`]).
const CAPACITY: usize = 1024;
/// A connection silent for this long is checked with a query, so a dead one (no error, no
/// data: a half-open TCP connection) is noticed.
const IDLE_CHECK: Duration = Duration::from_secs(30);
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One dedicated connection per instance that LISTENs on the schema's channel and fans
/// every notification out in-process, reconnecting (with back-off) when the connection is
/// lost, e.g. across a database restart. Stops when dropped.
pub struct ChangeFeed {
    sender: broadcast::Sender<CallChange>,
    task: JoinHandle<()>,
}

impl ChangeFeed {
    /// Starts listening on `url` (a direct connection: LISTEN does not survive a pooler in
    /// transaction mode). Needs a tokio runtime.
    pub fn spawn(url: SecretString, schema: SchemaName) -> Self {
        let (sender, _) = broadcast::channel(CAPACITY);
        let task = tokio::spawn(listen_forever(url, schema, sender.clone()));
        Self { sender, task }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<CallChange> {
        self.sender.subscribe()
    }
}

impl Drop for ChangeFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn listen_forever(
    url: SecretString,
    schema: SchemaName,
    sender: broadcast::Sender<CallChange>,
) {
    let channel = channel_name(&schema);
    let mut backoff = FIRST_BACKOFF;
    loop {
        match connect(url.expose_secret(), &schema, &channel).await {
            Ok(conn) => {
                tracing::info!(%channel, "console change feed listening");
                backoff = FIRST_BACKOFF;
                // Whatever happened while we were not listening is caught up by readers.
                let _ = sender.send(CallChange::Resync);
                let reason = relay(conn, &sender).await;
                tracing::warn!(%channel, %reason, "console change feed lost its connection; reconnecting");
            }
            Err(e) => {
                tracing::warn!(%channel, error.message = %e, "console change feed cannot connect; retrying");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn connect(
    url: &str,
    schema: &SchemaName,
    channel: &str,
) -> Result<AsyncPgConnection, String> {
    let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, AsyncPgConnection::establish(url))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    // The channel is built from a checked schema name (letters, digits, underscores). The
    // application name is the pool's, so operators (and drills) see one service.
    let sql = format!(
        "SET application_name = '{}'; LISTEN \"{channel}\"",
        application_name(schema)
    );
    conn.batch_execute(&sql).await.map_err(|e| e.to_string())?;
    Ok(conn)
}

/// Forwards notifications until the connection fails; returns why.
async fn relay(mut conn: AsyncPgConnection, sender: &broadcast::Sender<CallChange>) -> String {
    loop {
        let next = {
            let mut stream = std::pin::pin!(conn.notifications_stream());
            tokio::time::timeout(IDLE_CHECK, stream.next()).await
        };
        match next {
            Ok(Some(Ok(notification))) => {
                if let Some(change) = CallChange::parse(&notification.payload) {
                    // No subscriber (no open page) is fine.
                    let _ = sender.send(change);
                }
            }
            Ok(Some(Err(e))) => return e.to_string(),
            Ok(None) => return "connection closed".to_owned(),
            Err(_) => {
                match tokio::time::timeout(CHECK_TIMEOUT, conn.batch_execute("SELECT 1")).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return e.to_string(),
                    Err(_) => return "health check timed out".to_owned(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_a_turn_or_a_call() {
        assert_eq!(
            CallChange::parse("tconv_1"),
            Some(CallChange::Turn {
                conversation_id: "conv_1".into()
            })
        );
        assert_eq!(
            CallChange::parse("cEL_1_2024-11-21 10:00:00#2"),
            Some(CallChange::Call {
                call_sid: "EL_1_2024-11-21 10:00:00#2".into()
            })
        );
        assert_eq!(CallChange::parse("x"), None);
        assert_eq!(CallChange::parse(""), None);
    }

    #[test]
    fn channel_names_fit_postgresql_identifiers() {
        let long = SchemaName::parse(&"s".repeat(63)).expect("valid");
        assert_eq!(channel_name(&long).len(), 63);
        let short = SchemaName::parse("dev").expect("valid");
        assert_eq!(channel_name(&short), "dev.console");
    }
}
