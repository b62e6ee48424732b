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
        recipient_id -> Nullable<Int8>,
        attempt -> Nullable<Int4>,
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

diesel::table! {
    /// Stale-call repair bookkeeping (0014): when a Call may be asked about again.
    call_reconcile_checks (call_id) {
        call_id -> Int8,
        checks -> Int4,
        last_checked_at -> Timestamptz,
        next_check_at -> Timestamptz,
    }
}

diesel::table! {
    batches (id) {
        id -> Uuid,
        call_type -> Text,
        timestamp -> Text,
        created_at -> Timestamptz,
        cancelled_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    /// Leases with an expiry (0014): one stale-call reconciler at a time.
    leases (name) {
        name -> Text,
        holder -> Text,
        expires_at -> Timestamptz,
    }
}

diesel::joinable!(call_reconcile_checks -> calls (call_id));

diesel::table! {
    batch_recipients (id) {
        id -> Int8,
        batch_id -> Uuid,
        position -> Int4,
        driver_id -> Int8,
        driver_name -> Text,
        phone_number -> Varchar,
        custom_rules -> Text,
        trip_id -> Text,
        violations -> Jsonb,
        first_call_sid -> Varchar,
        time_zone -> Text,
        call_window -> Text,
        redial_delays_secs -> Array<Int4>,
        expires_at -> Timestamptz,
        state -> Text,
        attempt -> Int4,
        next_attempt_at -> Nullable<Timestamptz>,
        held_since -> Nullable<Timestamptz>,
        failure_reason -> Nullable<Text>,
        last_check -> Nullable<Jsonb>,
        updated_at -> Timestamptz,
    }
}

diesel::joinable!(batch_recipients -> batches (batch_id));

diesel::table! {
    console_sessions (id_hash) {
        id_hash -> Bytea,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    calls,
    call_transcriptions,
    batches,
    batch_recipients,
    call_reconcile_checks
);
