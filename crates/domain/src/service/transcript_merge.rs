//! Transcript reconciliation: merge the turns that reached our webhook with ElevenLabs' own
//! transcript of the call (per-turn webhooks can be lost; ElevenLabs does not retry them).
//!
//! The result holds every spoken turn of the event exactly once, in the event's order,
//! numbered 1..N without gaps. Stored turns that match an event turn (same speaker, same
//! text up to whitespace, matched in order) keep their ids; stored turns the event lacks
//! keep their place relative to the other stored turns. Merging the result with the same
//! event again gives the same result, so a repeated event changes nothing.
//!
//! Pure: the repository runs it inside the transaction that holds the Call's row lock.

use std::hash::Hash;

use similar::{Algorithm, DiffOp};
use time::{Duration, OffsetDateTime};

use crate::models::{CallTranscription, EventTurn, SpeakerType};

/// A turn of the reconciled transcript, at position `sequence_number`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTurn {
    pub sequence_number: i32,
    pub action: TurnAction,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnAction {
    /// A stored row stays; `from` is its current sequence number.
    Keep { id: i64, from: i32 },
    /// A turn only the event has: inserted.
    Insert {
        speaker: SpeakerType,
        message: String,
        timestamp: OffsetDateTime,
    },
}

/// The reconciled transcript, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TranscriptPlan {
    pub turns: Vec<PlannedTurn>,
}

impl TranscriptPlan {
    /// Rows whose number changes: `(id, from, to)`.
    pub fn renumbered(&self) -> impl Iterator<Item = (i64, i32, i32)> + '_ {
        self.turns.iter().filter_map(|t| match t.action {
            TurnAction::Keep { id, from } if from != t.sequence_number => {
                Some((id, from, t.sequence_number))
            }
            _ => None,
        })
    }

    pub fn inserted(&self) -> impl Iterator<Item = (i32, SpeakerType, &str, OffsetDateTime)> + '_ {
        self.turns.iter().filter_map(|t| match &t.action {
            TurnAction::Insert {
                speaker,
                message,
                timestamp,
            } => Some((t.sequence_number, *speaker, message.as_str(), *timestamp)),
            TurnAction::Keep { .. } => None,
        })
    }

    /// Nothing to write: every event turn is stored and every number is in place.
    pub fn is_noop(&self) -> bool {
        self.renumbered().next().is_none() && self.inserted().next().is_none()
    }
}

