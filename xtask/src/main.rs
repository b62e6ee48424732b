//! Developer commands for this workspace, run as `cargo xtask <command>` (the cargo-xtask
//! convention: a plain binary, no extra tooling to install). It only orchestrates: the
//! database, `calls-server` and the `calls-bench` member do the work.

mod bench;
mod db;
mod dev;
mod process;
mod test_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use process::ChildFailed;

/// Developer commands for the calls workspace.
///
/// The database is DATABASE_URL when it is set and reachable, otherwise a private
/// PostgreSQL cluster in target/xtask-pg on 127.0.0.1:54329 (XTASK_PG_PORT to change).
#[derive(Parser)]
#[command(name = "xtask", bin_name = "cargo xtask", disable_version_flag = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Arguments handed on unchanged to the program a command runs.
#[derive(clap::Args)]
struct PassThrough {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// The database: `up` (start if needed, print the URL), `url`, `down` (stop the private clusters)
    Db {
        #[command(subcommand)]
        action: db::Action,
    },
    /// Run `calls-server migrate [args]` against the database
    #[command(disable_help_flag = true)]
    Migrate(PassThrough),
    /// Run `calls-server backfill [args]` against the database
    #[command(disable_help_flag = true)]
    Backfill(PassThrough),
    /// Run `calls-server reconcile [--older-than SECS]` against the database: one pass of the
    /// stale-call repair (TELEPHONY defaults to `simulated` here, which knows no conversation
    /// of another process: stale calls come back `not_found`)
    #[command(disable_help_flag = true)]
    Reconcile(PassThrough),
    /// Print the ElevenLabs webhook tool configuration (`calls-server elevenlabs-tool-config`)
    #[command(disable_help_flag = true)]
    ElevenlabsToolConfig(PassThrough),
    /// Start a local server with simulated telephony and a sample call
    Run,
    /// End-to-end check: place simulated calls and print their transcripts
    Demo,
    /// Run the demo, then every test of the workspace against the database
    Test {
        /// Skip the end-to-end demo
        #[arg(long)]
        no_demo: bool,
        /// Handed to `cargo nextest run` (or `cargo test`)
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Webhook and batch-placement figures against pgbench on a durable PostgreSQL (`bench --help`)
    #[command(disable_help_flag = true)]
    Bench(PassThrough),
    /// Failure drills (PostgreSQL restart, two instances, kill -9, locks, slow clients) on a durable PostgreSQL (`drill --help`)
    #[command(disable_help_flag = true)]
    Drill(PassThrough),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}`: the whole chain on one line ("starting initdb: No such file …").
            eprintln!("xtask: error: {e:#}");
            // A failed child has printed its own diagnostics; pass its exit code on.
            let code = e.downcast_ref::<ChildFailed>().map_or(1, |f| f.code);
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    let root = process::project_root()?;
    match command {
        Command::Db { action } => db::cmd(&root, action),
        Command::Migrate(p) => {
            let url = db::ensure_database(&root)?;
            dev::calls_server(&root, "migrate", &p.args, Some(&url))
        }
        Command::Backfill(p) => {
            let url = db::ensure_database(&root)?;
            dev::calls_server(&root, "backfill", &p.args, Some(&url))
        }
        Command::Reconcile(p) => {
            let url = db::ensure_database(&root)?;
            dev::reconcile(&root, &p.args, &url)
        }
        Command::ElevenlabsToolConfig(p) => {
            dev::calls_server(&root, "elevenlabs-tool-config", &p.args, None)
        }
        Command::Run => dev::run_server(&root),
        Command::Demo => dev::demo(&root),
        Command::Test { no_demo, args } => test_cmd::test(&root, no_demo, &args),
        Command::Bench(p) => bench::bench(&root, bench::Run::Bench, &p.args),
        Command::Drill(p) => bench::bench(&root, bench::Run::Drill, &p.args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("xtask").chain(args.iter().copied())).map(|c| c.command)
    }

    #[test]
    fn the_cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn pass_through_commands_keep_their_flags() {
        let Ok(Command::Migrate(p)) = parse(&["migrate", "--to", "3", "--help"]) else {
            panic!("migrate");
        };
        assert_eq!(p.args, ["--to", "3", "--help"]);
        let Ok(Command::Bench(p)) = parse(&["bench", "--quick", "--calls=8"]) else {
            panic!("bench");
        };
        assert_eq!(p.args, ["--quick", "--calls=8"]);
        let Ok(Command::Drill(p)) = parse(&["drill", "--only", "2"]) else {
            panic!("drill");
        };
        assert_eq!(p.args, ["--only", "2"]);
    }

    #[test]
    fn the_test_command_takes_no_demo_and_hands_the_rest_to_the_runner() {
        let Ok(Command::Test { no_demo, args }) = parse(&[
            "test",
            "--no-demo",
            "-p",
            "calls-server",
            "--",
            "--nocapture",
        ]) else {
            panic!("test");
        };
        assert!(no_demo);
        assert_eq!(args, ["-p", "calls-server", "--", "--nocapture"]);
        let Ok(Command::Test { no_demo, args }) = parse(&["test"]) else {
            panic!("test");
        };
        assert!(!no_demo && args.is_empty());
    }

    #[test]
    fn db_needs_an_action_and_unknown_commands_are_refused() {
        assert!(matches!(
            parse(&["db", "url"]),
            Ok(Command::Db {
                action: db::Action::Url
            })
        ));
        assert!(parse(&["db"]).is_err());
        assert!(parse(&["db", "sideways"]).is_err());
        assert!(parse(&["frobnicate"]).is_err());
    }
}
