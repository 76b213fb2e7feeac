//! Brings a store's schema up to date: numbered migration files, applied
//! in order, each recorded in the schema's `schema_migrations` table.
//!
//! Everything happens in one transaction that first takes an advisory
//! lock on the schema's name, so hosts starting at once take turns: the
//! first creates the schema and its tables, the others find them there and
//! apply nothing. A schema whose recorded version is newer than this
//! binary's migrations was written by a newer taskflow and is refused
//! before anything is changed.

use tokio_postgres::Client;

use super::sql::quote;

/// Migrations, applied in order; `schema_migrations` records those applied.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_tasks.sql"),
    include_str!("migrations/0002_schedules.sql"),
];

/// The advisory lock class of migrations ("tfmi"), with the schema's hash
/// as the second key: two stores in two schemas migrate independently.
const MIGRATION_LOCK: i32 = 0x7466_6d69;

/// How a migration ended.
#[derive(Debug)]
pub(super) enum Migrated {
    /// The schema is at this binary's version.
    UpToDate,
    /// The schema is at version `found`, newer than this binary's.
    TooNew { found: i64, supported: i64 },
}

/// Creates `schema` if need be and applies the migrations it lacks.
pub(super) async fn migrate(
    client: &mut Client,
    schema: &str,
) -> Result<Migrated, tokio_postgres::Error> {
    let ident = quote(schema);
    let supported = MIGRATIONS.len() as i64;
    let transaction = client.transaction().await?;
    transaction
        .execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&MIGRATION_LOCK, &schema],
        )
        .await?;
    // Checked before creating: `CREATE SCHEMA IF NOT EXISTS` needs the
    // privilege to create one even when it exists, which a user running
    // in a schema an administrator made may lack.
    let exists = transaction
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
        .await?
        .is_some();
    if !exists {
        transaction
            .batch_execute(&format!("CREATE SCHEMA {ident}"))
            .await?;
    }
    transaction
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {ident}.schema_migrations (\
                version    integer     NOT NULL PRIMARY KEY, \
                applied_at timestamptz NOT NULL DEFAULT now())"
        ))
        .await?;
    let found: i64 = transaction
        .query_one(
            &format!("SELECT coalesce(max(version), 0)::int8 FROM {ident}.schema_migrations"),
            &[],
        )
        .await?
        .try_get(0)?;
    if found > supported {
        // Dropping the transaction rolls it back: nothing changed.
        return Ok(Migrated::TooNew { found, supported });
    }
    let record = format!("INSERT INTO {ident}.schema_migrations (version) VALUES ($1)");
    for (index, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(found).unwrap_or(0))
    {
        // The files name tables unqualified: they land in the schema.
        transaction
            .batch_execute(&format!("SET LOCAL search_path TO {ident}, pg_catalog"))
            .await?;
        transaction.batch_execute(sql).await?;
        let version = i32::try_from(index + 1).unwrap_or(i32::MAX);
        transaction.execute(&record, &[&version]).await?;
    }
    transaction.commit().await?;
    Ok(Migrated::UpToDate)
}
