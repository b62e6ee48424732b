CREATE INDEX idx_calls_conversation_id ON calls (conversation_id);
CREATE UNIQUE INDEX ix_calls_conversation_id ON calls (conversation_id);
CREATE INDEX idx_calls_call_sid_status ON calls (call_sid, status);
CREATE INDEX idx_call_transcriptions_conversation_id ON call_transcriptions (conversation_id);
CREATE INDEX idx_call_transcriptions_conversation_seq ON call_transcriptions (conversation_id, sequence_number);
CREATE INDEX idx_call_transcriptions_sequence_number ON call_transcriptions (sequence_number);
CREATE INDEX ix_call_transcriptions_conversation_id ON call_transcriptions (conversation_id);
CREATE INDEX ix_call_transcriptions_sequence_number ON call_transcriptions (sequence_number);
ALTER TABLE call_transcriptions DROP CONSTRAINT uq_call_transcriptions_conversation_seq;
