//! Start violation calls: for each driver of a validated batch, write the Call first
//! (`in_progress`, no conversation_id), then ask the telephony to dial, then store the
//! conversation_id — or mark the Call `failed` with the reason. Drivers are dialed
//! concurrently, at most `concurrency` at a time; results keep the request's order.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::StreamExt;
use time::OffsetDateTime;

use super::prompt::{self, CallContext};
use crate::models::{
    BatchCall, CallSid, CallStatus, ConversationId, DriverCall, NewCall, mask_phone_numbers,
};
use crate::ports::{BoxError, CallRepository, OutboundCall, RepositoryError, Telephony};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverCallResult {
    pub driver: DriverCall,
    pub conversation_id: Option<ConversationId>,
    /// The provider's own call id (Twilio's `CA…`), when placed.
    pub provider_call_id: Option<String>,
    /// `InProgress` when placed, `Failed` otherwise.
    pub status: CallStatus,
    pub error: Option<String>,
}

impl DriverCallResult {
    pub fn placed(&self) -> bool {
        self.status == CallStatus::InProgress && self.conversation_id.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    pub results: Vec<DriverCallResult>,
}

impl BatchOutcome {
    pub fn placed(&self) -> usize {
        self.results.iter().filter(|r| r.placed()).count()
    }

