//! What one instance lets clients make it hold, whatever they do: memory for request bodies
//! (one byte budget for the whole instance), requests in flight (load shedding), and
//! requests waiting for one Call. Past each bound the answer is 503 with `Retry-After` and
//! the envelope, at once or after a short wait, never an unbounded queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{Error, ResponseError, web};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::errors::ApiError;

/// The bounds, from settings (docs/operations.md, "Limits").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSettings {
    /// Bytes of request bodies held in memory at once by this instance.
    pub body_memory_budget: usize,
    /// How long a body may wait for room in the budget before its request gets 503.
    pub body_budget_wait: Duration,
    /// Open connections per instance; more wait in the listen backlog.
    pub max_connections: usize,
    /// Requests handled at once (health, readiness and metrics excepted); more get 503.
    pub max_in_flight: usize,
    /// Transcription requests for one call_sid queued in this process (without a pooled
    /// connection) behind the [`ACTIVE_PER_CALL`] being stored; more get 503 at once.
    pub max_waiting_per_call: usize,
    /// How long a queued request may wait for its turn before it gets 503.
    pub call_queue_wait: Duration,
}

/// Requests of one call_sid that hold a pooled connection at once, per instance. Appends of
/// one Call are serialized by its row lock anyway; more would only wait inside PostgreSQL,
/// each holding a connection that other calls need.
pub const ACTIVE_PER_CALL: usize = 2;

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            body_memory_budget: 64 * 1024 * 1024,
            body_budget_wait: Duration::from_millis(500),
            max_connections: 2048,
            max_in_flight: 512,
            max_waiting_per_call: 100,
            call_queue_wait: Duration::from_secs(2),
        }
    }
}

/// `Retry-After` of every 503 these bounds answer.
pub const RETRY_AFTER_SECS: u32 = 1;

/// The live counters behind [`LimitSettings`], shared by every worker of an instance.
pub struct Limits {
    settings: LimitSettings,
    body_budget: Arc<Semaphore>,
    in_flight: Arc<Semaphore>,
    per_call: Mutex<HashMap<String, CallQueue>>,
}

/// The requests of one call_sid in this process: `users` holders of a [`CallPass`], of
/// which at most [`ACTIVE_PER_CALL`] hold a permit of `active`.
struct CallQueue {
    active: Arc<Semaphore>,
    users: usize,
}

impl Limits {
    pub fn new(settings: LimitSettings) -> Self {
        Self {
            settings,
            body_budget: Arc::new(Semaphore::new(
                settings.body_memory_budget.min(Semaphore::MAX_PERMITS),
            )),
            in_flight: Arc::new(Semaphore::new(
                settings.max_in_flight.min(Semaphore::MAX_PERMITS),
            )),
            per_call: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &LimitSettings {
        &self.settings
    }

    /// Room for `bytes` more body bytes, waiting at most the budget wait. The room is
    /// given back when the returned permit (or the one it was merged into) is dropped.
    pub async fn reserve_body(&self, bytes: usize) -> Result<BodyPermit, ApiError> {
        let Ok(n) = u32::try_from(bytes) else {
            return Err(overloaded("request body larger than the memory budget"));
        };
        if bytes > self.settings.body_memory_budget {
            return Err(overloaded("request body larger than the memory budget"));
        }
        let acquire = self.body_budget.clone().acquire_many_owned(n);
        match tokio::time::timeout(self.settings.body_budget_wait, acquire).await {
            Ok(Ok(permit)) => Ok(BodyPermit(Some(permit))),
            // Closed never happens (the semaphore is never closed); treat it as full.
            Ok(Err(_)) | Err(_) => Err(overloaded(
                "the memory for request bodies is in use; retry shortly",
            )),
        }
    }

    /// Bytes of the body budget free now (metrics, tests).
    pub fn body_budget_available(&self) -> usize {
        self.body_budget.available_permits()
    }

    /// The right to store a turn of `call_sid` now: at most [`ACTIVE_PER_CALL`] requests of
    /// one Call go on to the database at once, the others wait here in order (holding no
    /// pooled connection) up to `call_queue_wait`, and when `max_waiting_per_call` already
    /// wait, a new one gets 503 at once. A Call whose row is stuck therefore holds at most
    /// two connections, and other calls and reads keep being served.
    pub async fn enter_call(&self, call_sid: &str) -> Result<CallPass<'_>, ApiError> {
        let active = {
            let mut map = self.per_call.lock().unwrap_or_else(PoisonError::into_inner);
            let queue = map.entry(call_sid.to_owned()).or_insert_with(|| CallQueue {
                active: Arc::new(Semaphore::new(ACTIVE_PER_CALL)),
                users: 0,
            });
            if queue.users >= ACTIVE_PER_CALL + self.settings.max_waiting_per_call {
                return Err(overloaded(
                    "too many requests for this call are waiting; retry shortly",
                ));
            }
            queue.users += 1;
            queue.active.clone()
        };
        let mut pass = CallPass {
            limits: self,
            call_sid: call_sid.to_owned(),
            _permit: None,
        };
        match tokio::time::timeout(self.settings.call_queue_wait, active.acquire_owned()).await {
            Ok(Ok(permit)) => {
                pass._permit = Some(permit);
                Ok(pass)
            }
            Ok(Err(_)) | Err(_) => Err(overloaded(
                "requests for this call are not getting through; retry shortly",
            )),
        }
    }

    fn leave_call(&self, call_sid: &str) {
        let mut map = self.per_call.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(queue) = map.get_mut(call_sid) {
            queue.users = queue.users.saturating_sub(1);
            if queue.users == 0 {
                map.remove(call_sid);
            }
        }
    }

    fn try_enter(&self) -> Option<OwnedSemaphorePermit> {
        // No permit (or a closed semaphore, which never happens): shed.
        self.in_flight.clone().try_acquire_owned().ok()
    }
}

/// Body bytes held against the instance's budget.
#[derive(Debug, Default)]
pub struct BodyPermit(Option<OwnedSemaphorePermit>);

impl BodyPermit {
    pub fn merge(&mut self, other: BodyPermit) {
        match (&mut self.0, other.0) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
    }

