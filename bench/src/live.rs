//! Open live pages (issue 16): `--live-pages` SSE streams on
//! `/console/calls/{call_sid}/events`, one console session, held open and read while the
//! webhook load runs, as dispatchers watching calls would.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use reqwest::header::{CONTENT_TYPE, COOKIE, SET_COOKIE};
use tokio::task::JoinSet;

use crate::batch::API_TOKEN;

const OPEN_TIMEOUT: Duration = Duration::from_secs(60);
const TURN_EVENT: &[u8] = b"event: turn\n";

pub struct LivePages {
    streams: JoinSet<Result<(), String>>,
    turns: Arc<AtomicU64>,
    pub open: u32,
}

/// `POST /console/login` with the API token; the `console_session=…` pair for `Cookie`.
async fn login(client: &reqwest::Client, base_url: &str) -> Result<String> {
    let response = client
        .post(format!("{base_url}/console/login"))
        .form(&[("token", API_TOKEN)])
        .send()
        .await
        .context("POST /console/login")?;
    if response.status().as_u16() != 303 {
        bail!(
            "POST /console/login: expected 303, got {}",
            response.status()
        );
    }
    response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("console_session="))
        .and_then(|v| v.split(';').next())
        .map(str::to_string)
        .context("POST /console/login set no console_session cookie")
}

/// How many complete `event: turn` lines `chunk` adds; `tail` carries the bytes a line may
/// have started in the chunk before (fewer than one whole line, so nothing counts twice).
fn count_turns(tail: &mut Vec<u8>, chunk: &[u8]) -> u64 {
    tail.extend_from_slice(chunk);
    let n = tail
        .windows(TURN_EVENT.len())
        .filter(|w| *w == TURN_EVENT)
        .count() as u64;
    let keep = tail.len().min(TURN_EVENT.len() - 1);
    tail.drain(..tail.len() - keep);
    n
}

impl LivePages {
    /// `pages` streams spread over `call_sids`; returns once every one has answered 200.
    pub async fn open(base_url: &str, call_sids: &[String], pages: u32) -> Result<Self> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .build()
            .context("building the SSE client")?;
        let cookie = login(&client, base_url).await?;
        let (opened, turns) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut streams = JoinSet::new();
        for (page, call_sid) in (0..pages).zip(call_sids.iter().cycle()) {
            let request = client
                .get(format!("{base_url}/console/calls/{call_sid}/events"))
                .header(COOKIE, &cookie);
            let (opened, turns) = (Arc::clone(&opened), Arc::clone(&turns));
            streams.spawn(async move {
                let mut response = request
                    .send()
                    .await
                    .map_err(|e| format!("page {page}: {e}"))?;
                let kind = response.headers().get(CONTENT_TYPE).cloned();
                let is_sse = kind.is_some_and(|k| k.as_bytes().starts_with(b"text/event-stream"));
                if response.status().as_u16() != 200 || !is_sse {
                    return Err(format!("page {page}: HTTP {}", response.status()));
                }
                opened.fetch_add(1, Ordering::SeqCst);
                let mut tail = Vec::new();
                while let Some(chunk) = response
                    .chunk()
                    .await
                    .map_err(|e| format!("page {page}: {e}"))?
                {
                    turns.fetch_add(count_turns(&mut tail, &chunk), Ordering::Relaxed);
                }
                Err(format!("page {page}: the stream ended"))
            });
        }
        let started = Instant::now();
        while opened.load(Ordering::SeqCst) < u64::from(pages) {
            if let Some(done) = streams.try_join_next() {
                let why = done.map_or_else(|e| e.to_string(), |r| format!("{r:?}"));
                bail!("a live page failed while opening {pages}: {why}");
            }
            if started.elapsed() > OPEN_TIMEOUT {
                bail!(
                    "{} of {pages} live pages open after {OPEN_TIMEOUT:?}",
                    opened.load(Ordering::SeqCst)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(LivePages {
            streams,
            turns,
            open: pages,
        })
    }

    /// Close every stream; the turn events they got, and a problem if any ended early.
    pub async fn close(mut self) -> (u64, Option<String>) {
        let ended = std::iter::from_fn(|| self.streams.try_join_next())
            .filter_map(|done| done.ok().and_then(Result::err))
            .collect::<Vec<_>>();
        self.streams.shutdown().await;
        let problem = ended.first().map(|first| {
            format!(
                "{} of {} live pages ended during the load (first: {first})",
                ended.len(),
                self.open
            )
        });
        (self.turns.load(Ordering::Relaxed), problem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_turn_events_across_chunks() {
        let mut tail = Vec::new();
        assert_eq!(
            count_turns(&mut tail, b"event: turn\nid: 1\n\nevent: tu"),
            1
        );
        assert_eq!(count_turns(&mut tail, b"rn\nid: 2\n\nevent: call\n"), 1);
        assert_eq!(count_turns(&mut tail, b"event: turn"), 0);
        assert_eq!(count_turns(&mut tail, b"\n"), 1);
        assert_eq!(count_turns(&mut tail, b": heartbeat\n\n"), 0);
    }
}
