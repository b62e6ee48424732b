-- A Call is now written before ElevenLabs answers with its conversation_id.
ALTER TABLE calls ALTER COLUMN conversation_id DROP NOT NULL;
