//! `cargo xtask test`: the end-to-end demo, then the whole workspace's tests against a real
//! database (the test runner's summary closes the output, where CI reads it).

use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, Result, bail};

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
    ensure_browser()?;
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

/// The console's browser tests (`calls-server`'s `browser-tests` feature, on with
/// `--all-features`) drive Debian's Chromium through its chromedriver. As root (CI) the two
/// packages are installed when missing; anyone else is told what to install.
fn ensure_browser() -> Result<()> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let driver = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
    if Path::new(&chromium).exists() && Path::new(&driver).exists() {
        return Ok(());
    }
    let uid = std::process::Command::new("id")
        .arg("-u")
        .output()
        .context("running id -u")?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        bail!(
            "the console's browser tests need Chromium and its driver: install Debian's \
             packages with `sudo apt-get install chromium chromium-driver` (as root, \
             cargo xtask test installs them itself)"
        );
    }
    eprintln!("xtask: installing chromium and chromium-driver for the browser tests");
    run(
        std::process::Command::new("apt-get").args(["update", "-qq"]),
        "apt-get update",
    )?;
    run(
        std::process::Command::new("apt-get")
            .args(["install", "-y", "-qq", "chromium", "chromium-driver"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install chromium chromium-driver",
    )
}
