//! The migration history: reversible, exact, and upgrading legacy data intact.

use calls_store_postgres::testing::TestDatabase;
use calls_store_postgres::{
    BackfillOptions, MigrateCommand, backfill_call_sids, migrate, migration_names,
};

/// Every embedded version, oldest first (the numbering may have gaps while branches merge).
fn versions() -> Vec<u32> {
    migration_names()
        .expect("embedded migrations")
        .iter()
        .map(|name| name[..4].parse().expect("NNNN_ prefix"))
        .collect()
}

fn latest() -> u32 {
    versions().last().copied().expect("at least one migration")
}

async fn to(db: &TestDatabase, version: u32) {
    migrate(db.config(), MigrateCommand::To(version))
        .await
        .unwrap_or_else(|e| panic!("migrate --to {version}: {e:?}"));
}

/// Everything but diesel's own bookkeeping table.
async fn fingerprint(db: &TestDatabase) -> Vec<String> {
    db.schema_fingerprint()
        .await
        .into_iter()
        .filter(|line| !line.contains("__diesel_schema_migrations"))
        .collect()
}

#[tokio::test]
async fn up_all_down_all_up_all_leaves_the_same_schema() {
    let db = TestDatabase::empty().await;
    to(&db, latest()).await;
    let first = fingerprint(&db).await;

    to(&db, 0).await;
    assert_eq!(
        fingerprint(&db).await,
        Vec::<String>::new(),
        "down all leaves nothing"
    );
    to(&db, latest()).await;

    assert_eq!(fingerprint(&db).await, first);
}

#[tokio::test]
async fn every_down_sql_restores_the_schema_before_its_up_sql() {
    let db = TestDatabase::empty().await;
    let mut previous = 0;
    for version in versions() {
        to(&db, previous).await;
        let before = fingerprint(&db).await;
        to(&db, version).await;
        to(&db, previous).await;
        assert_eq!(
            fingerprint(&db).await,
            before,
            "migrations/{version:04}_*/down.sql does not undo its up.sql"
        );
        previous = version;
    }
}

/// The DDL SQLModel creates for the seed's pre-refactor models, kept in the repository so
/// that this comparison always runs (a missing file fails the test, it never skips).
const LEGACY_SCHEMA: &str = "tests/fixtures/legacy-schema.sql";

#[tokio::test]
async fn the_first_migration_is_exactly_the_reference_legacy_schema() {
    let reference = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(LEGACY_SCHEMA);
    let legacy_sql = std::fs::read_to_string(&reference)
        .unwrap_or_else(|e| panic!("the legacy schema fixture {}: {e}", reference.display()));
    let migrated = TestDatabase::empty().await;
    to(&migrated, 1).await;
    let by_hand = TestDatabase::empty().await;
    by_hand.execute(&legacy_sql).await;

    let expected = fingerprint(&by_hand).await;
    assert!(
        expected
            .iter()
            .any(|line| line.starts_with("column calls.conversation_id")),
        "the fixture creates the legacy tables: {expected:?}"
    );
    assert_eq!(fingerprint(&migrated).await, expected);
}

#[tokio::test]
async fn the_final_schema_has_only_the_justified_indexes() {
    let db = TestDatabase::new().await;
    let indexes = db
        .strings(&format!(
            "SELECT indexname AS value FROM pg_indexes WHERE schemaname = '{}' \
             AND tablename IN ('calls', 'call_transcriptions', 'batches', 'batch_recipients', \
             'leases', 'call_reconcile_checks') \
             ORDER BY indexname",
            db.schema()
        ))
        .await;
    assert_eq!(
        indexes,
        [
            "batch_recipients_pkey",
            "batches_pkey",
            "call_reconcile_checks_pkey",
            "call_transcriptions_pkey",
            "calls_pkey",
            "idx_batch_recipients_due",
            "idx_batch_recipients_live",
            "idx_batches_created_id",
            "idx_call_transcriptions_conversation_timestamp",
            "idx_calls_driver_start_id",
            "idx_calls_start_id",
            "idx_calls_status_start_id",
            "leases_pkey",
            "uq_batch_recipients_batch_position",
            "uq_batch_recipients_first_call_sid",
            "uq_call_transcriptions_conversation_seq",
            "uq_calls_call_sid",
            "uq_calls_conversation_id",
            "uq_calls_recipient_attempt",
        ]
    );
}

async fn insert_legacy_call(db: &TestDatabase, conversation: &str, driver: &str, created_at: &str) {
    db.execute(&format!(
        "INSERT INTO calls (conversation_id, driver_id, call_start_time, status, created_at, updated_at) \
         VALUES ('{conversation}', {driver}, '{created_at}', 'COMPLETED', '{created_at}', '{created_at}')"
    ))
    .await;
}

