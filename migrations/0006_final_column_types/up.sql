-- Enums by member name (SQLModel) become lowercase text with CHECK constraints, so new
-- values need no ALTER TYPE; ElevenLabs' USER is our driver.
ALTER TABLE calls ALTER COLUMN status TYPE TEXT USING lower(status::text);
ALTER TABLE calls ADD CONSTRAINT ck_calls_status
    CHECK (status IN ('in_progress', 'completed', 'failed'));
ALTER TABLE call_transcriptions ALTER COLUMN speaker_type TYPE TEXT
    USING (CASE speaker_type WHEN 'AGENT' THEN 'agent' ELSE 'driver' END);
ALTER TABLE call_transcriptions ADD CONSTRAINT ck_call_transcriptions_speaker_type
    CHECK (speaker_type IN ('agent', 'driver'));
DROP TYPE callstatus;
DROP TYPE speakertype;

-- 64-bit ids and driver ids (the dispatcher's driverId is a 64-bit integer).
ALTER SEQUENCE calls_id_seq AS BIGINT;
ALTER TABLE calls ALTER COLUMN id TYPE BIGINT;
ALTER TABLE calls ALTER COLUMN driver_id TYPE BIGINT;
ALTER SEQUENCE call_transcriptions_id_seq AS BIGINT;
ALTER TABLE call_transcriptions ALTER COLUMN id TYPE BIGINT;

-- Why a call failed, for audit.
ALTER TABLE calls ADD COLUMN failure_reason TEXT;

-- Defaults for bookkeeping columns, so hand-written SQL (operators, scripts) need not
-- supply them; the service always sets them explicitly.
ALTER TABLE calls ALTER COLUMN status SET DEFAULT 'in_progress';
ALTER TABLE calls ALTER COLUMN created_at SET DEFAULT now();
ALTER TABLE calls ALTER COLUMN updated_at SET DEFAULT now();
ALTER TABLE call_transcriptions ALTER COLUMN created_at SET DEFAULT now();
