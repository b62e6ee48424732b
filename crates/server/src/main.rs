use clap::Parser;

use calls_server::cli::{Cli, Command};
use calls_server::commands::{run_backfill, run_migrate, run_reconcile, tool_config};
use calls_server::config::Settings;
use calls_server::startup::Application;
use calls_server::telemetry;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        None => serve(&cli, &cli.serve).await,
        Some(Command::Serve(args)) => serve(&cli, args).await,
        Some(Command::Migrate(args)) => {
            // One-shot commands log to stderr; stdout carries their result.
            telemetry::init(cli.log.log_format, std::io::stderr);
            run_migrate(args).await
        }
        Some(Command::Backfill(args)) => {
            telemetry::init(cli.log.log_format, std::io::stderr);
            run_backfill(args).await
        }
        Some(Command::Reconcile(args)) => {
            telemetry::init(cli.log.log_format, std::io::stderr);
            run_reconcile(args).await
        }
        Some(Command::ElevenlabsToolConfig(args)) => {
            telemetry::init(cli.log.log_format, std::io::stderr);
            serde_json::to_string_pretty(&tool_config(args))
                .map(|json| println!("{json}"))
                .map_err(Into::into)
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` is the whole cause chain on one line (Debug would add a backtrace).
            tracing::error!("{e:#}");
            eprintln!("calls-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(cli: &Cli, args: &calls_server::cli::ServeArgs) -> anyhow::Result<()> {
    telemetry::init(cli.log.log_format, std::io::stdout);
    let settings = Settings::from_args(args)?;
    let app = Application::build(settings).await?;
    tracing::info!(port = app.port(), "calls-server listening");
    app.run_until_stopped().await?;
    tracing::info!("calls-server stopped");
    Ok(())
}
