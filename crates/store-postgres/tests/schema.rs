//! `src/schema.rs` is written by hand; this checks it against the migrated database, so a
//! migration that adds, drops, retypes or changes the nullability of a column fails here
//! until `schema.rs` says the same.
//!
//! The expectations come from `schema.rs` itself (included below, nothing is parsed): each
//! column's name, its SQL type's PostgreSQL OID (from diesel's `HasSqlType`) and whether it
//! is `Nullable<…>`. A new `table!` in `schema.rs` needs one line in `TABLES`; a table the
//! migrations create that `schema.rs` lacks fails `every_table_of_the_migrations_is_in_schema_rs`.

use calls_store_postgres::testing::TestDatabase;
use diesel::pg::{Pg, PgMetadataLookup, PgTypeMetadata};
use diesel::sql_types::is_nullable::{IsNullable, NotNull};
use diesel::sql_types::{HasSqlType, SqlType};
use diesel::{Column, Expression, Table};

#[allow(dead_code, unused_imports)]
#[path = "../src/schema.rs"]
mod schema;

/// Every `table!` of `schema.rs`: its name and its columns as diesel sees them.
fn tables() -> Vec<(&'static str, Vec<ColumnSpec>)> {
    vec![
        described::<schema::calls::table>("calls"),
        described::<schema::call_transcriptions::table>("call_transcriptions"),
        described::<schema::call_reconcile_checks::table>("call_reconcile_checks"),
        described::<schema::leases::table>("leases"),
        described::<schema::batches::table>("batches"),
        described::<schema::batch_recipients::table>("batch_recipients"),
        described::<schema::console_sessions::table>("console_sessions"),
    ]
}

/// One column: `name oid NOT NULL|NULL`, the form both sides are compared in.
type ColumnSpec = String;

fn described<T: Table>(name: &'static str) -> (&'static str, Vec<ColumnSpec>)
where
    T::AllColumns: Columns,
{
    let mut columns = T::AllColumns::specs();
    columns.sort();
    (name, columns)
}

/// The columns of a table's `AllColumns` tuple.
trait Columns {
    fn specs() -> Vec<ColumnSpec>;
}

trait OneColumn {
    fn spec() -> ColumnSpec;
}

impl<C> OneColumn for C
where
    C: Column + Expression,
    C::SqlType: SqlType,
    <C::SqlType as SqlType>::IsNull: Nullability,
    Pg: HasSqlType<C::SqlType>,
{
    fn spec() -> ColumnSpec {
        let metadata = <Pg as HasSqlType<C::SqlType>>::metadata(&mut NoLookup);
        let oid = metadata
            .oid()
            .unwrap_or_else(|e| panic!("column {}: no OID: {e}", C::NAME));
        let null = if <<C::SqlType as SqlType>::IsNull as Nullability>::NULLABLE {
            "NULL"
        } else {
            "NOT NULL"
        };
        format!("{} {oid} {null}", C::NAME)
    }
}

trait Nullability {
    const NULLABLE: bool;
}

impl Nullability for IsNullable {
    const NULLABLE: bool = true;
}

impl Nullability for NotNull {
    const NULLABLE: bool = false;
}

/// Built-in types have static OIDs; a custom type would need a database lookup, which
/// this test does not do (none of our columns has one).
struct NoLookup;

impl PgMetadataLookup for NoLookup {
    fn lookup_type(&mut self, type_name: &str, _schema: Option<&str>) -> PgTypeMetadata {
        panic!("schema.rs uses the custom type {type_name}; teach this test to look it up")
    }
}

macro_rules! columns_for_tuples {
    ($($c:ident)+) => {
        impl<$($c: OneColumn),+> Columns for ($($c,)+) {
            fn specs() -> Vec<ColumnSpec> {
                vec![$($c::spec()),+]
            }
        }
    };
}

