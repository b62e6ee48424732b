-- The legacy schema cannot hold a Call without conversation_id: give such Calls a
-- placeholder that cannot clash with an ElevenLabs id (see docs/operations.md, rollback).
UPDATE calls SET conversation_id = 'unassigned:' || call_sid WHERE conversation_id IS NULL;
ALTER TABLE calls ALTER COLUMN conversation_id SET NOT NULL;
