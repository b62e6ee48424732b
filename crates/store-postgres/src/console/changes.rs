use std::time::Duration;

use std::collections::BTreeSet;

use diesel::sql_types::{Array, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use futures_util::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use crate::pool::{SchemaName, application_name};

/// What changed, as little as the notification says; readers fetch the rows themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallChange {
    /// Turns of this Call were stored (announced by [`ChangeNotifier`]).
    Turn { call_sid: String },
    /// This Call's status, conversation_id, end, failure reason or outcome changed.
    Call { call_sid: String },
    /// The feed (re)connected: anything may have changed while it was away.
    Resync,
}

impl CallChange {
    fn parse(payload: &str) -> Option<Self> {
        if let Some(sid) = payload.strip_prefix('t') {
            return Some(Self::Turn {
                call_sid: sid.to_owned(),
            });
        }
        payload.strip_prefix('c').map(|sid| Self::Call {
            call_sid: sid.to_owned(),
        })
    }
}

/// The notification channel of a schema, as the trigger of migration 0012 names it.
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
    let mut conn = connect_plain(url, schema).await?;
    // The channel is built from a checked schema name (letters, digits, underscores).
    conn.batch_execute(&format!("LISTEN \"{channel}\""))
        .await
        .map_err(|e| e.to_string())?;
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

/// Stored turns waiting to be announced; past this the newest are dropped (pages still
/// catch up with the next change of their Call, or the feed's next resync).
const NOTIFY_QUEUE: usize = 10_000;
/// Turns announced by one statement at most.
const NOTIFY_BATCH: usize = 256;

/// Announces stored turns to every instance's [`ChangeFeed`] (`t` + call_sid), after their
/// commit and off the request's path: the webhook only queues the call_sid; one task per
/// instance sends them, batched and de-duplicated, in one autocommit statement on a
/// connection of its own. So the append's transaction never NOTIFYs (a NOTIFY takes a
/// database-wide lock at commit, which would serialize every append and its WAL flush).
#[derive(Clone)]
pub struct ChangeNotifier {
    queue: mpsc::Sender<String>,
}

impl ChangeNotifier {
    /// Starts the sending task (it ends when every clone is dropped). Needs a tokio runtime.
    pub fn spawn(url: SecretString, schema: SchemaName) -> Self {
        let (queue, rx) = mpsc::channel(NOTIFY_QUEUE);
        tokio::spawn(notify_forever(url, schema, rx));
        Self { queue }
    }

    /// Queues the announcement; never waits.
    pub fn turn_stored(&self, call_sid: &str) {
        if self.queue.try_send(call_sid.to_owned()).is_err() {
            tracing::warn!("console change notifier queue full; a live page may lag");
        }
    }
}

async fn notify_forever(url: SecretString, schema: SchemaName, mut rx: mpsc::Receiver<String>) {
    let channel = channel_name(&schema);
    let mut conn: Option<AsyncPgConnection> = None;
    while let Some(first) = rx.recv().await {
        let mut sids = BTreeSet::from([first]);
        while sids.len() < NOTIFY_BATCH {
            match rx.try_recv() {
                Ok(sid) => {
                    sids.insert(sid);
                }
                Err(_) => break,
            }
        }
        let payloads: Vec<String> = sids.into_iter().map(|sid| format!("t{sid}")).collect();
        // One reconnect per batch: a database that is down drops the batch (pages catch up
        // on the feed's resync once it is back) instead of queueing behind it.
        for _ in 0..2 {
            if conn.is_none() {
                conn = connect_plain(url.expose_secret(), &schema).await.ok();
            }
            let Some(c) = conn.as_mut() else { break };
            let sent = tokio::time::timeout(
                CHECK_TIMEOUT,
                diesel::sql_query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
                    .bind::<Text, _>(&channel)
                    .bind::<Array<Text>, _>(&payloads)
                    .execute(c),
            )
            .await;
            match sent {
                Ok(Ok(_)) => break,
                Ok(Err(e)) => {
                    tracing::warn!(%channel, error.message = %e, "console change notifier failed; reconnecting");
                    conn = None;
                }
                Err(_) => {
                    tracing::warn!(%channel, "console change notifier timed out; reconnecting");
                    conn = None;
                }
            }
        }
    }
}

/// A connection of its own, named like the pool's so operators (and drills) see one service.
async fn connect_plain(url: &str, schema: &SchemaName) -> Result<AsyncPgConnection, String> {
    let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, AsyncPgConnection::establish(url))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    conn.batch_execute(&format!(
        "SET application_name = '{}'",
        application_name(schema)
    ))
    .await
    .map_err(|e| e.to_string())?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_a_turn_or_a_call() {
        assert_eq!(
            CallChange::parse("tEL_1_x"),
            Some(CallChange::Turn {
                call_sid: "EL_1_x".into()
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
