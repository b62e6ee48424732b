//! Live call pages: Server-Sent Events of one Call's new turns and state changes.
//!
//! Every stream subscribes to the instance's change feed (one LISTEN connection per
//! instance, fanned out in-process) and, when a change concerns its Call, or the feed
//! reconnected, or it fell behind, re-reads the Call and its turns through the repository
//! and sends what the page does not have yet. A reconnecting page says what it has with
//! `Last-Event-ID` (the last turn's sequence number), so it catches up on what it missed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use calls_domain::{CallRepository, CallSid};
use calls_store_postgres::CallChange;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use super::ConsoleError;
use super::session::ConsoleSession;
use super::views::{BatchLink, CallDetail, CallStateFragment, TurnFragment, TurnItem};
use crate::state::AppState;

/// A comment this often keeps proxies from closing an idle stream.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// One SSE event; every line of `data` gets its own `data:` field.
fn event(name: &str, id: Option<i32>, data: &str) -> Bytes {
    let mut out = format!("event: {name}\n");
    if let Some(id) = id {
        out.push_str(&format!("id: {id}\n"));
    }
    for line in data.lines() {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    if data.is_empty() {
        out.push_str("data:\n");
    }
    out.push('\n');
    Bytes::from(out)
}

/// The sequence number the page already has: `Last-Event-ID` of a reconnect, else the
/// page's own `after`.
fn already_shown(req: &HttpRequest) -> i32 {
    let header = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let query = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .ok()
        .and_then(|q| {
            q.iter()
                .find(|(n, _)| n == "after")
                .and_then(|(_, v)| v.parse().ok())
        });
    header.or(query).unwrap_or(0).max(0)
}

struct Live {
    repository: Arc<dyn CallRepository>,
    call_sid: CallSid,
    last_seq: i32,
    last_state: Option<String>,
    /// The Call's batch and attempt, which never change.
    batch: Option<BatchLink>,
    changes: broadcast::Receiver<CallChange>,
    closing: tokio::sync::watch::Receiver<bool>,
    pending: VecDeque<Bytes>,
    finished: bool,
}

impl Live {
    fn concerns(&self, change: &CallChange) -> bool {
        match change {
            CallChange::Turn { call_sid } | CallChange::Call { call_sid } => {
                call_sid == self.call_sid.as_str()
            }
            CallChange::Resync => true,
        }
    }

    /// Reads the Call and its transcript and queues what the page lacks.
    async fn refresh(&mut self) {
        let call = match self.repository.get_by_call_sid(&self.call_sid).await {
            Ok(Some(call)) => call,
            Ok(None) => {
                self.finished = true;
                return;
            }
            Err(e) => {
                // The next change (or the feed's resync once the database is back) retries.
                tracing::warn!(error.message = %e, "console live page: cannot read the call");
                return;
            }
        };
        let turns = match self.repository.list_turns(&self.call_sid).await {
            Ok(turns) => turns,
            Err(e) => {
                tracing::warn!(error.message = %e, "console live page: cannot read the turns");
                return;
            }
        };
        let shown = self.last_seq;
        for turn in turns.iter().filter(|t| t.sequence_number > shown) {
            let item = TurnItem::from_turn(turn);
            if let Ok(html) = (TurnFragment { turn: &item }).render() {
                self.pending.push_back(event("turn", Some(item.seq), &html));
            }
            self.last_seq = self.last_seq.max(turn.sequence_number);
        }
        let mut detail = CallDetail::from_call(&call);
        detail.batch = self.batch.clone();
        if let Ok(state) = (CallStateFragment { call: &detail }).render() {
            if self.last_state.as_deref() != Some(state.as_str()) {
                self.pending.push_back(event("call", None, &state));
                self.last_state = Some(state);
            }
        }
        if call.status.is_terminal() {
            // The post-call reconciliation may have inserted turns between others: the
            // whole transcript, once, then the page stops listening.
            let all: String = turns
                .iter()
                .map(TurnItem::from_turn)
                .filter_map(|item| (TurnFragment { turn: &item }).render().ok())
                .collect();
            self.pending.push_back(event("transcript", None, &all));
            self.pending.push_back(event("end", None, ""));
            self.finished = true;
        }
    }

    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(bytes) = self.pending.pop_front() {
                return Some(bytes);
            }
            if self.finished || *self.closing.borrow() {
                return None;
            }
            let received = tokio::select! {
                received = tokio::time::timeout(HEARTBEAT, self.changes.recv()) => received,
                // The instance is stopping: end the stream; the page reconnects elsewhere.
                _ = self.closing.changed() => return None,
            };
            match received {
                Err(_) => return Some(Bytes::from_static(b": heartbeat\n\n")),
                Ok(Ok(change)) => {
                    if self.concerns(&change) {
                        self.refresh().await;
                    }
                }
                // Missed changes: read everything again.
                Ok(Err(RecvError::Lagged(_))) => self.refresh().await,
                Ok(Err(RecvError::Closed)) => return None,
            }
        }
    }
}

/// `GET /console/calls/{call_sid}/events`: the event stream of one Call's page.
pub async fn events(
    _session: ConsoleSession,
    path: web::Path<String>,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let raw = path.into_inner();
    let not_found = || ConsoleError::NotFound {
        title: "Call not found".to_owned(),
        detail: format!("No call has call_sid {raw}."),
    };
    let call_sid = CallSid::parse(&raw).map_err(|_| not_found())?;
    // Subscribed before the first read, so nothing stored in between is missed.
    let changes = state.console.subscribe()?;
    if state.repository.get_by_call_sid(&call_sid).await?.is_none() {
        return Err(not_found());
    }
    let batch = state
        .read_batches
        .attempt_of(&call_sid)
        .await?
        .map(|(batch_id, attempt)| BatchLink::new(&batch_id, attempt));
    let mut live = Live {
        repository: state.repository.clone(),
        call_sid,
        last_seq: already_shown(&req),
        last_state: None,
        batch,
        changes,
        closing: state.console.closing(),
        // Reconnect quickly after a dropped connection.
        pending: VecDeque::from([Bytes::from_static(b"retry: 1000\n\n")]),
        finished: false,
    };
    live.refresh().await;
    let stream = futures_util::stream::unfold(live, |mut live| async move {
        live.next()
            .await
            .map(|bytes| (Ok::<_, actix_web::Error>(bytes), live))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_data_line_gets_its_own_field() {
        let bytes = event("turn", Some(3), "<li>\n<p>x</p>\n</li>");
        assert_eq!(
            std::str::from_utf8(&bytes).expect("utf-8"),
            "event: turn\nid: 3\ndata: <li>\ndata: <p>x</p>\ndata: </li>\n\n"
        );
        assert_eq!(
            std::str::from_utf8(&event("end", None, "")).expect("utf-8"),
            "event: end\ndata:\n\n"
        );
    }
}
