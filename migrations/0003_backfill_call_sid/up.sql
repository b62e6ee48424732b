-- EL_{driver_id}_{unix seconds of created_at}, EL_UNKNOWN_{...} when driver_id is NULL.
-- Rows that would share a value are told apart deterministically: the lowest id keeps the
-- plain value, the next ones get _2, _3, ... in id order. Only NULL call_sids are written,
-- so after `calls-server backfill` (the same expression in batches) this is a no-op.
-- Keep in sync with BATCH_CTE in crates/store-postgres/src/backfill.rs.
UPDATE calls AS c
SET call_sid = r.call_sid
FROM (
    SELECT id,
           'EL_' || COALESCE(driver_id::text, 'UNKNOWN') || '_'
               || floor(extract(epoch FROM created_at))::bigint::text
               || CASE WHEN rn = 1 THEN '' ELSE '_' || rn::text END AS call_sid
    FROM (
        SELECT id, driver_id, created_at,
               row_number() OVER (
                   PARTITION BY driver_id, floor(extract(epoch FROM created_at))
                   ORDER BY id
               ) AS rn
        FROM calls
    ) AS ranked
) AS r
WHERE c.id = r.id
  AND c.call_sid IS NULL;
