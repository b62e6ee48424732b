-- The transcription webhook's append as one server-side function, so a turn costs one round
-- trip in autocommit instead of BEGIN, lock, append, COMMIT (docs/database.md, "Appending a
-- turn"). Same logic and guarantees as the statements it replaces: in a VOLATILE PL/pgSQL
-- function every statement takes a fresh snapshot under READ COMMITTED, so once the Call's
-- row lock is granted the duplicate check and max(sequence_number) see every append
-- committed before it.
--
-- Result: ARRAY[code, transcription_id, sequence_number] with code
--   0 created · 1 duplicate (ids of the stored turn) · 2 no such call_sid ·
--   3/4/5 the Call cannot take turns (in_progress without conversation_id / completed
--   without one / failed).
CREATE FUNCTION calls_append_turn(
    p_call_sid text, p_speaker text, p_timestamp timestamptz, p_message text
) RETURNS bigint[]
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_conversation varchar;
    v_status text;
    v_id bigint;
    v_seq int;
BEGIN
    -- Serializes appends per call, across connections and instances. FOR NO KEY UPDATE so
    -- the FK checks of concurrent inserts (FOR KEY SHARE) do not wait on it.
    SELECT conversation_id, status INTO v_conversation, v_status
    FROM calls WHERE call_sid = p_call_sid
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN ARRAY[2, 0, 0]::bigint[];
    END IF;
    IF v_conversation IS NULL OR v_status = 'failed' THEN
        RETURN ARRAY[CASE v_status WHEN 'in_progress' THEN 3 WHEN 'completed' THEN 4 ELSE 5 END, 0, 0]::bigint[];
    END IF;

    -- The same turn stored before wins. Once the Call is completed its transcript was
    -- reconciled with the provider's (own timestamps): same speaker and text suffice.
    SELECT id, sequence_number INTO v_id, v_seq
    FROM call_transcriptions
    WHERE conversation_id = v_conversation AND speaker_type = p_speaker
      AND message_text = p_message
      AND (timestamp = p_timestamp OR v_status = 'completed')
    ORDER BY sequence_number
    LIMIT 1;
    IF FOUND THEN
        RETURN ARRAY[1, v_id, v_seq]::bigint[];
    END IF;

    INSERT INTO call_transcriptions
        (conversation_id, speaker_type, message_text, timestamp, sequence_number, created_at)
    VALUES (
        v_conversation, p_speaker, p_message, p_timestamp,
        COALESCE((SELECT max(sequence_number) FROM call_transcriptions
                  WHERE conversation_id = v_conversation), 0) + 1,
        now())
    RETURNING id, sequence_number INTO v_id, v_seq;
    RETURN ARRAY[0, v_id, v_seq]::bigint[];
END
$$;
