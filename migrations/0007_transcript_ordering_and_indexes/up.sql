-- Legacy sequence numbers came from a racy count()+1 and may repeat within a conversation.
-- Only conversations with repeats are renumbered (by old number, then id); all others keep
-- their numbers untouched.
UPDATE call_transcriptions AS t
SET sequence_number = r.rn
FROM (
    SELECT id,
           row_number() OVER (PARTITION BY conversation_id ORDER BY sequence_number, id)::int AS rn
    FROM call_transcriptions
    WHERE conversation_id IN (
        SELECT conversation_id FROM call_transcriptions
        GROUP BY conversation_id, sequence_number HAVING count(*) > 1
    )
) AS r
WHERE t.id = r.id AND t.sequence_number <> r.rn;

-- One turn per position per conversation. Its index serves listing a transcript in order,
-- the next sequence number (max), duplicate detection and the FK check on calls.
ALTER TABLE call_transcriptions
    ADD CONSTRAINT uq_call_transcriptions_conversation_seq UNIQUE (conversation_id, sequence_number);

-- Redundant indexes (docs/database.md): each duplicates a unique constraint's index or
-- serves no query the service runs.
DROP INDEX idx_calls_conversation_id;
DROP INDEX ix_calls_conversation_id;
DROP INDEX idx_calls_call_sid_status;
DROP INDEX idx_call_transcriptions_conversation_id;
DROP INDEX ix_call_transcriptions_conversation_id;
DROP INDEX idx_call_transcriptions_conversation_seq;
DROP INDEX idx_call_transcriptions_sequence_number;
DROP INDEX ix_call_transcriptions_sequence_number;