#[tokio::test]
async fn backfill_migration_follows_the_seed_format_and_keeps_collisions_apart() {
    let db = TestDatabase::empty().await;
    to(&db, 1).await;
    insert_legacy_call(&db, "conv_old_1", "444", "2024-11-21 10:00:00.25+00").await;
    insert_legacy_call(&db, "conv_old_2", "NULL", "2024-11-21 10:00:01+00").await;
    insert_legacy_call(&db, "conv_same_a", "555", "2024-11-21 11:00:00+00").await;
    insert_legacy_call(&db, "conv_same_b", "555", "2024-11-21 11:00:00.9+00").await;
    db.execute(
        "INSERT INTO call_transcriptions (conversation_id, speaker_type, message_text, timestamp, sequence_number, created_at) \
         VALUES ('conv_old_1', 'USER', 'hello', now(), 1, now()), ('conv_old_1', 'AGENT', 'hi', now(), 2, now())",
    )
    .await;

    to(&db, latest()).await;

    let sids = db
        .strings("SELECT conversation_id || '=' || call_sid AS value FROM calls ORDER BY id")
        .await;
    assert_eq!(
        sids,
        [
            "conv_old_1=EL_444_1732183200",
            "conv_old_2=EL_UNKNOWN_1732183201",
            "conv_same_a=EL_555_1732186800",
            "conv_same_b=EL_555_1732186800_2",
        ]
    );
    assert_eq!(
        db.strings("SELECT status AS value FROM calls ORDER BY id")
            .await,
        vec!["completed"; 4]
    );
    assert_eq!(
        db.strings(
            "SELECT speaker_type AS value FROM call_transcriptions ORDER BY sequence_number"
        )
        .await,
        ["driver", "agent"]
    );
}

#[tokio::test]
async fn legacy_duplicate_sequence_numbers_are_renumbered_and_others_kept() {
    let db = TestDatabase::empty().await;
    to(&db, 1).await;
    insert_legacy_call(&db, "conv_dupes", "1", "2024-11-21 10:00:00+00").await;
    insert_legacy_call(&db, "conv_gaps", "2", "2024-11-21 10:00:00+00").await;
    db.execute(
        "INSERT INTO call_transcriptions (conversation_id, speaker_type, message_text, timestamp, sequence_number, created_at) VALUES \
         ('conv_dupes', 'AGENT', 'a', now(), 1, now()), ('conv_dupes', 'USER', 'b', now(), 2, now()), \
         ('conv_dupes', 'AGENT', 'c', now(), 2, now()), ('conv_gaps', 'AGENT', 'x', now(), 1, now()), \
         ('conv_gaps', 'USER', 'y', now(), 5, now())",
    )
    .await;

    to(&db, latest()).await;

    assert_eq!(
        db.strings(
            "SELECT conversation_id || ':' || message_text || ':' || sequence_number AS value \
             FROM call_transcriptions ORDER BY id"
        )
        .await,
        [
            "conv_dupes:a:1",
            "conv_dupes:b:2",
            "conv_dupes:c:3",
            "conv_gaps:x:1",
            "conv_gaps:y:5"
        ]
    );
}

/// 10,000 legacy rows with many collisions, the same in two schemas.
async fn ten_thousand_legacy_rows(db: &TestDatabase) {
    to(db, 2).await;
    db.execute(
        "INSERT INTO calls (conversation_id, driver_id, call_start_time, status, created_at, updated_at) \
         SELECT 'conv_' || g, CASE WHEN g % 13 = 0 THEN NULL ELSE g % 97 END, \
                timestamptz '2024-01-01 00:00:00+00' + (g % 400) * interval '1 second', 'COMPLETED', \
                timestamptz '2024-01-01 00:00:00+00' + ((g * 7919) % 3000) * interval '150 milliseconds', now() \
         FROM generate_series(1, 10000) AS g",
    )
    .await;
}

