DROP TRIGGER console_call_changed ON calls;
DROP FUNCTION console_notify_call();
DROP TABLE console_sessions;
