DROP TRIGGER console_call_changed ON calls;
DROP TRIGGER console_turn_changed ON call_transcriptions;
DROP FUNCTION console_notify_call();
DROP FUNCTION console_notify_turn();
DROP TABLE console_sessions;
