//! `cargo xtask drill`: a durable cluster of the drill's own and the release builds, then
//! `calls-bench drill`, which breaks things under load and prints the table (`drill --help`).

use std::env;
use std::path::Path;
use std::process::Command;

use anyhow::{Result, anyhow};

use crate::db::{ensure_drill, find_pg_bindir};
use crate::dev::{Profile, build_binaries};
use crate::process::run;

pub fn drill(root: &Path, args: &[String]) -> Result<()> {
    let help = args.iter().any(|a| a == "-h" || a == "--help");
    // The drill restarts PostgreSQL, so it never borrows the test or bench cluster (or a
    // DATABASE_URL someone else uses); DRILL_DATABASE_URL names one on purpose.
    let db_url = match env::var("DRILL_DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => {
            eprintln!("drill: using DRILL_DATABASE_URL");
            Some(url)
        }
        _ if help => None,
        _ => Some(ensure_drill(root)?),
    };
    let binaries = build_binaries(root, Profile::Release, &["calls-server", "calls-bench"])?;
    let [server, bench] = binaries.as_slice() else {
        return Err(anyhow!("expected two binaries, got {binaries:?}"));
    };
    let mut cmd = Command::new(bench);
    cmd.arg("drill").arg("--server-bin").arg(server);
    if let Some(url) = db_url {
        cmd.args(["--database-url", &url]);
    }
    if let Ok(dir) = find_pg_bindir() {
        cmd.arg("--pg-bin").arg(dir);
    }
    cmd.args(args);
    run(&mut cmd, "calls-bench drill")
}