    pub fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }
}

/// One request of a call_sid being handled; see [`Limits::enter_call`].
pub struct CallPass<'a> {
    limits: &'a Limits,
    call_sid: String,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for CallPass<'_> {
    fn drop(&mut self) {
        self.limits.leave_call(&self.call_sid);
    }
}

pub fn overloaded(details: &str) -> ApiError {
    ApiError::overloaded(details, RETRY_AFTER_SECS)
}

/// Routes that answer whatever the load: probes must tell "busy" from "dead".
fn exempt(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// Load shedding: past `max_in_flight` requests a new one gets 503 at once instead of
/// queueing behind the others (latency stays bounded; clients retry).
pub async fn shed_load(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let limits = req.app_data::<web::Data<Limits>>().cloned();
    let permit = match limits {
        Some(limits) if !exempt(req.path()) => match limits.try_enter() {
            Some(permit) => Some(permit),
            None => {
                let response = overloaded("the server is at capacity; retry shortly");
                return Ok(req
                    .into_response(response.error_response())
                    .map_into_right_body());
            }
        },
        _ => None,
    };
    let response = next.call(req).await;
    // Held until the handler finished (the body streams after; it is bounded by the budget).
    drop(permit);
    Ok(response?.map_into_left_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(budget: usize, per_call: usize) -> Limits {
        Limits::new(LimitSettings {
            body_memory_budget: budget,
            body_budget_wait: Duration::from_millis(50),
            max_waiting_per_call: per_call,
            ..LimitSettings::default()
        })
    }

    #[tokio::test]
    async fn the_body_budget_is_shared_and_given_back_on_drop() {
        let limits = limits(1000, 4);
        let mut first = limits.reserve_body(600).await.expect("room");
        first.merge(limits.reserve_body(300).await.expect("room"));
        assert_eq!(first.bytes(), 900);
        let refused = limits.reserve_body(200).await.expect_err("full");
        assert_eq!(refused.status().as_u16(), 503);
        drop(first);
        assert_eq!(limits.body_budget_available(), 1000);
        assert!(limits.reserve_body(1000).await.is_ok());
        assert!(limits.reserve_body(1001).await.is_err(), "never fits");
    }

    #[tokio::test]
    async fn a_waiting_body_gets_room_freed_within_the_wait() {
        let limits = Arc::new(limits(100, 4));
        let held = limits.reserve_body(100).await.expect("room");
        let waiter = {
            let limits = limits.clone();
            tokio::spawn(async move { limits.reserve_body(50).await.map(|p| p.bytes()) })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(held);
        assert_eq!(waiter.await.expect("joined").expect("room"), 50);
    }

    #[tokio::test]
    async fn requests_for_one_call_queue_behind_two_and_the_queue_is_bounded() {
        let limits = Limits::new(LimitSettings {
            max_waiting_per_call: 1,
            call_queue_wait: Duration::from_millis(100),
            ..LimitSettings::default()
        });
        let a = limits.enter_call("EL_1_x").await.expect("first");
        let _b = limits.enter_call("EL_1_x").await.expect("second");
        // A third waits for a place and gives up after the queue wait.
        let started = std::time::Instant::now();
        let waited = limits.enter_call("EL_1_x").await.err().expect("no place");
        assert_eq!(waited.status().as_u16(), 503);
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(limits.enter_call("EL_2_x").await.is_ok(), "another call");
        // While one waits, a fourth is refused at once.
        let third = limits.enter_call("EL_1_x");
        let fourth = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            limits.enter_call("EL_1_x").await.err().expect("queue full")
        };
        let (third, fourth) = tokio::join!(third, async {
            let refused = fourth.await;
            drop(a);
            refused
        });
        assert_eq!(fourth.status().as_u16(), 503);
        assert!(third.is_ok(), "the waiting one got the freed place");
    }
}
