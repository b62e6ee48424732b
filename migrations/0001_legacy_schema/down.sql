DROP TABLE call_transcriptions;
DROP TABLE calls;
DROP TYPE speakertype;
DROP TYPE callstatus;
