-- The service's append transaction as it was before migration 0010 (issue 11's baseline;
-- the service now runs the same steps as one call of calls_store_turn): lock the Call's
-- row, then one statement that returns the stored turn when
-- the same one exists and otherwise inserts the next sequence number, then commit. The
-- pool's recycling check (SELECT 1) is the service's own overhead and is not here.
-- Conversation id = call_sid = prefix || call; every message is new.
\set call random(1, :calls)
\set n random(1, 1000000000)
BEGIN;
SELECT conversation_id, status FROM calls WHERE call_sid = :prefix || :call FOR NO KEY UPDATE;
WITH dup AS (
    SELECT id, sequence_number FROM call_transcriptions
    WHERE conversation_id = :prefix || :call AND speaker_type = 'agent' AND timestamp = now()
      AND message_text = 'pgbench turn ' || :client_id || '-' || :n
    LIMIT 1
), ins AS (
    INSERT INTO call_transcriptions
        (conversation_id, speaker_type, message_text, timestamp, sequence_number, created_at)
    SELECT :prefix || :call, 'agent', 'pgbench turn ' || :client_id || '-' || :n, now(),
           COALESCE((SELECT max(sequence_number) FROM call_transcriptions
                     WHERE conversation_id = :prefix || :call), 0) + 1,
           now()
    WHERE NOT EXISTS (SELECT 1 FROM dup)
    RETURNING id, sequence_number
)
SELECT id, sequence_number, false AS duplicate FROM ins
UNION ALL
SELECT id, sequence_number, true AS duplicate FROM dup;
END;
