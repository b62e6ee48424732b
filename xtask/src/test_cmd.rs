//! `cargo xtask test`: the end-to-end demo, then the whole workspace's tests against a real
//! database (the test runner's summary closes the output, where CI reads it).

use std::process::Stdio;
use std::time::Instant;

use crate::db::ensure_database;
use crate::dev::demo_on;
use crate::error::Result;
use crate::process::{cargo, project_root, run};

pub fn test(args: &[String]) -> Result<()> {
    let started = Instant::now();
    let result = run_tests(args);
    eprintln!(
        "xtask: test {} after {:.1} s",
        if result.is_ok() { "passed" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    result
}

fn run_tests(args: &[String]) -> Result<()> {
    let no_demo = args.iter().any(|a| a == "--no-demo");
    let extra = args.iter().filter(|a| *a != "--no-demo");
    let root = project_root()?;
    let db_url = ensure_database()?;
    if !no_demo {
        demo_on(&db_url)?;
    }

    // nextest is faster and isolates tests in processes; plain cargo test works everywhere.
    let has_nextest = cargo(&root)
        .args(["nextest", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let mut cmd = cargo(&root);
    if has_nextest {
        cmd.args(["nextest", "run"]);
    } else {
        cmd.arg("test");
    }
    cmd.args(["--workspace", "--all-features", "--no-fail-fast"])
        .args(extra)
        .env("DATABASE_URL", &db_url)
        .env("TEST_DATABASE_URL", &db_url);
    run(
        &mut cmd,
        if has_nextest {
            "cargo nextest run"
        } else {
            "cargo test"
        },
    )?;
    Ok(())
}
