//! What becomes of a recipient when one of its attempts' Calls ends (SPEC "Recipient
//! states and re-dials"). Pure: the store applies it under the recipient's row lock.

use time::OffsetDateTime;

use super::{CallStatus, DialRules, Due, EXPIRED, RecipientState};

/// The recipient as the store sees it when a Call of its ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettleInput<'a> {
    pub state: RecipientState,
    /// The attempt the recipient is on (the last one claimed).
    pub current_attempt: u32,
    /// The attempt whose Call ended.
    pub ended_attempt: u32,
    pub batch_cancelled: bool,
    pub call_status: CallStatus,
    pub call_failure_reason: Option<&'a str>,
    /// Whether the failure may be re-dialed (see [`is_redialable_status`]).
    pub redialable: bool,
    pub rules: &'a DialRules,
    /// When the failure became known.
    pub now: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Nothing to change (a repeated settle, a Call still in progress, an older attempt's
    /// failure).
    Unchanged,
    Completed,
    /// The next attempt is due at `at`.
    Scheduled {
        attempt: u32,
        at: OffsetDateTime,
    },
    Failed {
        reason: String,
    },
    Cancelled {
        reason: Option<String>,
    },
}

impl Settlement {
    pub fn state(&self) -> Option<RecipientState> {
        match self {
            Self::Unchanged => None,
            Self::Completed => Some(RecipientState::Completed),
            Self::Scheduled { .. } => Some(RecipientState::Scheduled),
            Self::Failed { .. } => Some(RecipientState::Failed),
            Self::Cancelled { .. } => Some(RecipientState::Cancelled),
        }
    }
}

/// - a completed Call completes the recipient whatever its state (an attempt whose request
///   timed out may still have reached the driver), dropping any scheduled re-dial;
/// - a failed Call of the current attempt, while the recipient is `dialing`/`in_call`:
///   `cancelled` if its batch was cancelled; the next attempt if the failure is
///   re-dialable and an attempt remains (`failed`/`expired` when its due time falls past
///   the expiry); else `failed` with the Call's reason.
pub fn decide_settlement(input: &SettleInput<'_>) -> Settlement {
    match input.call_status {
        CallStatus::InProgress => Settlement::Unchanged,
        CallStatus::Completed if input.state == RecipientState::Completed => Settlement::Unchanged,
        CallStatus::Completed => Settlement::Completed,
        CallStatus::Failed => {
            let live = matches!(
                input.state,
                RecipientState::Dialing | RecipientState::InCall
            );
            if !live || input.ended_attempt != input.current_attempt {
                return Settlement::Unchanged;
            }
            let reason = input
                .call_failure_reason
                .unwrap_or("call failed")
                .to_owned();
            if input.batch_cancelled {
                return Settlement::Cancelled {
                    reason: Some(reason),
                };
            }
            if !input.redialable {
                return Settlement::Failed { reason };
            }
            match input.rules.redial(input.ended_attempt, input.now) {
                Some(Due::At(at)) => Settlement::Scheduled {
                    attempt: input.ended_attempt + 1,
                    at,
                },
                Some(Due::Expired) => Settlement::Failed {
                    reason: EXPIRED.to_owned(),
                },
                None => Settlement::Failed { reason },
            }
        }
    }
}

/// Outbound-call answers with a 4xx other than 408 and 429 (a rejected number, a
/// configuration problem) are not re-dialed; everything else is.
pub fn is_redialable_status(status: u16) -> bool {
    !(400..500).contains(&status) || status == 408 || status == 429
}
