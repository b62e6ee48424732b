DROP FUNCTION calls_append_turn(text, text, timestamptz, text);
