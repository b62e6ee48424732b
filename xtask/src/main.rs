//! Developer commands for this workspace, run as `cargo xtask <command>`
//! (the cargo-xtask convention: a plain binary, no extra tooling to install).

mod bench;
mod clock;
mod db;
mod dev;
mod error;
mod http;
mod json;
mod process;
mod signing;
mod test_cmd;

use std::process::ExitCode;

use error::Result;

const USAGE: &str = "\
Usage: cargo xtask <command> [args...]

Commands:
  db up                         start a database if needed and print its URL
  db url                        print the database URL (starting the private cluster if needed)
  db down                       stop the private PostgreSQL cluster
  migrate [args...]             run `calls-server migrate` against the database
  backfill [args...]            run `calls-server backfill` against the database
  elevenlabs-tool-config [...]  print the ElevenLabs webhook tool configuration
  run                           start a local server with simulated telephony and a sample call
  demo                          end-to-end check: place simulated calls and print their transcripts
  test [--no-demo] [args...]    run all tests against the database, then the demo
  bench [options]               time batch placement and webhook throughput (turns spread
                                over --calls N calls, default 1) of a release server against
                                a fake ElevenLabs (`bench --help` for options)
  help                          show this text

The database is DATABASE_URL when it is set and reachable, otherwise a private
PostgreSQL cluster in target/xtask-pg on 127.0.0.1:54329 (XTASK_PG_PORT to change).
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    match dispatch(command, rest) {
        Some(Ok(())) => ExitCode::SUCCESS,
        Some(Err(e)) => {
            eprintln!("xtask: error: {e}");
            // Exit codes are 0..=255; anything out of range still means failure.
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
        None => {
            eprintln!("xtask: unknown command `{command}`\n");
            eprint!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Run a command; `None` when there is no such command.
fn dispatch(command: &str, args: &[String]) -> Option<Result<()>> {
    let result = match command {
        "db" => db::cmd(args),
        "migrate" | "backfill" => db::ensure_database()
            .and_then(|url| with_root(|root| dev::calls_server(root, command, args, Some(&url)))),
        "elevenlabs-tool-config" => with_root(|root| dev::calls_server(root, command, args, None)),
        "run" => dev::run_server(),
        "demo" => dev::demo(),
        "test" => test_cmd::test(args),
        "bench" => bench::bench(args),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        _ => return None,
    };
    Some(result)
}

fn with_root(f: impl FnOnce(&std::path::Path) -> Result<()>) -> Result<()> {
    f(&process::project_root()?)
}
