DROP INDEX IF EXISTS uq_calls_recipient_attempt;
ALTER TABLE calls
    DROP CONSTRAINT IF EXISTS ck_calls_attempt,
    DROP COLUMN IF EXISTS attempt,
    DROP COLUMN IF EXISTS recipient_id;
DROP TABLE IF EXISTS batch_recipients;
DROP TABLE IF EXISTS batches;
