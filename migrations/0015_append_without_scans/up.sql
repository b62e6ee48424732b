-- The webhook's append without per-turn scans (issue 17): the duplicate check of a running
-- call reads the turns of one instant through an index instead of every turn of the call,
-- so a turn costs the same at turn 1,000 as at turn 10 (docs/performance.md). The next
-- sequence number already comes from a backward scan of
-- uq_call_transcriptions_conversation_seq (one entry). Same locking and guarantees as 0013.
--
-- Legacy duplicates need no answer here: the index is not unique (the first stored copy of
-- a turn still wins, as before).
CREATE INDEX idx_call_transcriptions_conversation_timestamp
    ON call_transcriptions (conversation_id, "timestamp");

CREATE OR REPLACE FUNCTION calls_store_turn(
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

    -- The same turn stored before wins. While the call runs a turn's identity includes its
    -- timestamp, so the check reads idx_call_transcriptions_conversation_timestamp: the
    -- turns of that instant, not every turn of the call. Once the Call is completed its
    -- transcript was reconciled with the provider's (own timestamps): same speaker and text
    -- suffice, and that rare case reads the call's turns.
    IF v_status = 'completed' THEN
        SELECT id, sequence_number INTO v_id, v_seq
        FROM call_transcriptions
        WHERE conversation_id = v_conversation AND speaker_type = p_speaker
          AND message_text = p_message
        ORDER BY sequence_number
        LIMIT 1;
    ELSE
        -- OFFSET 0 keeps the filter (served by the timestamp index) apart from the order, so
        -- no plan walks the call's turns in sequence order to find the first match.
        SELECT t.id, t.sequence_number INTO v_id, v_seq
        FROM (SELECT id, sequence_number FROM call_transcriptions
              WHERE conversation_id = v_conversation AND timestamp = p_timestamp
                AND speaker_type = p_speaker AND message_text = p_message
              OFFSET 0) t
        ORDER BY t.sequence_number
        LIMIT 1;
    END IF;
    IF v_id IS NOT NULL THEN
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
