-- The dispatcher console (docs/console.md).
--
-- Sessions live here, not in process memory, so that logging out ends a session on every
-- instance. Only the SHA-256 of the session id is stored: a leaked row logs nobody in. The
-- primary key serves the one lookup (by hash); expired rows are swept by the login path
-- (a sequential scan of a table of a few rows, so no index on expires_at).
CREATE TABLE console_sessions (
    id_hash bytea PRIMARY KEY CHECK (octet_length(id_hash) = 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

-- Live console pages: a tiny notification whenever a Call's transcript or state changes.
-- The channel is named after the schema (its first 55 characters: a channel name has at
-- most 63), so deployments sharing a database do not hear each other. The payload is only
-- a key, `t` + conversation_id for a turn and `c` + call_sid for a Call; listeners read
-- the rows themselves. PostgreSQL folds identical notifications of one transaction into
-- one, so a reconciliation that inserts many turns sends one.
CREATE FUNCTION console_notify_turn() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(left(TG_TABLE_SCHEMA, 55) || '.console', 't' || NEW.conversation_id);
    RETURN NULL;
END
$$;

CREATE FUNCTION console_notify_call() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(left(TG_TABLE_SCHEMA, 55) || '.console', 'c' || NEW.call_sid);
    RETURN NULL;
END
$$;

-- A new turn, or one renumbered by the post-call reconciliation.
CREATE TRIGGER console_turn_changed
    AFTER INSERT OR UPDATE OF sequence_number ON call_transcriptions
    FOR EACH ROW EXECUTE FUNCTION console_notify_turn();

-- What a Call page shows of the Call itself; other updates (updated_at alone) stay silent.
CREATE TRIGGER console_call_changed
    AFTER UPDATE ON calls
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.conversation_id IS DISTINCT FROM NEW.conversation_id
          OR OLD.outcome IS DISTINCT FROM NEW.outcome
          OR OLD.failure_reason IS DISTINCT FROM NEW.failure_reason
          OR OLD.call_end_time IS DISTINCT FROM NEW.call_end_time)
    EXECUTE FUNCTION console_notify_call();
