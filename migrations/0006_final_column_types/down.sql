ALTER TABLE call_transcriptions ALTER COLUMN created_at DROP DEFAULT;
ALTER TABLE calls ALTER COLUMN updated_at DROP DEFAULT;
ALTER TABLE calls ALTER COLUMN created_at DROP DEFAULT;
ALTER TABLE calls ALTER COLUMN status DROP DEFAULT;

ALTER TABLE calls DROP COLUMN failure_reason;

ALTER TABLE call_transcriptions ALTER COLUMN id TYPE INTEGER;
ALTER SEQUENCE call_transcriptions_id_seq AS INTEGER;
ALTER TABLE calls ALTER COLUMN driver_id TYPE INTEGER;
ALTER TABLE calls ALTER COLUMN id TYPE INTEGER;
ALTER SEQUENCE calls_id_seq AS INTEGER;

CREATE TYPE callstatus AS ENUM ('IN_PROGRESS', 'COMPLETED', 'FAILED');
CREATE TYPE speakertype AS ENUM ('AGENT', 'USER');
ALTER TABLE call_transcriptions DROP CONSTRAINT ck_call_transcriptions_speaker_type;
ALTER TABLE call_transcriptions ALTER COLUMN speaker_type TYPE speakertype
    USING (CASE speaker_type WHEN 'agent' THEN 'AGENT' ELSE 'USER' END)::speakertype;
ALTER TABLE calls DROP CONSTRAINT ck_calls_status;
ALTER TABLE calls ALTER COLUMN status TYPE callstatus USING upper(status)::callstatus;
