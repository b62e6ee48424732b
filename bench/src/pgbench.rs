//! The database side: its durability settings, the bench schema, and pgbench with the
//! floor (a one-row prepared INSERT into call_transcriptions) and the service's append
//! transaction, on calls of their own in the same schema and at the same concurrency.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::Command;

use crate::Options;
use crate::cpu::{Meter, PerOp};
use crate::report::{Latencies, Measure};

/// The floor: the cheapest durable way to store a turn, one INSERT per transaction. The
/// sequence keeps `(conversation_id, sequence_number)` unique without any lookup.
const FLOOR_SQL: &str = include_str!("../pgbench/floor.sql");
/// The service's append transaction as it was before migration 0010 (issue 11's baseline):
/// lock the Call's row, the append statement (duplicate check and next number in one), commit.
const APPEND_SQL: &str = include_str!("../pgbench/append.sql");

/// psql and pgbench against one database, optionally inside the bench schema.
#[derive(Clone)]
pub struct Database {
    url: String,
    bin: Option<PathBuf>,
    schema: String,
}

/// The settings a durable run depends on, as the server reports them.
pub struct Settings {
    values: Vec<(String, String)>,
    version: String,
    pub postmaster: Option<u32>,
}

impl Settings {
    fn get(&self, name: &str) -> &str {
        self.values
            .iter()
            .find(|(n, _)| n == name)
            .map_or("?", |(_, v)| v.as_str())
    }

    pub fn summary(&self) -> String {
        let settings: Vec<String> = self
            .values
            .iter()
            .filter(|(name, _)| name != "data_directory")
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        format!("{}; {}", self.version, settings.join(", "))
    }
}

impl Database {
    pub fn new(options: &Options) -> Result<Self> {
        Ok(Database {
            url: options.database_url.clone(),
            bin: options.pg_bin.clone(),
            schema: "public".to_string(),
        })
    }

    /// A database by URL, for the drill (which has options of its own).
    pub fn at(url: &str, bin: Option<PathBuf>) -> Self {
        Database {
            url: url.to_string(),
            bin,
            schema: "public".to_string(),
        }
    }

    pub fn with_schema(&self, schema: &str) -> Self {
        Database {
            schema: schema.to_string(),
            ..self.clone()
        }
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    pub fn program(&self, name: &str) -> PathBuf {
        self.bin
            .as_ref()
            .map(|dir| dir.join(name))
            .filter(|path| path.is_file())
            .unwrap_or_else(|| PathBuf::from(name))
    }

    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.program(program));
        // Both talk to the bench schema without naming it in every statement.
        cmd.env("PGOPTIONS", format!("-c search_path={}", self.schema))
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// psql on this database: quiet, unaligned, tuples only, stopping at the first error.
    pub fn psql_command(&self) -> Command {
        let mut cmd = self.command("psql");
        cmd.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &self.url,
        ]);
        cmd
    }

    /// Run SQL with psql; its unaligned output.
    pub async fn psql(&self, sql: &str) -> Result<String> {
        let out = self
            .psql_command()
            .args(["-c", sql])
            .output()
            .await
            .context("starting psql")?;
        if !out.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The durability settings; an error when fsync or synchronous_commit is off, since
    /// a figure measured so would promise what the service does not do.
    pub async fn durability(&self) -> Result<Settings> {
        let names = [
            "fsync",
            "synchronous_commit",
            "full_page_writes",
            "wal_sync_method",
            "shared_buffers",
            "max_connections",
            "data_directory",
        ];
        let list = names.map(|n| format!("'{n}'")).join(",");
        let rows = self
            .psql(&format!(
                "SELECT name || '=' || current_setting(name) FROM pg_settings \
                 WHERE name IN ({list}) ORDER BY name"
            ))
            .await?;
        let values: Vec<(String, String)> = rows
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        let version = self.psql("SHOW server_version").await?;
        let mut settings = Settings {
            values,
            version: format!("PostgreSQL {version}"),
            postmaster: None,
        };
        settings.postmaster = postmaster_pid(Path::new(settings.get("data_directory")));
        for name in ["fsync", "synchronous_commit"] {
            if settings.get(name) != "on" {
                bail!(
                    "{name} is {} on this database; the bench needs a durable PostgreSQL ({})",
                    settings.get(name),
                    settings.summary()
                );
            }
        }
        Ok(settings)
    }

    pub async fn drop_schema(&self) -> Result<()> {
        self.psql(&format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            self.schema
        ))
        .await
        .map(drop)
    }
}

