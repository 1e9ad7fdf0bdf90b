//! `dray migrate`: brings the PostgreSQL schema up to date and prints its version.

use std::io::Write;

use anyhow::Context;

use crate::cli::MigrateArgs;

pub async fn run(args: MigrateArgs, json: bool) -> anyhow::Result<()> {
    let migrated = dray_server::migrate(&args.database, Some(&args.database_schema)).await?;
    let mut stdout = std::io::stdout().lock();
    if json {
        let doc = serde_json::json!({
            "schema": args.database_schema,
            "version": migrated.version,
            "applied": migrated.applied,
        });
        writeln!(stdout, "{doc}")
    } else if migrated.applied.is_empty() {
        writeln!(stdout, "schema {} is at version {} (up to date)", args.database_schema, migrated.version)
    } else {
        let applied: Vec<String> = migrated.applied.iter().map(i32::to_string).collect();
        writeln!(
            stdout,
            "schema {} is at version {} (applied {})",
            args.database_schema,
            migrated.version,
            applied.join(", ")
        )
    }
    .context("writing to stdout")
}