fn normalized(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Plans the reconciled transcript. `stored` must be in sequence order; `start` is the
/// conversation's start, to which each inserted turn's `time_in_call_secs` is added.
pub fn plan(
    stored: &[CallTranscription],
    event: &[EventTurn],
    start: OffsetDateTime,
) -> TranscriptPlan {
    // Turns without text (tool calls, a null message) are not spoken turns.
    let event: Vec<&EventTurn> = event
        .iter()
        .filter(|t| !t.message.trim().is_empty())
        .collect();
    let stored_keys: Vec<(SpeakerType, String)> = stored
        .iter()
        .map(|t| (t.speaker_type, normalized(&t.message_text)))
        .collect();
    let event_keys: Vec<(SpeakerType, String)> = event
        .iter()
        .map(|t| (t.speaker, normalized(&t.message)))
        .collect();
    let pairs = align(&stored_keys, &event_keys);

    // Event turns the in-order alignment left over may still be stored, out of order (two
    // deliveries that overtook each other): match them by speaker and text to stored turns
    // left over, so no turn is stored twice. Those rows move to the event's position.
    let mut stored_used = vec![false; stored.len()];
    let mut event_used = vec![false; event.len()];
    for &(s, e) in &pairs {
        stored_used[s] = true;
        event_used[e] = true;
    }
    let mut moved: Vec<Option<usize>> = vec![None; event.len()];
    for e in 0..event.len() {
        if event_used[e] {
            continue;
        }
        if let Some(s) =
            (0..stored.len()).find(|&s| !stored_used[s] && stored_keys[s] == event_keys[e])
        {
            stored_used[s] = true;
            moved[e] = Some(s);
        }
    }
    let is_moved: Vec<bool> = {
        let mut v = vec![false; stored.len()];
        for s in moved.iter().flatten() {
            v[*s] = true;
        }
        v
    };

    let event_time = |t: &EventTurn| {
        start
            .checked_add(Duration::seconds(t.time_in_call_secs.max(0)))
            .unwrap_or(start)
    };
    let keep = |t: &CallTranscription| TurnAction::Keep {
        id: t.id,
        from: t.sequence_number,
    };
    let from_event = |e: usize| match moved[e] {
        Some(s) => keep(&stored[s]),
        None => TurnAction::Insert {
            speaker: event[e].speaker,
            message: event[e].message.clone(),
            timestamp: event_time(event[e]),
        },
    };

    let mut actions = Vec::with_capacity(stored.len() + event.len());
    let (mut s, mut e) = (0, 0);
    // Anchors (matched pairs) in order, then a sentinel that flushes the tails.
    for (ms, me) in pairs
        .into_iter()
        .chain(std::iter::once((stored.len(), event.len())))
    {
        // The gap before this anchor: stored-only and event-only turns, each list in its
        // own order, interleaved by time (a stored turn first on a tie).
        while s < ms || e < me {
            if s < ms && is_moved[s] {
                s += 1;
                continue;
            }
            let take_stored = if s >= ms {
                false
            } else if e >= me {
                true
            } else {
                stored[s].timestamp <= event_time(event[e])
            };
            if take_stored {
                actions.push(keep(&stored[s]));
                s += 1;
            } else {
                actions.push(from_event(e));
                e += 1;
            }
        }
        if ms < stored.len() {
            actions.push(keep(&stored[ms]));
            s = ms + 1;
            e = me + 1;
        }
    }

    TranscriptPlan {
        turns: actions
            .into_iter()
            .zip(1..)
            .map(|(action, sequence_number)| PlannedTurn {
                sequence_number,
                action,
            })
            .collect(),
    }
}

/// Index pairs `(stored, event)` of matching turns, increasing in both: a longest common
/// subsequence, by Myers' diff (linear memory, so a long call is aligned exactly too).
fn align<T: Eq + Hash>(stored: &[T], event: &[T]) -> Vec<(usize, usize)> {
    similar::capture_diff_slices(Algorithm::Myers, stored, event)
        .into_iter()
        .filter_map(|op| match op {
            DiffOp::Equal {
                old_index,
                new_index,
                len,
            } => Some((0..len).map(move |k| (old_index + k, new_index + k))),
            _ => None,
        })
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::ConversationId;
    use time::macros::datetime;

    const START: OffsetDateTime = datetime!(2024-11-21 10:00:00 UTC);

    fn stored(turns: &[(i64, SpeakerType, &str, i64)]) -> Vec<CallTranscription> {
        turns
            .iter()
            .enumerate()
            .map(|(i, (id, speaker, text, secs))| CallTranscription {
                id: *id,
                conversation_id: ConversationId::parse("conv_1").expect("conv"),
                speaker_type: *speaker,
                message_text: (*text).to_owned(),
                timestamp: START + Duration::seconds(*secs),
                sequence_number: i as i32 + 1,
                created_at: START,
            })
            .collect()
    }

    fn event(turns: &[(SpeakerType, &str, i64)]) -> Vec<EventTurn> {
        turns
            .iter()
            .map(|(speaker, text, secs)| EventTurn {
                speaker: *speaker,
                message: (*text).to_owned(),
                time_in_call_secs: *secs,
            })
            .collect()
    }

    use SpeakerType::{Agent as A, Driver as D};

    /// The final transcript as (speaker-or-id, text) for readable assertions.
    fn render(plan: &TranscriptPlan, stored: &[CallTranscription]) -> Vec<String> {
        plan.turns
            .iter()
            .enumerate()
            .map(|(i, t)| {
                assert_eq!(t.sequence_number, i as i32 + 1, "numbers are 1..N");
                match &t.action {
                    TurnAction::Keep { id, .. } => {
                        let s = stored.iter().find(|s| s.id == *id).expect("kept row");
                        format!("#{id} {}", s.message_text)
                    }
                    TurnAction::Insert { message, .. } => format!("new {message}"),
                }
            })
            .collect()
    }

    const CALL: [(SpeakerType, &str, i64); 4] = [
        (A, "Hi, this is dispatch.", 0),
        (D, "Hello.", 3),
        (A, "Your reefer is out of range.", 5),
        (D, "I'll fix it by noon.", 9),
    ];

    #[test]
    fn a_missing_turn_in_the_middle_is_inserted_in_place() {
        let s = stored(&[
            (10, A, CALL[0].1, 0),
            (11, D, CALL[1].1, 3),
            (12, D, CALL[3].1, 9),
        ]);
        let plan = plan(&s, &event(&CALL), START);
        assert_eq!(
            render(&plan, &s),
            [
                "#10 Hi, this is dispatch.",
                "#11 Hello.",
                "new Your reefer is out of range.",
                "#12 I'll fix it by noon."
            ]
        );
        assert_eq!(plan.renumbered().collect::<Vec<_>>(), [(12, 3, 4)]);
        let inserted: Vec<_> = plan.inserted().collect();
        assert_eq!(inserted.len(), 1);
        assert_eq!(inserted[0].0, 3);
        assert_eq!(inserted[0].3, datetime!(2024-11-21 10:00:05 UTC));
    }

    #[test]
    fn a_missing_first_and_last_turn_are_inserted() {
        let s = stored(&[(11, D, CALL[1].1, 3), (12, A, CALL[2].1, 5)]);
        let plan = plan(&s, &event(&CALL), START);
        assert_eq!(
            render(&plan, &s),
            [
                "new Hi, this is dispatch.",
                "#11 Hello.",
                "#12 Your reefer is out of range.",
                "new I'll fix it by noon."
            ]
        );
        assert_eq!(
            plan.renumbered().collect::<Vec<_>>(),
            [(11, 1, 2), (12, 2, 3)]
        );
    }

    #[test]
    fn nothing_stored_takes_the_whole_event() {
        let plan = plan(&[], &event(&CALL), START);
        assert_eq!(plan.inserted().count(), 4);
        assert_eq!(plan.turns.len(), 4);
    }

    #[test]
    fn webhook_turns_the_event_lacks_keep_their_relative_place() {
        // The webhook stored an extra turn (say the event trimmed it) between 1 and 2.
        let s = stored(&[
            (10, A, CALL[0].1, 0),
            (11, D, "Uh, one second.", 2),
            (12, D, CALL[1].1, 3),
        ]);
        let plan = plan(&s, &event(&CALL), START);
        assert_eq!(
            render(&plan, &s),
            [
                "#10 Hi, this is dispatch.",
                "#11 Uh, one second.",
                "#12 Hello.",
                "new Your reefer is out of range.",
                "new I'll fix it by noon."
            ]
        );
        assert_eq!(plan.renumbered().count(), 0);
    }

    #[test]
    fn a_repeated_event_changes_nothing() {
        let s = stored(&[(10, A, CALL[0].1, 0), (12, D, CALL[3].1, 9)]);
        let first = plan(&s, &event(&CALL), START);
        assert!(!first.is_noop());
        // What the repository writes for the first plan …
        let after: Vec<CallTranscription> = first
            .turns
            .iter()
            .map(|t| {
                let (id, speaker, text, ts) = match &t.action {
                    TurnAction::Keep { id, .. } => {
                        let row = s.iter().find(|r| r.id == *id).expect("row");
                        (
                            *id,
                            row.speaker_type,
                            row.message_text.clone(),
                            row.timestamp,
                        )
                    }
                    TurnAction::Insert {
                        speaker,
                        message,
                        timestamp,
                    } => (
                        100 + i64::from(t.sequence_number),
                        *speaker,
                        message.clone(),
                        *timestamp,
                    ),
                };
                CallTranscription {
                    id,
                    conversation_id: ConversationId::parse("conv_1").expect("conv"),
                    speaker_type: speaker,
                    message_text: text,
                    timestamp: ts,
                    sequence_number: t.sequence_number,
                    created_at: START,
                }
            })
            .collect();
        // … merged with the same event again is a no-op.
        assert!(plan(&after, &event(&CALL), START).is_noop());
    }

    #[test]
    fn null_and_blank_messages_are_skipped() {
        let e = event(&[(A, "Hi", 0), (A, "", 1), (D, "   ", 2), (D, "Yes", 3)]);
        let plan = plan(&[], &e, START);
        let texts: Vec<_> = plan.inserted().map(|t| t.2.to_owned()).collect();
        assert_eq!(texts, ["Hi", "Yes"]);
    }

    #[test]
    fn matching_needs_the_same_speaker_and_ignores_whitespace() {
        let s = stored(&[(10, D, "Hi,  this is dispatch.", 0), (11, D, "Hello. ", 3)]);
        let plan = plan(&s, &event(&CALL[..2]), START);
        // "Hi…" was stored as the driver's: not the agent's turn, so both stay apart.
        assert_eq!(
            render(&plan, &s),
            [
                "#10 Hi,  this is dispatch.",
                "new Hi, this is dispatch.",
                "#11 Hello. "
            ]
        );
    }

    #[test]
    fn repeated_phrases_are_matched_in_order() {
        let e = event(&[(D, "Yes", 1), (A, "Ok", 2), (D, "Yes", 3)]);
        let s = stored(&[(10, D, "Yes", 3)]);
        let plan = plan(&s, &e, START);
        assert_eq!(plan.turns.len(), 3, "each event turn exactly once");
        assert_eq!(plan.inserted().count(), 2);
    }

    #[test]
    fn turns_stored_out_of_order_are_moved_not_duplicated() {
        // Two deliveries overtook each other: turn 4 was stored before turn 2.
        let s = stored(&[
            (10, A, CALL[0].1, 0),
            (11, D, CALL[3].1, 9),
            (12, D, CALL[1].1, 3),
        ]);
        let plan = plan(&s, &event(&CALL), START);
        assert_eq!(
            render(&plan, &s),
            [
                "#10 Hi, this is dispatch.",
                "#12 Hello.",
                "new Your reefer is out of range.",
                "#11 I'll fix it by noon."
            ]
        );
        // And the result is a fixpoint.
        let after = s
            .iter()
            .map(|row| {
                let seq = plan
                    .turns
                    .iter()
                    .find(|t| matches!(t.action, TurnAction::Keep { id, .. } if id == row.id))
                    .map(|t| t.sequence_number)
                    .expect("kept");
                CallTranscription {
                    sequence_number: seq,
                    ..row.clone()
                }
            })
            .chain(
                plan.inserted()
                    .map(|(seq, speaker, text, ts)| CallTranscription {
                        id: 99,
                        conversation_id: ConversationId::parse("conv_1").expect("conv"),
                        speaker_type: speaker,
                        message_text: text.to_owned(),
                        timestamp: ts,
                        sequence_number: seq,
                        created_at: START,
                    }),
            )
            .collect::<Vec<_>>();
        let mut after = after;
        after.sort_by_key(|t| t.sequence_number);
        assert!(super::plan(&after, &event(&CALL), START).is_noop());
    }

    #[test]
    fn alignment_matches_in_order() {
        assert_eq!(align(&[1, 2, 3], &[2, 9, 3]), [(1, 0), (2, 2)]);
        assert_eq!(align::<u8>(&[], &[1]), []);
    }

    /// The old quadratic table gave way to a greedy match above 4 M cells; Myers' diff is
    /// exact at any size.
    #[test]
    fn a_long_transcript_is_aligned_exactly() {
        let event: Vec<u32> = (0..5_000).map(|i| i % 7).collect();
        // Every 10th turn lost: the stored turns are a subsequence of the event.
        let stored: Vec<u32> = event
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 10 != 5)
            .map(|(_, v)| *v)
            .collect();

        let pairs = align(&stored, &event);

        assert_eq!(pairs.len(), stored.len());
        assert!(pairs.iter().all(|&(s, e)| stored[s] == event[e]));
        assert!(pairs.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1));
    }
}
