//! The one-shot subcommands: thin wrappers over the store crate's operations.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use anyhow::Context;
use calls_domain::service::{PassOutcome, ReconcileSettings, ReconcileStale};
use calls_store_postgres::{
    BackfillOptions, MigrateCommand, PgCallRepository, RetryPolicy, backfill_call_sids, build_pool,
    migrate, migration_status,
};

use crate::cli::{BackfillArgs, MigrateArgs, ReconcileArgs, ToolConfigArgs};
use crate::config::{Settings, database_only};
use crate::metrics::Metrics;
use crate::startup::build_telephony;
use crate::timing::{CONVERSATION_REQUEST_INTERVAL, Pace};

pub async fn run_migrate(args: &MigrateArgs) -> anyhow::Result<()> {
    let config = database_only(&args.db)?;
    if args.status {
        let status = migration_status(&config)
            .await
            .context("reading migration status")?;
        println!("applied: {}", status.applied.join(" "));
        println!("pending: {}", status.pending.join(" "));
        return Ok(());
    }
    let command = if args.baseline {
        MigrateCommand::Baseline
    } else if args.revert {
        MigrateCommand::Revert
    } else if let Some(to) = args.to {
        MigrateCommand::To(to)
    } else {
        MigrateCommand::Latest
    };
    let report = migrate(&config, command).await.context("migrate failed")?;
    if let Some(v) = &report.baselined {
        println!("baselined: {v}");
    }
    for v in &report.applied {
        println!("applied: {v}");
    }
    for v in &report.reverted {
        println!("reverted: {v}");
    }
    println!(
        "schema {} is at version {}",
        config.schema,
        report.current.last().map(String::as_str).unwrap_or("none")
    );
    Ok(())
}

pub async fn run_backfill(args: &BackfillArgs) -> anyhow::Result<()> {
    let config = database_only(&args.db)?;
    let options = BackfillOptions {
        batch_size: args.batch_size,
        dry_run: args.dry_run,
    };
    let progress = Progress::new(std::io::stderr().is_terminal());
    let progress = |done: i64, total: i64| progress.report(done, total);
    let report = backfill_call_sids(&config, options, &progress)
        .await
        .context("backfill failed")?;
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    if report.dry_run {
        println!(
            "dry run: {} rows without call_sid; the first batch would get:",
            report.pending_at_start
        );
        for (id, sid) in &report.preview {
            println!("  id {id} -> {sid}");
        }
    } else {
        println!(
            "backfilled {} of {} rows in {} batches",
            report.updated, report.pending_at_start, report.batches
        );
    }
    Ok(())
}

/// Backfill progress on stderr: a bar redrawn in place (`\r`) on a terminal; in a log file,
/// where `\r` would make one endless line, a plain line at every tenth of the way.
struct Progress {
    terminal: bool,
    /// The last tenth reported as a line.
    reported_tenth: AtomicI64,
}

impl Progress {
    fn new(terminal: bool) -> Self {
        Self {
            terminal,
            reported_tenth: AtomicI64::new(-1),
        }
    }

    fn report(&self, done: i64, total: i64) {
        let mut err = std::io::stderr();
        if self.terminal {
            let _ = write!(err, "\r{}", progress_bar(done, total));
            let _ = err.flush();
        } else if let Some(line) = self.line(done, total) {
            let _ = writeln!(err, "{line}");
        }
    }

    /// The line to log for this batch, if it crosses into a new tenth.
    fn line(&self, done: i64, total: i64) -> Option<String> {
        let tenth = if total > 0 { done * 10 / total } else { 10 };
        let previous = self.reported_tenth.fetch_max(tenth, Ordering::Relaxed);
        (tenth > previous).then(|| format!("backfill: {}", counts(done, total)))
    }
}

fn counts(done: i64, total: i64) -> String {
    let percent = if total > 0 { done * 100 / total } else { 100 };
    format!("{done}/{total} ({percent}%)")
}

fn progress_bar(done: i64, total: i64) -> String {
    let width = 40_i64;
    let filled = if total > 0 {
        (done * width / total).clamp(0, width)
    } else {
        width
    };
    let bar: String = (0..width)
        .map(|i| if i < filled { '#' } else { '-' })
        .collect();
    format!("[{bar}] {}", counts(done, total))
}

