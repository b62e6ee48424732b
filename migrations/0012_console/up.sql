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

-- Live console pages: a tiny notification whenever a Call's state changes (status,
-- conversation_id, end, failure reason, outcome: a few times per call, whoever writes it:
-- webhook, dialer, reconciliation, another instance). The channel is named after the
-- schema (its first 55 characters: a channel name has at most 63), so deployments sharing
-- a database do not hear each other; the payload is `c` + call_sid, and listeners read the
-- row themselves.
--
-- Stored turns are announced by the service after their commit (`t` + call_sid on the
-- same channel), not by a trigger: a transaction that NOTIFYs takes a database-wide lock at
-- commit, which would serialize every webhook append (and its WAL flush) across all calls.
--
-- Notifying transactions still queue for that lock at commit, one after another. The
-- service's short `lock_timeout` (500 ms) is meant for row locks; a burst of Call changes
-- must make a commit wait a little, never fail, so the trigger gives the rest of its
-- transaction 5 s (unless it had no limit at all).
CREATE FUNCTION console_notify_call() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('lock_timeout') <> '0' THEN
        PERFORM set_config('lock_timeout', '5s', true);
    END IF;
    PERFORM pg_notify(left(TG_TABLE_SCHEMA, 55) || '.console', 'c' || NEW.call_sid);
    RETURN NULL;
END
$$;

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