#[tokio::test]
async fn batched_backfill_gives_exactly_what_the_migration_gives() {
    let by_migration = TestDatabase::empty().await;
    ten_thousand_legacy_rows(&by_migration).await;
    to(&by_migration, 3).await;

    let by_command = TestDatabase::empty().await;
    ten_thousand_legacy_rows(&by_command).await;
    let options = BackfillOptions {
        batch_size: 777,
        dry_run: false,
    };
    let report = backfill_call_sids(by_command.config(), options, &|_, _| {})
        .await
        .expect("backfill");

    assert_eq!(report.pending_at_start, 10_000);
    assert_eq!(report.updated, 10_000);
    assert_eq!(report.batches, 13);
    let query = "SELECT id || ':' || call_sid AS value FROM calls ORDER BY id";
    let expected = by_migration.strings(query).await;
    assert_eq!(by_command.strings(query).await, expected);
    assert!(
        expected.iter().any(|v| v.ends_with("_2")),
        "the data has collisions"
    );
    let distinct = by_command
        .strings("SELECT count(DISTINCT call_sid)::text AS value FROM calls")
        .await;
    assert_eq!(distinct, ["10000"]);

    // Resumable and idempotent: a second run finds nothing; the migration is then a no-op.
    let again = backfill_call_sids(by_command.config(), options, &|_, _| {})
        .await
        .expect("second run");
    assert_eq!(again.updated, 0);
    to(&by_command, latest()).await;
    assert_eq!(by_command.strings(query).await.len(), 10_000);
    let helper = by_command
        .strings(&format!(
            "SELECT indexname AS value FROM pg_indexes WHERE schemaname = '{}' AND indexname LIKE '%backfill%'",
            by_command.schema()
        ))
        .await;
    assert!(helper.is_empty(), "the helper index is dropped: {helper:?}");
}

#[tokio::test]
async fn a_partial_backfill_resumes_where_it_stopped() {
    let db = TestDatabase::empty().await;
    ten_thousand_legacy_rows(&db).await;
    // Simulate an interrupted run: the first 2,500 rows were done by the migration's rule.
    let reference = TestDatabase::empty().await;
    ten_thousand_legacy_rows(&reference).await;
    to(&reference, 3).await;
    let expected = reference
        .strings("SELECT id || ':' || call_sid AS value FROM calls ORDER BY id")
        .await;
    for line in expected.iter().take(2_500) {
        let (id, sid) = line.split_once(':').expect("id:sid");
        db.execute(&format!(
            "UPDATE calls SET call_sid = '{sid}' WHERE id = {id}"
        ))
        .await;
    }

    let report = backfill_call_sids(
        db.config(),
        BackfillOptions {
            batch_size: 1000,
            dry_run: false,
        },
        &|_, _| {},
    )
    .await
    .expect("backfill");

    assert_eq!(report.pending_at_start, 7_500);
    assert_eq!(
        db.strings("SELECT id || ':' || call_sid AS value FROM calls ORDER BY id")
            .await,
        expected
    );
}

#[tokio::test]
async fn a_dry_run_writes_nothing_and_refuses_before_the_column_exists() {
    let db = TestDatabase::empty().await;
    to(&db, 1).await;
    insert_legacy_call(&db, "conv_1", "444", "2024-11-21 10:00:00+00").await;
    let refused = backfill_call_sids(db.config(), BackfillOptions::default(), &|_, _| {}).await;
    assert!(refused.is_err(), "no call_sid column at version 1");

    to(&db, 2).await;
    let report = backfill_call_sids(
        db.config(),
        BackfillOptions {
            batch_size: 10,
            dry_run: true,
        },
        &|_, _| {},
    )
    .await
    .expect("dry run");

    assert_eq!(report.pending_at_start, 1);
    assert_eq!(report.updated, 0);
    assert_eq!(
        report.preview.first().map(|p| p.1.as_str()),
        Some("EL_444_1732183200")
    );
    assert_eq!(
        db.strings("SELECT COALESCE(call_sid, 'NULL') AS value FROM calls")
            .await,
        ["NULL"]
    );
}

#[tokio::test]
async fn a_legacy_database_without_history_is_adopted_with_baseline() {
    let db = TestDatabase::empty().await;
    db.execute(include_str!(
        "../../../migrations/0001_legacy_schema/up.sql"
    ))
    .await;
    insert_legacy_call(&db, "conv_legacy", "444", "2024-11-21 10:00:00+00").await;

    let refused = migrate(db.config(), MigrateCommand::Latest).await;
    assert!(
        refused.is_err(),
        "plain migrate must not clobber a legacy database"
    );

    let baseline = migrate(db.config(), MigrateCommand::Baseline)
        .await
        .expect("baseline");
    assert_eq!(baseline.baselined.as_deref(), Some("0001"));
    let again = migrate(db.config(), MigrateCommand::Baseline).await;
    assert!(again.is_err(), "baseline twice is refused");
    let report = migrate(db.config(), MigrateCommand::Latest)
        .await
        .expect("migrate");

    assert_eq!(
        report.applied.len(),
        versions().len() - 1,
        "every migration after the legacy one"
    );
    assert_eq!(
        db.strings("SELECT call_sid || ' ' || status AS value FROM calls")
            .await,
        ["EL_444_1732183200 completed"]
    );
}

#[tokio::test]
async fn baseline_on_an_empty_schema_is_refused() {
    let db = TestDatabase::empty().await;
    assert!(
        migrate(db.config(), MigrateCommand::Baseline)
            .await
            .is_err()
    );
    assert!(migrate(db.config(), MigrateCommand::To(99)).await.is_err());
}
