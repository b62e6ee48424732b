use std::future::Future;
use std::time::{Duration, Instant};

use calls_domain::RepositoryError;

use crate::errors::{DbError, Failure};

/// Bounded retries with exponential backoff for transient database failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// No retry starts later than this after the first attempt did, so that slow failures
    /// (connect timeouts) cannot add up past the caller's patience. The attempt running at
    /// the deadline may still take up to its own timeout.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(800),
            max_elapsed: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    pub fn no_retries() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    fn delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// Runs `op` until it succeeds, fails for good, or the attempts run out. Only call this
    /// for operations that are safe to repeat (idempotent, or rolled back on failure).
    pub(crate) async fn run<T, F, Fut>(
        &self,
        op: &'static str,
        retries: &RetryCounter,
        mut f: F,
    ) -> Result<T, RepositoryError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, DbError>>,
    {
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            match f(attempt).await {
                Ok(value) => return Ok(value),
                Err(e) if self.retry(&e, attempt, started.elapsed()) => {
                    let delay = self.delay(attempt);
                    tracing::warn!(
                        operation = op,
                        attempt,
                        delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        error.message = %e,
                        error.cause_chain = ?e,
                        "transient database error; retrying"
                    );
                    retries.count();
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => {
                    match e.failure() {
                        Failure::Transient => {
                            tracing::error!(operation = op, attempt, error.cause_chain = ?e, "database unavailable after retries");
                        }
                        Failure::Busy => {
                            tracing::error!(operation = op, attempt, error.cause_chain = ?e, "database busy: timed out waiting for a connection, a lock or a statement");
                        }
                        Failure::Permanent => {}
                    }
                    return Err(e.into_repository_error());
                }
            }
        }
    }

    fn retry(&self, e: &DbError, attempt: u32, elapsed: Duration) -> bool {
        e.failure() == Failure::Transient
            && attempt < self.max_attempts
            && elapsed + self.delay(attempt) < self.max_elapsed
    }
}

/// Counts retries taken, for the metrics endpoint.
/// Retries taken by one repository (and its clones), for the metrics endpoint. Owned by
/// the repository and handed to whoever reports it: no process-wide state.
#[derive(Debug, Clone, Default)]
pub struct RetryCounter(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl RetryCounter {
    pub fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1), Duration::from_millis(50));
        assert_eq!(p.delay(2), Duration::from_millis(100));
        assert_eq!(p.delay(3), Duration::from_millis(200));
        assert_eq!(p.delay(10), Duration::from_millis(800));
    }
}
