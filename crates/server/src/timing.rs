//! The domain's `Timer` and `Pacer` ports on tokio's timer.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use calls_domain::{Pacer, Timer};
use tokio::time::Instant;

/// Sleeps on tokio's timer.
pub struct TokioTimer;

#[async_trait::async_trait]
impl Timer for TokioTimer {
    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

/// Least time between the starts of two conversation requests of the stale-call repair:
/// at most 5 a second, well inside ElevenLabs' rate limits.
pub const CONVERSATION_REQUEST_INTERVAL: Duration = Duration::from_millis(200);

/// Spaces request starts at least `interval` apart, whatever the concurrency.
pub struct Pace {
    interval: Duration,
    next: Mutex<Option<Instant>>,
}

impl Pace {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            next: Mutex::new(None),
        }
    }
}

#[async_trait::async_trait]
impl Pacer for Pace {
    async fn wait(&self) {
        let slot = {
            // Only this function touches the value, and it cannot panic while holding it.
            let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            let slot = next.map_or(now, |n| n.max(now));
            *next = Some(slot + self.interval);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn concurrent_waiters_start_an_interval_apart() {
        let pace = Arc::new(Pace::new(Duration::from_millis(200)));
        let started = Instant::now();

        let waiters: Vec<_> = (0..6)
            .map(|_| {
                let pace = pace.clone();
                tokio::spawn(async move {
                    pace.wait().await;
                    Instant::now()
                })
            })
            .collect();
        let mut starts = Vec::new();
        for waiter in waiters {
            starts.push(waiter.await.expect("joined"));
        }

        starts.sort();
        assert_eq!(starts[0], started, "the first goes at once");
        for pair in starts.windows(2) {
            assert_eq!(pair[1] - pair[0], Duration::from_millis(200));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_timer_sleeps_as_long_as_asked() {
        let started = Instant::now();
        TokioTimer.sleep(Duration::from_millis(750)).await;
        assert_eq!(started.elapsed(), Duration::from_millis(750));
    }
}
