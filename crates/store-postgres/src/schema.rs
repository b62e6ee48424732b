// The final state of the schema (after every migration), as diesel sees it.

diesel::table! {
    calls (id) {
        id -> Int8,
        call_sid -> Varchar,
        conversation_id -> Nullable<Varchar>,
        driver_id -> Nullable<Int8>,
        call_start_time -> Timestamptz,
        call_end_time -> Nullable<Timestamptz>,
        status -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        failure_reason -> Nullable<Text>,
        outcome -> Nullable<Jsonb>,
    }
}

diesel::table! {
    call_transcriptions (id) {
        id -> Int8,
        conversation_id -> Varchar,
        speaker_type -> Text,
        message_text -> Text,
        timestamp -> Timestamptz,
        sequence_number -> Int4,
        created_at -> Timestamptz,
    }
}

diesel::allow_tables_to_appear_in_same_query!(calls, call_transcriptions);

diesel::table! {
    console_sessions (id_hash) {
        id_hash -> Bytea,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
    }
}
