-- The legacy schema exactly as SQLModel created it for the pre-refactor Python models
-- (shared/reference/legacy-schema.sql). A legacy database is adopted with `migrate --baseline`.
CREATE TYPE callstatus AS ENUM ('IN_PROGRESS', 'COMPLETED', 'FAILED');
CREATE TYPE speakertype AS ENUM ('AGENT', 'USER');
CREATE TABLE calls (
	id SERIAL NOT NULL, 
	conversation_id VARCHAR(255) NOT NULL, 
	driver_id INTEGER, 
	call_start_time TIMESTAMP WITH TIME ZONE NOT NULL, 
	call_end_time TIMESTAMP WITH TIME ZONE, 
	status callstatus NOT NULL, 
	created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	updated_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_calls_conversation_id UNIQUE (conversation_id)
);
CREATE INDEX idx_calls_conversation_id ON calls (conversation_id);
CREATE UNIQUE INDEX ix_calls_conversation_id ON calls (conversation_id);
CREATE TABLE call_transcriptions (
	id SERIAL NOT NULL, 
	conversation_id VARCHAR(255) NOT NULL, 
	speaker_type speakertype NOT NULL, 
	message_text TEXT NOT NULL, 
	timestamp TIMESTAMP WITH TIME ZONE NOT NULL, 
	sequence_number INTEGER NOT NULL, 
	created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(conversation_id) REFERENCES calls (conversation_id)
);
CREATE INDEX idx_call_transcriptions_conversation_id ON call_transcriptions (conversation_id);
CREATE INDEX idx_call_transcriptions_conversation_seq ON call_transcriptions (conversation_id, sequence_number);
CREATE INDEX idx_call_transcriptions_sequence_number ON call_transcriptions (sequence_number);
CREATE INDEX ix_call_transcriptions_conversation_id ON call_transcriptions (conversation_id);
CREATE INDEX ix_call_transcriptions_sequence_number ON call_transcriptions (sequence_number);