/// One stale-call pass now: one line per Call examined on stdout (see
/// [`crate::reconcile::line`]). Skipped, with a note on stderr, while another instance
/// holds the reconciler lock.
pub async fn run_reconcile(args: &ReconcileArgs) -> anyhow::Result<()> {
    let settings = Settings::for_command(&args.serve)?;
    let older_than = args
        .older_than
        .map_or(settings.reconcile_after, Duration::from_secs);
    let pool = build_pool(&settings.database).context("building the database pool")?;
    let repository = Arc::new(PgCallRepository::new(pool, RetryPolicy::default()));
    let telephony = build_telephony(&settings)?;
    let reconciler = ReconcileStale::new(
        repository,
        telephony,
        Arc::new(Pace::new(CONVERSATION_REQUEST_INTERVAL)),
        ReconcileSettings::default(),
    );
    let outcome = crate::reconcile::run_pass(&reconciler, &Metrics::new(), older_than)
        .await
        .context("reconciling stale calls")?;
    match outcome {
        PassOutcome::Ran(lines) => {
            let mut out = std::io::stdout().lock();
            for reconciled in &lines {
                writeln!(out, "{}", crate::reconcile::line(reconciled))?;
            }
            out.flush()?;
            eprintln!(
                "reconciled {} stale call(s) in_progress for more than {} s",
                lines.len(),
                older_than.as_secs()
            );
        }
        PassOutcome::Skipped => {
            eprintln!("another instance is reconciling stale calls right now; nothing done");
        }
    }
    Ok(())
}

/// The ElevenLabs webhook tool for the transcription webhook. The secret header refers to
/// a workspace secret by id, so the secret itself is never printed.
pub fn tool_config(args: &ToolConfigArgs) -> serde_json::Value {
    let base = args
        .public_base_url
        .clone()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| format!("http://{}", args.bind_addr));
    let url = format!(
        "{}/webhooks/elevenlabs/transcription",
        base.trim_end_matches('/')
    );
    serde_json::json!({
        "type": "webhook",
        "name": "save_transcription",
        "description": "Save each finished dialogue turn of this call. Call it after every agent message and every driver reply, with the exact words spoken.",
        "response_timeout_secs": 20,
        "api_schema": {
            "url": url,
            "method": "POST",
            "content_type": "application/json",
            "request_headers": {
                "Authorization": { "secret_id": args.secret_id }
            },
            "request_body_schema": {
                "type": "object",
                "description": "One dialogue turn of the current call",
                "required": ["call_sid", "speaker", "message", "timestamp"],
                "properties": {
                    "call_sid": {
                        "type": "string",
                        "dynamic_variable": "call_sid"
                    },
                    "speaker": {
                        "type": "string",
                        "description": "Who spoke this turn: 'agent' for you, 'user' for the driver",
                        "enum": ["agent", "user"]
                    },
                    "message": {
                        "type": "string",
                        "description": "The exact words of this turn"
                    },
                    "timestamp": {
                        "type": "string",
                        "dynamic_variable": "system__time_utc"
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_file_gets_one_plain_line_per_tenth() {
        let progress = Progress::new(false);
        let lines: Vec<String> = [0, 50, 99, 100, 250, 1000]
            .into_iter()
            .filter_map(|done| progress.line(done, 1000))
            .collect();

        assert_eq!(
            lines,
            [
                "backfill: 0/1000 (0%)",
                "backfill: 100/1000 (10%)",
                "backfill: 250/1000 (25%)",
                "backfill: 1000/1000 (100%)"
            ]
        );
        assert!(lines.iter().all(|l| !l.contains('\r')));
    }

    #[test]
    fn the_terminal_bar_is_filled_in_proportion() {
        assert_eq!(
            progress_bar(500, 1000),
            format!("[{}{}] 500/1000 (50%)", "#".repeat(20), "-".repeat(20))
        );
        assert!(progress_bar(0, 0).ends_with("0/0 (100%)"));
    }
}
