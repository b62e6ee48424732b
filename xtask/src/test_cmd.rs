//! `cargo xtask test`: the end-to-end demo, then the whole workspace's tests against a real
//! database (the test runner's summary closes the output, where CI reads it).

use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use anyhow::Result;

use crate::db::ensure_database;
use crate::dev::demo_on;
use crate::process::{cargo, run};

pub fn test(root: &Path, no_demo: bool, args: &[String]) -> Result<()> {
    let started = Instant::now();
    let result = run_tests(root, no_demo, args);
    eprintln!(
        "xtask: test {} after {:.1} s",
        if result.is_ok() { "passed" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    result
}

fn run_tests(root: &Path, no_demo: bool, args: &[String]) -> Result<()> {
    // `--no-demo` counts wherever it stands, also among the runner's arguments.
    let no_demo = no_demo || args.iter().any(|a| a == "--no-demo");
    let extra = args.iter().filter(|a| *a != "--no-demo");
    let db_url = ensure_database(root)?;
    if !no_demo {
        demo_on(root, &db_url)?;
    }

    // nextest is faster and isolates tests in processes; plain cargo test works everywhere.
    let has_nextest = cargo(root)
        .args(["nextest", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let mut cmd = cargo(root);
    if has_nextest {
        cmd.args(["nextest", "run"]);
    } else {
        cmd.arg("test");
    }
    cmd.args(["--workspace", "--all-features", "--no-fail-fast"])
        .args(extra)
        .env("DATABASE_URL", &db_url)
        .env("TEST_DATABASE_URL", &db_url);
    let runner = if has_nextest {
        "cargo nextest run"
    } else {
        "cargo test"
    };
    run(&mut cmd, runner)
}
