//! `cargo xtask bench`: the durable database and the release builds, then the `calls-bench`
//! workspace member, which measures and prints the table (its `--help` lists the options).

use std::env;
use std::path::Path;
use std::process::Command;

use anyhow::{Result, anyhow};

use crate::db::{ensure_durable, find_pg_bindir};
use crate::dev::{Profile, build_binaries};
use crate::process::run;

pub fn bench(root: &Path, args: &[String]) -> Result<()> {
    let help = args.iter().any(|a| a == "-h" || a == "--help");
    // A benchmark of the throwaway test cluster (fsync off) would flatter the service, so
    // the bench gets a durable cluster of its own unless BENCH_DATABASE_URL names one.
    let db_url = match env::var("BENCH_DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => {
            eprintln!("bench: using BENCH_DATABASE_URL");
            Some(url)
        }
        _ if help => None,
        _ => Some(ensure_durable(root)?),
    };
    // Release, because debug-build figures say little about the service.
    let binaries = build_binaries(root, Profile::Release, &["calls-server", "calls-bench"])?;
    let [server, bench] = binaries.as_slice() else {
        return Err(anyhow!("expected two binaries, got {binaries:?}"));
    };
    let mut cmd = Command::new(bench);
    cmd.arg("--server-bin").arg(server);
    if let Some(url) = db_url {
        cmd.args(["--database-url", &url]);
    }
    if let Ok(dir) = find_pg_bindir() {
        cmd.arg("--pg-bin").arg(dir);
    }
    cmd.args(args);
    run(&mut cmd, "calls-bench")
}
