-- A binary that calls calls_store_turn must be rolled back first; 0010's function stays.
DROP FUNCTION calls_store_turn(text, text, timestamptz, text);
DROP TYPE append_turn_result;
DROP TYPE append_turn_outcome;
