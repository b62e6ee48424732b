//! `cargo xtask bench` and `cargo xtask drill`: a durable cluster and the release builds,
//! then the `calls-bench` workspace member, which measures (or breaks things under load)
//! and prints the table (`--help` and `drill --help` list the options).

use std::env;
use std::path::Path;
use std::process::Command;

use anyhow::{Result, anyhow};

use crate::db::{ensure_drill, ensure_durable, find_pg_bindir};
use crate::dev::{Profile, build_binaries};
use crate::process::run;

/// Which run of `calls-bench`.
#[derive(Clone, Copy)]
pub enum Run {
    Bench,
    Drill,
}

impl Run {
    fn name(self) -> &'static str {
        match self {
            Run::Bench => "bench",
            Run::Drill => "drill",
        }
    }
}

pub fn bench(root: &Path, run_kind: Run, args: &[String]) -> Result<()> {
    let name = run_kind.name();
    let help = args.iter().any(|a| a == "-h" || a == "--help");
    // A benchmark of the throwaway test cluster (fsync off) would flatter the service, and
    // the drill restarts PostgreSQL: each gets a durable cluster of its own unless
    // BENCH_DATABASE_URL / DRILL_DATABASE_URL names one on purpose.
    let variable = format!("{}_DATABASE_URL", name.to_uppercase());
    let db_url = match env::var(&variable) {
        Ok(url) if !url.trim().is_empty() => {
            eprintln!("{name}: using {variable}");
            Some(url)
        }
        _ if help => None,
        _ => Some(match run_kind {
            Run::Bench => ensure_durable(root)?,
            Run::Drill => ensure_drill(root)?,
        }),
    };
    // Release, because debug-build figures say little about the service.
    let binaries = build_binaries(root, Profile::Release, &["calls-server", "calls-bench"])?;
    let [server, bench] = binaries.as_slice() else {
        return Err(anyhow!("expected two binaries, got {binaries:?}"));
    };
    let mut cmd = Command::new(bench);
    if let Run::Drill = run_kind {
        cmd.arg("drill");
    }
    cmd.arg("--server-bin").arg(server);
    if let Some(url) = db_url {
        cmd.args(["--database-url", &url]);
    }
    if let Ok(dir) = find_pg_bindir() {
        cmd.arg("--pg-bin").arg(dir);
    }
    cmd.args(args);
    match run_kind {
        Run::Bench => run(&mut cmd, "calls-bench"),
        Run::Drill => run(&mut cmd, "calls-bench drill"),
    }
}
