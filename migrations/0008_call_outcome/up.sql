-- ElevenLabs' post-call analysis of a Call (call_successful, summary, data_collection,
-- termination_reason, duration_secs), NULL until a post-call event or the stale-call
-- repair brings one. One jsonb object: it is read whole with the Call and never filtered on.
ALTER TABLE calls
    ADD COLUMN outcome jsonb NULL
        CONSTRAINT ck_calls_outcome_object CHECK (outcome IS NULL OR jsonb_typeof(outcome) = 'object');
