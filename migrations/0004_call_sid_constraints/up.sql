ALTER TABLE calls ALTER COLUMN call_sid SET NOT NULL;
ALTER TABLE calls ADD CONSTRAINT uq_calls_call_sid UNIQUE (call_sid);
-- The seed's compound status index; 0007 drops it again as redundant with uq_calls_call_sid.
CREATE INDEX idx_calls_call_sid_status ON calls (call_sid, status);