/// The postmaster's pid from its pid file, where this machine can read it (a local server).
fn postmaster_pid(data_directory: &Path) -> Option<u32> {
    std::fs::read_to_string(data_directory.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// What one pgbench run did.
pub struct Run {
    pub measure: Measure,
    pub problem: Option<String>,
}

/// pgbench with the floor and the append scripts, on calls set up for them.
pub struct Pgbench {
    db: Database,
    dir: PathBuf,
    calls: u32,
    meter: Meter,
}

/// The three pgbench measurements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Script {
    /// The one-row INSERT, spread over the calls.
    Floor,
    /// The service's append transaction, spread over the calls.
    Append,
    /// The append transaction, all on one call.
    AppendOneCall,
}

impl Script {
    const ALL: [Script; 3] = [Script::Floor, Script::Append, Script::AppendOneCall];

    fn name(self) -> &'static str {
        match self {
            Script::Floor => "floor",
            Script::Append => "append",
            Script::AppendOneCall => "one",
        }
    }

    fn file(self) -> &'static str {
        match self {
            Script::Floor => "floor.sql",
            Script::Append | Script::AppendOneCall => "append.sql",
        }
    }

    /// Each round writes to calls of its own, as the webhook rows do, so that a round's
    /// figures do not depend on how many turns earlier rounds left on the same calls.
    fn prefix(self, round: u32) -> String {
        format!("pgb_r{round}_{}_", self.name())
    }
}

impl Pgbench {
    /// The calls pgbench writes to (`pgb_r<round>_<script>_<n>`), the floor's sequence, and
    /// the scripts in a directory of their own.
    pub async fn prepare(db: &Database, calls: u32, rounds: u32, meter: Meter) -> Result<Self> {
        let prefixes: Vec<String> = (1..=rounds)
            .flat_map(|round| Script::ALL.map(|script| (script, round)))
            .map(|(script, round)| {
                let n = if script == Script::AppendOneCall {
                    1
                } else {
                    calls
                };
                format!("('{}', {n})", script.prefix(round))
            })
            .collect();
        db.psql(&format!(
            "CREATE SEQUENCE pgb_floor_seq;
             INSERT INTO calls (call_sid, conversation_id, call_start_time, status, created_at, updated_at)
             SELECT p || g, p || g, now(), 'in_progress', now(), now()
               FROM (VALUES {}) AS s(p, n), generate_series(1, n) AS g",
            prefixes.join(", ")
        ))
        .await
        .context("creating the calls pgbench writes to")?;
        let dir = std::env::temp_dir().join(format!("calls-bench-{}", std::process::id()));
        tokio::fs::create_dir_all(&dir)
            .await
            .with_context(|| format!("creating {}", dir.display()))?;
        for (name, sql) in [("floor.sql", FLOOR_SQL), ("append.sql", APPEND_SQL)] {
            tokio::fs::write(dir.join(name), sql)
                .await
                .with_context(|| format!("writing {name}"))?;
        }
        Ok(Pgbench {
            db: db.clone(),
            dir,
            calls,
            meter,
        })
    }

    /// One pgbench measurement of `script` in round `round`.
    pub async fn measure(
        &self,
        script: Script,
        round: u32,
        clients: u32,
        duration: Duration,
    ) -> Result<Run> {
        let calls = if script == Script::AppendOneCall {
            1
        } else {
            self.calls
        };
        self.run(script, &script.prefix(round), calls, clients, duration)
            .await
    }