columns_for_tuples!(A);
columns_for_tuples!(A B);
columns_for_tuples!(A B C);
columns_for_tuples!(A B C D);
columns_for_tuples!(A B C D E);
columns_for_tuples!(A B C D E F);
columns_for_tuples!(A B C D E F G);
columns_for_tuples!(A B C D E F G H);
columns_for_tuples!(A B C D E F G H I);
columns_for_tuples!(A B C D E F G H I J);
columns_for_tuples!(A B C D E F G H I J K);
columns_for_tuples!(A B C D E F G H I J K L);
columns_for_tuples!(A B C D E F G H I J K L M);
columns_for_tuples!(A B C D E F G H I J K L M N);
columns_for_tuples!(A B C D E F G H I J K L M N O);
columns_for_tuples!(A B C D E F G H I J K L M N O P);
columns_for_tuples!(A B C D E F G H I J K L M N O P Q);
columns_for_tuples!(A B C D E F G H I J K L M N O P Q R);
columns_for_tuples!(A B C D E F G H I J K L M N O P Q R S);
columns_for_tuples!(A B C D E F G H I J K L M N O P Q R S T);
columns_for_tuples!(A B C D E F G H I J K L M N O P Q R S T U);
columns_for_tuples!(A B C D E F G H I J K L M N O P Q R S T U V);
columns_for_tuples!(A B C D E F G H I J K L M N O P Q R S T U V W);
columns_for_tuples!(A B C D E F G H I J K L M N O P Q R S T U V W X);

/// The same description of `table` in the migrated database, from information_schema.
/// `varchar` reads as `text`: diesel's `Varchar` is an alias of `Text` (same OID, 25), so
/// schema.rs cannot tell them apart and neither does this check.
async fn migrated_columns(db: &TestDatabase, table: &str) -> Vec<ColumnSpec> {
    let schema = db.schema().as_str();
    db.strings(&format!(
        "SELECT c.column_name || ' ' \
                || CASE WHEN t.oid = 'varchar'::regtype THEN 'text'::regtype::oid ELSE t.oid END || ' ' \
                || CASE c.is_nullable WHEN 'YES' THEN 'NULL' ELSE 'NOT NULL' END AS value \
           FROM information_schema.columns c \
           JOIN pg_catalog.pg_namespace n ON n.nspname = c.udt_schema \
           JOIN pg_catalog.pg_type t ON t.typname = c.udt_name AND t.typnamespace = n.oid \
          WHERE c.table_schema = '{schema}' AND c.table_name = '{table}' \
          ORDER BY value"
    ))
    .await
}

#[tokio::test]
async fn schema_rs_matches_the_migrated_database() {
    let db = TestDatabase::new().await;
    for (table, expected) in tables() {
        let migrated = migrated_columns(&db, table).await;
        assert!(
            !migrated.is_empty(),
            "the migrations create no table {table}"
        );
        assert_eq!(
            expected, migrated,
            "schema.rs (left) and the migrated table {table} (right) differ; \
             columns are `name type-oid nullability` (SELECT oid, typname FROM pg_type names the OIDs)"
        );
    }
}

#[tokio::test]
async fn every_table_of_the_migrations_is_in_schema_rs() {
    let db = TestDatabase::new().await;
    let migrated = db
        .strings(&format!(
            "SELECT table_name AS value FROM information_schema.tables \
              WHERE table_schema = '{}' AND table_name <> '__diesel_schema_migrations' \
              ORDER BY table_name",
            db.schema().as_str()
        ))
        .await;
    let mut declared: Vec<&str> = tables().into_iter().map(|(name, _)| name).collect();
    declared.sort_unstable();
    assert_eq!(declared, migrated);
}

/// The check itself can fail: a column diesel would read as NOT NULL but the database
/// allows NULL in is told apart, as is another type.
#[test]
fn descriptions_tell_types_and_nullability_apart() {
    let (_, calls) = described::<schema::calls::table>("calls");
    assert!(calls.contains(&"id 20 NOT NULL".to_string()), "{calls:?}");
    assert!(
        calls.contains(&"conversation_id 25 NULL".to_string()),
        "{calls:?}"
    );
    assert!(
        calls.contains(&"call_start_time 1184 NOT NULL".to_string()),
        "{calls:?}"
    );
    let (_, turns) = described::<schema::call_transcriptions::table>("call_transcriptions");
    assert!(
        turns.contains(&"conversation_id 25 NOT NULL".to_string()),
        "{turns:?}"
    );
    assert!(
        turns.contains(&"sequence_number 23 NOT NULL".to_string()),
        "{turns:?}"
    );
}