    pub fn failed(&self) -> usize {
        self.results.len() - self.placed()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlaceCallsError {
    /// A retried request: these call_sids exist already, so nobody was dialed.
    #[error("call_sid already exists: {}", call_sids.iter().map(CallSid::as_str).collect::<Vec<_>>().join(", "))]
    AlreadyExists { call_sids: Vec<CallSid> },
    #[error("database unavailable")]
    Unavailable(#[source] BoxError),
    #[error("unexpected error while placing calls")]
    Unexpected(#[source] BoxError),
}

pub struct PlaceCalls {
    repository: Arc<dyn CallRepository>,
    telephony: Arc<dyn Telephony>,
    context: CallContext,
    concurrency: usize,
}

/// Outcome of one driver before it becomes a result; `Conflict` means another request
/// created this call_sid between our check and our insert.
enum One {
    Done(Box<DriverCallResult>),
    Conflict(CallSid),
}

impl PlaceCalls {
    pub fn new(
        repository: Arc<dyn CallRepository>,
        telephony: Arc<dyn Telephony>,
        context: CallContext,
        concurrency: usize,
    ) -> Self {
        Self {
            repository,
            telephony,
            context,
            concurrency: concurrency.max(1),
        }
    }

    #[tracing::instrument(name = "place_calls", skip_all, fields(drivers = batch.drivers.len()))]
    pub async fn execute(&self, batch: &BatchCall) -> Result<BatchOutcome, PlaceCallsError> {
        // A retried batch is refused before anyone is dialed.
        let mut existing = Vec::new();
        for driver in &batch.drivers {
            match self.repository.get_by_call_sid(&driver.call_sid).await {
                Ok(Some(_)) => existing.push(driver.call_sid.clone()),
                Ok(None) => {}
                Err(RepositoryError::Unavailable(e)) => {
                    return Err(PlaceCallsError::Unavailable(e));
                }
                Err(e) => return Err(PlaceCallsError::Unexpected(Box::new(e))),
            }
        }
        if !existing.is_empty() {
            return Err(PlaceCallsError::AlreadyExists {
                call_sids: existing,
            });
        }

        let outcomes: Vec<One> = futures_util::stream::iter(&batch.drivers)
            .map(|driver| self.place_one(driver))
            .buffered(self.concurrency)
            .collect()
            .await;
        let mut results = Vec::with_capacity(outcomes.len());
        let mut conflicts = Vec::new();
        for one in outcomes {
            match one {
                One::Done(r) => results.push(*r),
                One::Conflict(sid) => conflicts.push(sid),
            }
        }
        if results.is_empty() && !conflicts.is_empty() {
            return Err(PlaceCallsError::AlreadyExists {
                call_sids: conflicts,
            });
        }
        // A concurrent duplicate request took some drivers: they are reported, not dialed.
        for sid in conflicts {
            if let Some(driver) = batch.drivers.iter().find(|d| d.call_sid == sid) {
                results.push(failed(
                    driver,
                    "call_sid already exists (a concurrent request placed this call)",
                ));
            }
        }
        let order = |r: &DriverCallResult| {
            batch
                .drivers
                .iter()
                .position(|d| d.call_sid == r.driver.call_sid)
        };
        results.sort_by_key(order);
        Ok(BatchOutcome { results })
    }

    fn outbound(&self, driver: &DriverCall) -> OutboundCall {
        outbound_call(driver, &self.context)
    }

    #[tracing::instrument(name = "place_call", skip_all, fields(call_sid = %driver.call_sid, to = %driver.phone_number.masked()))]
    async fn place_one(&self, driver: &DriverCall) -> One {
        let new = NewCall {
            call_sid: driver.call_sid.clone(),
            driver_id: Some(driver.driver_id),
            call_start_time: OffsetDateTime::now_utc(),
        };
        // The Call exists before anyone is dialed: every attempt leaves an audit record.
        match self.repository.create_call(&new).await {
            Ok(_) => {}
            Err(RepositoryError::Conflict(_)) => return One::Conflict(driver.call_sid.clone()),
            Err(e) => {
                let reason = mask_phone_numbers(&format!("could not record the call: {e}"));
                tracing::error!(reason = %reason, "could not record the call; not dialing");
                return One::Done(Box::new(failed(driver, &reason)));
            }
        }
        match self.telephony.place_call(&self.outbound(driver)).await {
            Ok(placed) => {
                if let Err(e) = self
                    .repository
                    .set_conversation_id(&driver.call_sid, &placed.conversation_id)
                    .await
                {
                    // The call is happening; the post-call webhook can still link it by call_sid.
                    tracing::error!(error.message = %e, "call placed but its conversation_id was not stored");
                }
                tracing::info!(conversation_id = %placed.conversation_id, "call placed");
                One::Done(Box::new(DriverCallResult {
                    driver: driver.clone(),
                    conversation_id: Some(placed.conversation_id),
                    provider_call_id: placed.provider_call_id,
                    status: CallStatus::InProgress,
                    error: None,
                }))
            }
            Err(e) => {
                // Provider texts may repeat the number in any form; this one text is logged,
                // stored as the failure reason and returned in the batch response.
                let reason = mask_phone_numbers(&e.to_string());
                tracing::warn!(reason = %reason, "call not placed");
                if let Err(db) = self
                    .repository
                    .set_status(
                        &driver.call_sid,
                        CallStatus::Failed,
                        Some(OffsetDateTime::now_utc()),
                        Some(reason.clone()),
                    )
                    .await
                {
                    tracing::error!(error.message = %db, "could not mark the call failed");
                }
                One::Done(Box::new(failed(driver, &reason)))
            }
        }
    }
}

/// The outbound request for one driver (the batch dialer sends the same).
pub fn outbound_call(driver: &DriverCall, context: &CallContext) -> OutboundCall {
    // Spoken by the agent, so plain "kind: description" items rather than a list.
    let summary = driver
        .violations
        .iter()
        .map(|v| format!("{}: {}", v.kind, v.description))
        .collect::<Vec<_>>()
        .join("; ");
    let mut vars = BTreeMap::new();
    vars.insert("call_sid".to_owned(), driver.call_sid.to_string());
    vars.insert("driver_id".to_owned(), driver.driver_id.to_string());
    vars.insert("driver_name".to_owned(), driver.driver_name.clone());
    vars.insert("trip_id".to_owned(), driver.trip_id.clone());
    vars.insert("violation_summary".to_owned(), summary);
    vars.insert(
        "triggers_count".to_owned(),
        driver.violations.len().to_string(),
    );
    vars.insert("transfer_to".to_owned(), context.transfer_to_number.clone());
    vars.insert(
        "dispatcher_name".to_owned(),
        context.dispatcher_name.clone(),
    );
    OutboundCall {
        call_sid: driver.call_sid.clone(),
        to_number: driver.phone_number.clone(),
        prompt: prompt::render(driver, context),
        dynamic_variables: vars,
    }
}

fn failed(driver: &DriverCall, reason: &str) -> DriverCallResult {
    DriverCallResult {
        driver: driver.clone(),
        conversation_id: None,
        provider_call_id: None,
        status: CallStatus::Failed,
        error: Some(reason.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::models::{Call, PhoneNumber, RawBatch, RawDriver, RawViolation};
    use crate::ports::{MockCallRepository, MockTelephony, PlacedCall, TelephonyError};

    fn batch(ids: &[i64]) -> BatchCall {
        RawBatch {
            call_type: Some("violation".into()),
            timestamp: Some("1700000000".into()),
            drivers: Some(
                ids.iter()
                    .map(|id| RawDriver {
                        driver_id: Some(*id),
                        driver_name: Some(format!("Driver {id}")),
                        phone_number: Some("+15551234567".into()),
                        custom_rules: None,
                        trip_id: Some("trip_1".into()),
                        violations: Some(vec![RawViolation {
                            kind: Some("temperature".into()),
                            description: Some("Reefer at 45F".into()),
                        }]),
                    })
                    .collect(),
            ),
        }
        .validate()
        .expect("valid batch")
    }

    fn context() -> CallContext {
        CallContext {
            dispatcher_name: "AGY Dispatcher".into(),
            transfer_to_number: "+18005551234".into(),
        }
    }

    fn a_call(sid: &CallSid) -> Call {
        let now = OffsetDateTime::now_utc();
        Call {
            id: 1,
            call_sid: sid.clone(),
            conversation_id: None,
            driver_id: Some(1),
            call_start_time: now,
            call_end_time: None,
            status: CallStatus::InProgress,
            failure_reason: None,
            outcome: None,
            created_at: now,
            updated_at: now,
        }
    }

    fn use_case(repo: MockCallRepository, tel: MockTelephony) -> PlaceCalls {
        PlaceCalls::new(Arc::new(repo), Arc::new(tel), context(), 4)
    }

    fn placed(conv: &str) -> PlacedCall {
        PlacedCall {
            conversation_id: ConversationId::parse(conv).expect("conv"),
            provider_call_id: Some("CA123".into()),
        }
    }

    #[tokio::test]
    async fn the_call_is_written_before_the_telephony_is_asked_to_dial() {
        let mut seq = mockall::Sequence::new();
        let mut repo = MockCallRepository::new();
        let mut tel = MockTelephony::new();
        repo.expect_get_by_call_sid()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(None));
        repo.expect_create_call()
            .withf(|n| n.call_sid.as_str() == "EL_7_1700000000" && n.driver_id == Some(7))
            .times(1)
            .in_sequence(&mut seq)
            .returning(|n| Ok(a_call(&n.call_sid)));
        tel.expect_place_call()
            .withf(|c| {
                c.call_sid.as_str() == "EL_7_1700000000"
                    && c.dynamic_variables.get("call_sid").map(String::as_str)
                        == Some("EL_7_1700000000")
                    && c.dynamic_variables.get("driver_name").map(String::as_str)
                        == Some("Driver 7")
                    && c.prompt.contains("Reefer at 45F")
                    && c.to_number == PhoneNumber::parse("+15551234567").expect("phone")
            })
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(placed("conv_7")));
        repo.expect_set_conversation_id()
            .withf(|sid, conv| sid.as_str() == "EL_7_1700000000" && conv.as_str() == "conv_7")
            .times(1)
            .in_sequence(&mut seq)
            .returning(|sid, _| Ok(a_call(sid)));

        let outcome = use_case(repo, tel)
            .execute(&batch(&[7]))
            .await
            .expect("placed");

        assert_eq!(outcome.placed(), 1);
        let r = &outcome.results[0];
        assert_eq!(
            r.conversation_id.as_ref().map(ConversationId::as_str),
            Some("conv_7")
        );
        assert_eq!(r.provider_call_id.as_deref(), Some("CA123"));
        assert_eq!(r.status, CallStatus::InProgress);
    }

    #[tokio::test]
    async fn every_telephony_failure_marks_the_call_failed_with_its_reason() {
        let failures = [
            TelephonyError::Unauthorized { status: 401 },
            TelephonyError::Rejected {
                status: 422,
                detail: "to_number: invalid".into(),
            },
            TelephonyError::RateLimited {
                detail: "system_busy".into(),
            },
            TelephonyError::ServerError { status: 503 },
            TelephonyError::NotPlaced {
                message: "agent busy".into(),
            },
            TelephonyError::MissingConversationId,
            TelephonyError::Timeout(Duration::from_secs(10)),
            TelephonyError::Unreachable("connection refused".into()),
            TelephonyError::Unexpected("bad json".into()),
        ];
        for failure in failures {
            let reason = failure.to_string();
            let mut repo = MockCallRepository::new();
            let mut tel = MockTelephony::new();
            repo.expect_get_by_call_sid().returning(|_| Ok(None));
            repo.expect_create_call()
                .returning(|n| Ok(a_call(&n.call_sid)));
            let f = failure.clone();
            tel.expect_place_call()
                .times(1)
                .returning(move |_| Err(f.clone()));
            let expected = reason.clone();
            repo.expect_set_status()
                .withf(move |_, status, end, why| {
                    *status == CallStatus::Failed
                        && end.is_some()
                        && why.as_deref() == Some(expected.as_str())
                })
                .times(1)
                .returning(|sid, _, _, _| Ok(a_call(sid)));
            repo.expect_set_conversation_id().times(0);

            let outcome = use_case(repo, tel)
                .execute(&batch(&[1]))
                .await
                .expect("outcome");

            assert_eq!(outcome.failed(), 1, "{reason}");
            assert_eq!(outcome.results[0].error.as_deref(), Some(reason.as_str()));
            assert_eq!(outcome.results[0].status, CallStatus::Failed);
        }
    }

    #[tokio::test]
    async fn a_provider_text_repeating_the_number_is_masked_in_the_reason() {
        let mut repo = MockCallRepository::new();
        let mut tel = MockTelephony::new();
        repo.expect_get_by_call_sid().returning(|_| Ok(None));
        repo.expect_create_call()
            .returning(|n| Ok(a_call(&n.call_sid)));
        tel.expect_place_call().returning(|_| {
            Err(TelephonyError::Rejected {
                status: 400,
                detail: "cannot dial 15551234567, i.e. (555) 123-4567".into(),
            })
        });
        repo.expect_set_status()
            .withf(|_, _, _, why| {
                why.as_deref()
                    .is_some_and(|w| !w.contains("555") && w.contains("4567"))
            })
            .times(1)
            .returning(|sid, _, _, _| Ok(a_call(sid)));

        let outcome = use_case(repo, tel)
            .execute(&batch(&[1]))
            .await
            .expect("outcome");

        let error = outcome.results[0].error.clone().unwrap_or_default();
        assert!(
            error.contains("*******4567") && error.contains("(***) ***-4567"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_existing_call_sid_dials_nobody() {
        let mut repo = MockCallRepository::new();
        let mut tel = MockTelephony::new();
        repo.expect_get_by_call_sid()
            .returning(|sid| Ok((sid.as_str() == "EL_2_1700000000").then(|| a_call(sid))));
        repo.expect_create_call().times(0);
        tel.expect_place_call().times(0);

        let err = use_case(repo, tel)
            .execute(&batch(&[1, 2]))
            .await
            .expect_err("conflict");

        assert!(
            matches!(err, PlaceCallsError::AlreadyExists { ref call_sids } if call_sids.len() == 1)
        );
    }

    #[tokio::test]
    async fn a_call_that_cannot_be_recorded_is_not_dialed() {
        let mut repo = MockCallRepository::new();
        let mut tel = MockTelephony::new();
        repo.expect_get_by_call_sid().returning(|_| Ok(None));
        repo.expect_create_call()
            .returning(|_| Err(RepositoryError::Unavailable("down".into())));
        tel.expect_place_call().times(0);

        let outcome = use_case(repo, tel)
            .execute(&batch(&[1]))
            .await
            .expect("outcome");

        assert_eq!(outcome.failed(), 1);
    }

    #[tokio::test]
    async fn a_lost_race_with_a_duplicate_request_is_a_conflict() {
        let mut repo = MockCallRepository::new();
        let mut tel = MockTelephony::new();
        repo.expect_get_by_call_sid().returning(|_| Ok(None));
        repo.expect_create_call()
            .returning(|_| Err(RepositoryError::Conflict("uq_calls_call_sid".into())));
        tel.expect_place_call().times(0);

        let err = use_case(repo, tel)
            .execute(&batch(&[1]))
            .await
            .expect_err("conflict");

        assert!(matches!(err, PlaceCallsError::AlreadyExists { .. }));
    }

    #[tokio::test]
    async fn results_keep_the_request_order_and_partial_failures_are_reported() {
        let mut repo = MockCallRepository::new();
        let mut tel = MockTelephony::new();
        repo.expect_get_by_call_sid().returning(|_| Ok(None));
        repo.expect_create_call()
            .returning(|n| Ok(a_call(&n.call_sid)));
        tel.expect_place_call().returning(|c| {
            if c.call_sid.as_str().starts_with("EL_2_") {
                Err(TelephonyError::ServerError { status: 500 })
            } else {
                Ok(placed(&format!("conv_{}", c.call_sid.as_str().len())))
            }
        });
        repo.expect_set_conversation_id()
            .returning(|sid, _| Ok(a_call(sid)));
        repo.expect_set_status()
            .returning(|sid, _, _, _| Ok(a_call(sid)));

        let outcome = use_case(repo, tel)
            .execute(&batch(&[1, 2, 3]))
            .await
            .expect("outcome");

        let ids: Vec<i64> = outcome.results.iter().map(|r| r.driver.driver_id).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!((outcome.placed(), outcome.failed()), (2, 1));
    }
}
