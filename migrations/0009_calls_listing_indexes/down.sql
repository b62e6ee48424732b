DROP INDEX idx_calls_driver_start_id;
DROP INDEX idx_calls_status_start_id;
DROP INDEX idx_calls_start_id;
