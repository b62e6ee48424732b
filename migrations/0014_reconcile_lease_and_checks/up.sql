-- Stale-call repair that is fair and works behind any connection pooler (issue 18).
--
-- One instance at a time: a lease row with an expiry instead of a session advisory lock.
-- A session lock stays on whatever server connection a transaction-pooling PgBouncer gave
-- the holder, after the holder is gone; a row with an expiry cannot outlive it by more than
-- its TTL (the holder renews it while it works and deletes it when done).
CREATE TABLE leases (
    name text PRIMARY KEY,
    holder text NOT NULL,
    expires_at timestamptz NOT NULL
);

-- When each stale Call may be asked about again. A pass takes the Calls never asked first,
-- then those whose next check is due, so Calls whose conversations stay unfinished cannot
-- keep the others from being examined; and their checks back off with their age. A table of
-- its own: bookkeeping of the repair, not part of what a Call reads as.
CREATE TABLE call_reconcile_checks (
    call_id bigint PRIMARY KEY REFERENCES calls (id) ON DELETE CASCADE,
    checks int NOT NULL CHECK (checks > 0),
    last_checked_at timestamptz NOT NULL,
    next_check_at timestamptz NOT NULL
);
