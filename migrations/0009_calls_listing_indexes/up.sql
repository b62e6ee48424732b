-- GET /calls lists newest first by (call_start_time DESC, id DESC) and pages by keyset
-- `(call_start_time, id) < (…)`. Each index serves one shape of that query in its order,
-- so a page reads about `limit` index entries however deep it is; plans in
-- docs/database.md. No existing index covers these columns, so none is dropped.
-- IF NOT EXISTS: on a large table an operator may build them CONCURRENTLY beforehand.

-- No filter, since/until, and every page after a cursor.
CREATE INDEX IF NOT EXISTS idx_calls_start_id ON calls (call_start_time DESC, id DESC);
-- status (alone or with since/until): in_progress and failed Calls are a small minority,
-- so filtering the time index for them would read most of the table.
CREATE INDEX IF NOT EXISTS idx_calls_status_start_id ON calls (status, call_start_time DESC, id DESC);
-- driver_id (alone or with any other filter): a driver's Calls are a tiny fraction.
CREATE INDEX IF NOT EXISTS idx_calls_driver_start_id ON calls (driver_id, call_start_time DESC, id DESC);
