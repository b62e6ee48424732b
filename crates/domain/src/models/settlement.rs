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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{CallWindow, RedialDelays, TimeZone};
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2024-06-01 15:00 UTC);

    fn rules() -> DialRules {
        DialRules {
            time_zone: TimeZone::utc(),
            window: CallWindow::Any,
            redial_delays: RedialDelays::new(vec![600, 1800]).expect("delays"),
            expires_at: NOW + time::Duration::hours(1),
        }
    }

    fn input(rules: &DialRules) -> SettleInput<'_> {
        SettleInput {
            state: RecipientState::InCall,
            current_attempt: 1,
            ended_attempt: 1,
            batch_cancelled: false,
            call_status: CallStatus::Failed,
            call_failure_reason: Some("busy"),
            redialable: true,
            rules,
            now: NOW,
        }
    }

    #[test]
    fn a_completed_call_completes_the_recipient_whatever_its_state() {
        let r = rules();
        for state in [
            RecipientState::Scheduled,
            RecipientState::Dialing,
            RecipientState::InCall,
            RecipientState::Failed,
            RecipientState::Cancelled,
        ] {
            let i = SettleInput {
                state,
                call_status: CallStatus::Completed,
                ended_attempt: 1,
                current_attempt: 2,
                batch_cancelled: true,
                ..input(&r)
            };
            assert_eq!(decide_settlement(&i), Settlement::Completed, "{state}");
        }
        let done = SettleInput {
            state: RecipientState::Completed,
            call_status: CallStatus::Completed,
            ..input(&r)
        };
        assert_eq!(decide_settlement(&done), Settlement::Unchanged);
    }

    #[test]
    fn a_redialable_failure_schedules_the_next_attempt_after_its_delay() {
        let r = rules();
        assert_eq!(
            decide_settlement(&input(&r)),
            Settlement::Scheduled {
                attempt: 2,
                at: NOW + time::Duration::minutes(10)
            }
        );
    }

    #[test]
    fn no_redial_when_not_redialable_no_attempt_remains_expired_or_cancelled() {
        let r = rules();
        let busy = Settlement::Failed {
            reason: "busy".into(),
        };
        let not_redialable = SettleInput {
            redialable: false,
            ..input(&r)
        };
        assert_eq!(decide_settlement(&not_redialable), busy);
        let last = SettleInput {
            current_attempt: 3,
            ended_attempt: 3,
            ..input(&r)
        };
        assert_eq!(decide_settlement(&last), busy);
        // Attempt 2's delay (1800 s) falls past the expiry (1 h) when known 40 min in.
        let late = SettleInput {
            current_attempt: 2,
            ended_attempt: 2,
            now: NOW + time::Duration::minutes(40),
            ..input(&r)
        };
        assert_eq!(
            decide_settlement(&late),
            Settlement::Failed {
                reason: EXPIRED.into()
            }
        );
        let cancelled = SettleInput {
            batch_cancelled: true,
            ..input(&r)
        };
        assert_eq!(
            decide_settlement(&cancelled),
            Settlement::Cancelled {
                reason: Some("busy".into())
            }
        );
    }

    #[test]
    fn an_old_attempt_a_settled_recipient_or_a_call_in_progress_change_nothing() {
        let r = rules();
        for i in [
            SettleInput {
                current_attempt: 2,
                ..input(&r)
            },
            SettleInput {
                state: RecipientState::Scheduled,
                ..input(&r)
            },
            SettleInput {
                state: RecipientState::Failed,
                ..input(&r)
            },
            SettleInput {
                call_status: CallStatus::InProgress,
                ..input(&r)
            },
        ] {
            assert_eq!(decide_settlement(&i), Settlement::Unchanged, "{i:?}");
        }
    }

    proptest::proptest! {
        /// Whatever the delays, expiry and failure time: a re-dial is the next attempt, is
        /// one of the recipient's attempts, waits at least its delay, and falls before the
        /// expiry; otherwise the recipient fails (expired when time ran out).
        #[test]
        fn a_redial_respects_the_attempt_count_the_delay_and_the_expiry(
            delays in proptest::collection::vec(0u64..=604_800, 0..=10),
            attempt in 1u32..=11,
            known_after in 0i64..1_000_000,
            expiry in 1i64..2_000_000,
        ) {
            let r = DialRules {
                time_zone: TimeZone::parse("America/Chicago").expect("tz"),
                window: CallWindow::parse("08:00-20:00").expect("window"),
                redial_delays: RedialDelays::new(delays.clone()).expect("delays"),
                expires_at: NOW + time::Duration::seconds(expiry),
            };
            let now = NOW + time::Duration::seconds(known_after);
            let i = SettleInput {
                current_attempt: attempt,
                ended_attempt: attempt,
                now,
                ..input(&r)
            };
            match decide_settlement(&i) {
                Settlement::Scheduled { attempt: next, at } => {
                    proptest::prop_assert_eq!(next, attempt + 1);
                    proptest::prop_assert!(next <= r.redial_delays.max_attempts());
                    let delay = delays[usize::try_from(attempt - 1).expect("index")];
                    proptest::prop_assert!(at >= now + time::Duration::seconds(delay as i64));
                    proptest::prop_assert!(at < r.expires_at);
                }
                Settlement::Failed { reason } => {
                    let exhausted = attempt >= r.redial_delays.max_attempts();
                    proptest::prop_assert!(
                        (exhausted && reason == "busy") || (!exhausted && reason == EXPIRED),
                        "{reason} after attempt {attempt} of {}", r.redial_delays.max_attempts()
                    );
                }
                other => proptest::prop_assert!(false, "{other:?}"),
            }
        }
    }

    #[test]
    fn only_4xx_other_than_408_and_429_is_not_redialable() {
        for s in [400, 401, 403, 404, 409, 422, 499] {
            assert!(!is_redialable_status(s), "{s}");
        }
        for s in [200, 302, 408, 429, 500, 502, 503, 504] {
            assert!(is_redialable_status(s), "{s}");
        }
    }
}
