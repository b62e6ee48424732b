//! What the drills do to PostgreSQL: restart it (`pg_ctl restart -m fast`) and hold a
//! Call's row lock from another session (psql in an open transaction).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::pgbench::Database;

const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

async fn stdout_of(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("starting {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `pg_ctl restart -m fast` on the database's own data directory, as the user that owns
/// it (PostgreSQL refuses to run as root); how long until it accepted connections again.
pub async fn restart(db: &Database) -> Result<Duration> {
    let data = db.psql("SHOW data_directory").await?;
    let owner = stdout_of("stat", &["-c", "%U", &data]).await?;
    let me = stdout_of("id", &["-un"]).await?;
    let pg_ctl = db.program("pg_ctl");
    // The server's output goes to the log beside the data directory (where xtask keeps
    // it); without -l the new postmaster would hold our pipes open.
    let log = Path::new(&data).parent().map_or_else(
        || Path::new(&data).join("restart.log"),
        |p| p.join("postgres.log"),
    );
    let mut cmd = if owner == me {
        Command::new(&pg_ctl)
    } else {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", &owner, "--"]).arg(&pg_ctl);
        cmd
    };
    cmd.args(["restart", "-m", "fast", "-w", "-t", "60", "-D", &data, "-l"])
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let started = Instant::now();
    let status = cmd.status().await.context("starting pg_ctl restart")?;
    if !status.success() {
        bail!("pg_ctl restart failed ({status}); see {}", log.display());
    }
    Ok(started.elapsed())
}

/// A Call's row held `FOR UPDATE` by a psql session until `release`.
pub struct RowLock {
    child: Child,
}

impl RowLock {
    pub async fn hold(db: &Database, call_sid: &str) -> Result<Self> {
        let mut child = db
            .psql_command()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting psql")?;
        let sid = call_sid.replace('\'', "''");
        let sql =
            format!("BEGIN;\nSELECT 'locked' FROM calls WHERE call_sid = '{sid}' FOR UPDATE;\n");
        let stdin = child.stdin.as_mut().context("psql's stdin")?;
        stdin
            .write_all(sql.as_bytes())
            .await
            .context("writing to psql")?;
        stdin.flush().await.context("writing to psql")?;
        let stdout = child.stdout.take().context("psql's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        // The lock is held once psql prints the row.
        let locked = tokio::time::timeout(LOCK_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.trim() == "locked" {
                    return true;
                }
            }
            false
        })
        .await;
        if locked != Ok(true) {
            let _ = child.kill().await;
            bail!("psql did not lock the row of {call_sid}");
        }
        Ok(RowLock { child })
    }

    pub async fn release(mut self) -> Result<()> {
        if let Some(mut stdin) = self.child.stdin.take() {
            stdin
                .write_all(b"ROLLBACK;\n")
                .await
                .context("writing to psql")?;
        }
        let status = self.child.wait().await.context("waiting for psql")?;
        if !status.success() {
            bail!("psql ended with {status}");
        }
        Ok(())
    }
}
