-- Our own identifier, nullable until every existing row has been backfilled.
ALTER TABLE calls ADD COLUMN call_sid VARCHAR(255);
