//! A `Telephony` decorator that measures every outbound-call request: latency histogram
//! and outcome counter. Keeps metrics out of the domain and the adapter.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use calls_domain::ConversationId;
use calls_domain::ports::{
    ConversationState, OutboundCall, PlacedCall, PredialAnswer, PredialCheck, PredialRequest,
    Telephony, TelephonyError,
};

use crate::metrics::Metrics;

pub struct MeasuredTelephony {
    inner: Arc<dyn Telephony>,
    metrics: Arc<Metrics>,
}

impl MeasuredTelephony {
    pub fn new(inner: Arc<dyn Telephony>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

fn outcome(result: &Result<PlacedCall, TelephonyError>) -> &'static str {
    match result {
        Ok(_) => "placed",
        Err(TelephonyError::Unauthorized { .. }) => "unauthorized",
        Err(TelephonyError::Rejected { .. }) => "rejected",
        Err(TelephonyError::RateLimited { .. }) => "rate_limited",
        Err(TelephonyError::ServerError { .. }) => "server_error",
        Err(TelephonyError::NotPlaced { .. }) => "not_placed",
        Err(TelephonyError::MissingConversationId) => "missing_conversation_id",
        Err(TelephonyError::Timeout(_)) => "timeout",
        Err(TelephonyError::Unreachable(_)) => "unreachable",
        Err(TelephonyError::Unexpected(_)) => "unexpected",
    }
}

#[async_trait]
impl Telephony for MeasuredTelephony {
    async fn place_call(&self, call: &OutboundCall) -> Result<PlacedCall, TelephonyError> {
        let started = Instant::now();
        let result = self.inner.place_call(call).await;
        self.metrics
            .elevenlabs_request_duration
            .observe(started.elapsed().as_secs_f64());
        self.metrics.call_placed(outcome(&result));
        result
    }

    // Counted per Call by the reconciler (`calls_reconciled_total`).
    async fn fetch_conversation(
        &self,
        conversation_id: &ConversationId,
    ) -> Result<ConversationState, TelephonyError> {
        self.inner.fetch_conversation(conversation_id).await
    }
}

/// A `PredialCheck` decorator that counts every answer (`predial_checks_total{result}`).
pub struct MeasuredPredial {
    inner: Arc<dyn PredialCheck>,
    metrics: Arc<Metrics>,
}

impl MeasuredPredial {
    pub fn new(inner: Arc<dyn PredialCheck>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

#[async_trait]
impl PredialCheck for MeasuredPredial {
    async fn check(&self, request: &PredialRequest) -> PredialAnswer {
        let answer = self.inner.check(request).await;
        self.metrics.predial_check(match &answer {
            PredialAnswer::Eligible => "eligible",
            PredialAnswer::NotEligible { .. } => "not_eligible",
            PredialAnswer::Failed { .. } => "failed",
        });
        answer
    }
}
