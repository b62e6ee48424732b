-- The append of 0010 with an answer that says what happened by name, instead of integer
-- codes the caller decodes by number. Same statements, same locking and guarantees (see
-- 0010). A new function rather than a changed one: binaries from before this migration keep
-- calling `calls_append_turn` while the new ones roll out; a later migration drops it.
CREATE TYPE append_turn_outcome AS ENUM (
    'created',                          -- a new turn; its ids
    'duplicate',                        -- the same turn was stored before; its ids
    'unknown_call',                     -- no Call has this call_sid
    'in_progress_without_conversation', -- the Call cannot take turns yet
    'completed_without_conversation',   -- the Call can never take turns
    'failed'                            -- the Call failed
);

CREATE TYPE append_turn_result AS (
    outcome append_turn_outcome,
    transcription_id bigint, -- NULL unless created or duplicate
    sequence_number int      -- NULL unless created or duplicate
);

CREATE FUNCTION calls_store_turn(
    p_call_sid text, p_speaker text, p_timestamp timestamptz, p_message text
) RETURNS append_turn_result
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
        RETURN ROW('unknown_call', NULL, NULL)::append_turn_result;
    END IF;
    IF v_status = 'failed' THEN
        RETURN ROW('failed', NULL, NULL)::append_turn_result;
    END IF;
    IF v_conversation IS NULL THEN
        RETURN ROW(CASE v_status WHEN 'in_progress' THEN 'in_progress_without_conversation'
                                 ELSE 'completed_without_conversation' END,
                   NULL, NULL)::append_turn_result;
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
        RETURN ROW('duplicate', v_id, v_seq)::append_turn_result;
    END IF;

    INSERT INTO call_transcriptions
        (conversation_id, speaker_type, message_text, timestamp, sequence_number, created_at)
    VALUES (
        v_conversation, p_speaker, p_message, p_timestamp,
        COALESCE((SELECT max(sequence_number) FROM call_transcriptions
                  WHERE conversation_id = v_conversation), 0) + 1,
        now())
    RETURNING id, sequence_number INTO v_id, v_seq;
    RETURN ROW('created', v_id, v_seq)::append_turn_result;
END
$$;
