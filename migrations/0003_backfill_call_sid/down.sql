-- Before this migration no row had a call_sid.
UPDATE calls SET call_sid = NULL WHERE call_sid IS NOT NULL;