    async fn run(
        &self,
        script: Script,
        prefix: &str,
        calls: u32,
        clients: u32,
        duration: Duration,
    ) -> Result<Run> {
        let what = script.name();
        let log_prefix = self.dir.join(what);
        let before = self.meter.sample(None);
        let out = self
            .db
            .command("pgbench")
            .args(["-n", "-M", "prepared", "-j", "2"])
            .arg(format!("--client={clients}"))
            .arg(format!("--time={}", duration.as_secs()))
            .arg(format!("--file={}", self.dir.join(script.file()).display()))
            .arg(format!("--define=prefix={prefix}"))
            .arg(format!("--define=calls={calls}"))
            .arg("--log")
            .arg(format!("--log-prefix={}", log_prefix.display()))
            .arg(&self.db.url)
            .current_dir(&self.dir)
            .output()
            .await
            .context("starting pgbench")?;
        let after = self.meter.sample(None);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let latencies = self.latencies(&log_prefix).await?;
        let transactions = latencies.len();
        let failed = summary_number(&stdout, "number of failed transactions:").unwrap_or(0.0);
        let problem = if !out.status.success() {
            Some(format!(
                "pgbench {what}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        } else if failed > 0.0 {
            Some(format!("pgbench {what}: {failed} failed transactions"))
        } else {
            None
        };
        Ok(Run {
            measure: Measure {
                per_second: summary_number(&stdout, "tps =").unwrap_or(0.0),
                p50_ms: latencies.percentile_ms(50.0),
                p99_ms: latencies.percentile_ms(99.0),
                cpu_us: PerOp {
                    server: None,
                    ..after.per_op_since(&before, transactions)
                },
                errors: failed as u64 + u64::from(!out.status.success()),
                peak_rss_mib: None,
            },
            problem,
        })
    }

    /// Per-transaction latencies from pgbench's logs (`--log`: one file per thread, the
    /// third field of a line is the latency in µs), which are removed afterwards.
    async fn latencies(&self, prefix: &Path) -> Result<Latencies> {
        let stem = prefix
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut latencies = Latencies::default();
        let mut entries = tokio::fs::read_dir(&self.dir).await?;
        while let Some(entry) = entries.next_entry().await? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with(&format!("{stem}.")) || name.ends_with(".sql") {
                continue;
            }
            let text = tokio::fs::read_to_string(entry.path()).await?;
            text.lines()
                .filter_map(|line| line.split_whitespace().nth(2)?.parse::<u64>().ok())
                .for_each(|us| latencies.record_us(us));
            tokio::fs::remove_file(entry.path()).await?;
        }
        Ok(latencies)
    }
}

impl Drop for Pgbench {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A number from pgbench's summary, e.g. `tps = 1664.2 (without initial connection time)`.
fn summary_number(stdout: &str, label: &str) -> Option<f64> {
    stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pgbench_summaries() {
        let stdout = "number of transactions actually processed: 30439\n\
                      number of failed transactions: 2 (0.000%)\n\
                      latency average = 0.032 ms\n\
                      tps = 30838.887859 (without initial connection time)\n";
        assert_eq!(summary_number(stdout, "tps ="), Some(30838.887859));
        assert_eq!(
            summary_number(stdout, "number of failed transactions:"),
            Some(2.0)
        );
        assert_eq!(summary_number(stdout, "nothing"), None);
    }

    #[test]
    fn the_scripts_name_the_columns_the_service_writes() {
        for sql in [FLOOR_SQL, APPEND_SQL] {
            assert!(sql.contains("INSERT INTO call_transcriptions"), "{sql}");
            assert!(sql.contains(":prefix"), "{sql}");
        }
        assert!(APPEND_SQL.contains("FOR NO KEY UPDATE"));
        assert!(APPEND_SQL.trim_end().ends_with("END;"));
    }
}
