DROP INDEX idx_calls_call_sid_status;
ALTER TABLE calls DROP CONSTRAINT uq_calls_call_sid;
ALTER TABLE calls ALTER COLUMN call_sid DROP NOT NULL;
