-- The floor: one prepared one-row INSERT per transaction into call_transcriptions, on calls
-- prefix1 .. prefixN (pgbench -D prefix=… -D calls=N). No lock, no lookup; the sequence keeps (conversation_id,
-- sequence_number) unique. Nothing durable can store a turn for less on this database.
\set call random(1, :calls)
INSERT INTO call_transcriptions
    (conversation_id, speaker_type, message_text, timestamp, sequence_number, created_at)
VALUES (:prefix || :call, 'agent', 'pgbench floor turn', now(), nextval('pgb_floor_seq'), now());
