//! Command line and environment: every setting is an environment variable and a flag.
//! Ranges are checked here, so a refused value is named by its variable (clap's value
//! name is the variable's name); secrets are `SecretString` from the start.

use std::net::SocketAddr;

use clap::builder::RangedU64ValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use secrecy::SecretString;

#[derive(Debug, Parser)]
#[command(
    name = "calls-server",
    version,
    about = "AI voice calls to truck drivers about trip violations"
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `serve` is the default subcommand, so its settings are accepted here too.
    #[command(flatten)]
    pub serve: ServeArgs,
}

// Parsed once at startup; the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service (the default).
    Serve(ServeArgs),
    /// Apply, revert or adopt migrations.
    Migrate(MigrateArgs),
    /// Fill call_sid on legacy rows in short batches (safe while the service runs).
    Backfill(BackfillArgs),
    /// Reconcile Calls stuck in_progress now: ask ElevenLabs about each and apply the
    /// answer; prints one line per Call (call_sid, result, detail; tab-separated).
    Reconcile(ReconcileArgs),
    /// Print the ElevenLabs webhook tool JSON for the transcription webhook.
    ElevenlabsToolConfig(ToolConfigArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log output format.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "pretty",
        global = true
    )]
    pub log_format: LogFormat,
}

// The timeouts start at 1 ms: 0 would mean "wait forever" to PostgreSQL and deadpool alike.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// PostgreSQL connection URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<SecretString>,
    /// Schema holding the tables (the legacy deployment uses `dev`).
    #[arg(long, env = "DATABASE_SCHEMA", default_value = "public")]
    pub database_schema: String,
    /// Connections in the pool.
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 10, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub database_pool_size: usize,
    /// How long a request waits for a free pooled connection (then 500, not retried).
    #[arg(long, env = "DATABASE_POOL_WAIT_MS", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub database_pool_wait_ms: u64,
    /// `statement_timeout` of every pooled connection.
    #[arg(long, env = "DATABASE_STATEMENT_TIMEOUT_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub database_statement_timeout_ms: u64,
    /// `lock_timeout` of every pooled connection.
    #[arg(long, env = "DATABASE_LOCK_TIMEOUT_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    pub database_lock_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TelephonyKind {
    Elevenlabs,
    Simulated,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Address to listen on.
    #[arg(long, env = "BIND_ADDR", default_value = "127.0.0.1:8080")]
    pub bind_addr: SocketAddr,
    /// Which telephony places calls.
    #[arg(long, env = "TELEPHONY", value_enum, default_value = "elevenlabs")]
    pub telephony: TelephonyKind,
    #[arg(
        long,
        env = "ELEVENLABS_BASE_URL",
        default_value = "https://api.elevenlabs.io"
    )]
    pub elevenlabs_base_url: String,
    #[arg(long, env = "ELEVENLABS_API_KEY", hide_env_values = true)]
    pub elevenlabs_api_key: Option<SecretString>,
    #[arg(long, env = "ELEVENLABS_AGENT_ID")]
    pub elevenlabs_agent_id: Option<String>,
    #[arg(long, env = "ELEVENLABS_AGENT_PHONE_NUMBER_ID")]
    pub elevenlabs_agent_phone_number_id: Option<String>,
    /// Timeout of one outbound-call request to ElevenLabs.
    #[arg(long, env = "ELEVENLABS_TIMEOUT_SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    pub elevenlabs_timeout_secs: u64,
    /// Shared secret of the webhooks (HMAC key, or the bearer token of the webhook tool).
    #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<SecretString>,
    /// How long a turn for a Call still waiting for its conversation_id may wait.
    #[arg(long, env = "WEBHOOK_CONVERSATION_WAIT_MS", default_value_t = 5000)]
    pub webhook_conversation_wait_ms: u64,
    /// Bearer token of the batch-call and reading APIs.
    #[arg(long, env = "API_TOKEN", hide_env_values = true)]
    pub api_token: Option<SecretString>,
    #[arg(long, env = "TRANSFER_TO_NUMBER", default_value = "+18005551234")]
    pub transfer_to_number: String,
    #[arg(long, env = "DISPATCHER_NAME", default_value = "AGY Dispatcher")]
    pub dispatcher_name: String,
    /// Where ElevenLabs reaches this service (default: http://BIND_ADDR).
    #[arg(long, env = "PUBLIC_BASE_URL")]
    pub public_base_url: Option<String>,
    /// Drivers of one batch dialed at once.
    #[arg(long, env = "CALL_CONCURRENCY", default_value_t = 8, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub call_concurrency: usize,
    // Body limits start at 1 KiB: below that not even a valid request fits.
    /// Largest accepted body of the batch-call API, in bytes (about 400 per driver).
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 1024 * 1024, value_parser = RangedU64ValueParser::<usize>::new().range(1024..))]
    pub max_body_bytes: usize,
    /// Largest accepted body of the transcription webhook (one dialogue turn), in bytes.
    #[arg(long, env = "TRANSCRIPTION_MAX_BODY_BYTES", default_value_t = 64 * 1024, value_parser = RangedU64ValueParser::<usize>::new().range(1024..))]
    pub transcription_max_body_bytes: usize,
    /// Largest accepted body of the post-call webhook (a whole transcript), in bytes.
    #[arg(long, env = "POST_CALL_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024, value_parser = RangedU64ValueParser::<usize>::new().range(1024..))]
    pub post_call_max_body_bytes: usize,
    /// How long reading one request body may take (then 408).
    #[arg(long, env = "BODY_READ_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub body_read_timeout_secs: u64,
    /// Run without WEBHOOK_SECRET / API_TOKEN: endpoints without a secret are open.
    /// For local development only.
    #[arg(long, env = "INSECURE_DEV", default_value_t = false)]
    pub insecure_dev: bool,
    /// Seconds between two stale-call reconciliation passes; 0 turns the timer off.
    #[arg(long, env = "RECONCILE_INTERVAL_SECS", default_value_t = 60)]
    pub reconcile_interval_secs: u64,
    /// A Call still in_progress this many seconds after it started is stale.
    #[arg(long, env = "RECONCILE_AFTER_SECS", default_value_t = 1800)]
    pub reconcile_after_secs: u64,
    /// Time zone of a recipient whose driver and batch name none (IANA name).
    #[arg(long, env = "DEFAULT_TIME_ZONE", default_value = "UTC")]
    pub default_time_zone: String,
    /// Local hours in which drivers may be called when a batch names none, `HH:MM-HH:MM`
    /// (start inclusive, end exclusive, an end before the start crosses midnight); empty or
    /// `any`: any time.
    #[arg(long, env = "CALL_WINDOW", default_value = "")]
    pub call_window: String,
    /// Delays before re-dialing a failed attempt when a batch names none, comma-separated
    /// seconds (empty: no re-dial).
    #[arg(long, env = "REDIAL_DELAYS_SECS", default_value = "600,1800")]
    pub redial_delays_secs: String,
    /// A recipient not reached this many seconds after its first attempt was due is never
    /// dialed again (`failed`, reason `expired`).
    #[arg(long, env = "DIAL_EXPIRY_SECS", default_value_t = 86_400,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub dial_expiry_secs: u64,
    /// How often this instance's dialer looks for due recipients; 0 turns it off (the
    /// batch-call endpoint still dials its own due drivers).
    #[arg(long, env = "DIALER_POLL_MS", default_value_t = 1000)]
    pub dialer_poll_ms: u64,
    /// The dispatcher system's pre-dial check, asked right before each attempt; unset: no
    /// check.
    #[arg(long, env = "PREDIAL_URL")]
    pub predial_url: Option<String>,
    /// Bearer token sent to PREDIAL_URL.
    #[arg(long, env = "PREDIAL_TOKEN", hide_env_values = true)]
    pub predial_token: Option<String>,
    /// Timeout of one pre-dial check (then the driver is not dialed, and asked about again
    /// after 60 s).
    #[arg(long, env = "PREDIAL_TIMEOUT_MS", default_value_t = 3000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub predial_timeout_ms: u64,
    /// How long a console login lasts, in seconds.
    #[arg(long, env = "CONSOLE_SESSION_TTL_SECS", default_value_t = 43_200, value_parser = clap::value_parser!(u64).range(1..))]
    pub console_session_ttl_secs: u64,
    /// A direct (unpooled) PostgreSQL URL for the console's LISTEN connection, needed when
    /// DATABASE_URL goes through a pooler in transaction mode; default DATABASE_URL.
    #[arg(long, env = "DATABASE_DIRECT_URL", hide_env_values = true)]
    pub database_direct_url: Option<SecretString>,
    /// TELEPHONY=simulated: do not deliver this turn's webhook (1-based), so the post-call
    /// reconciliation can be seen restoring it.
    #[arg(long, env = "SIMULATED_DROP_TURN", value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub simulated_drop_turn: Option<usize>,
    /// TELEPHONY=simulated: send no post-call event, so the Call stays in_progress until
    /// the stale-call reconciliation completes it.
    #[arg(long, env = "SIMULATED_SKIP_POST_CALL", default_value_t = false)]
    pub simulated_skip_post_call: bool,
    /// Bytes of request bodies this instance holds in memory at once; a body that finds
    /// no room within 500 ms gets 503 with Retry-After.
    #[arg(long, env = "BODY_MEMORY_BUDGET_BYTES", default_value_t = 64 * 1024 * 1024,
          value_parser = clap::value_parser!(u32).range(65536..))]
    pub body_memory_budget_bytes: u32,
    /// Open connections per instance; more wait in the listen backlog.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 2048,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Requests handled at once (health, readiness and metrics excepted); more get 503.
    #[arg(long, env = "MAX_IN_FLIGHT_REQUESTS", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight_requests: u32,
    /// Transcription requests of one call_sid that may wait in this instance (two are
    /// stored at a time); more get 503 at once.
    #[arg(long, env = "MAX_WAITING_PER_CALL", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_waiting_per_call: u32,
}

#[derive(Debug, Clone, Args)]
pub struct ReconcileArgs {
    /// Database and telephony settings, as for `serve` (secrets of the HTTP API are not
    /// needed).
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Reconcile Calls in_progress for longer than this (default: RECONCILE_AFTER_SECS).
    #[arg(long, value_name = "SECS")]
    pub older_than: Option<u64>,
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Go up or down to this version (e.g. `4`; `0` reverts everything).
    #[arg(long, conflicts_with_all = ["baseline", "revert", "status"])]
    pub to: Option<u32>,
    /// Adopt a legacy database: mark the legacy-schema migration as applied.
    #[arg(long, conflicts_with_all = ["revert", "status"])]
    pub baseline: bool,
    /// Revert the last applied migration.
    #[arg(long, conflicts_with = "status")]
    pub revert: bool,
    /// Show applied and pending migrations; change nothing.
    #[arg(long)]
    pub status: bool,
}

#[derive(Debug, Clone, Args)]
pub struct BackfillArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Rows per transaction.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..))]
    pub batch_size: i64,
    /// Count and preview, write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ToolConfigArgs {
    /// Where ElevenLabs reaches this service.
    #[arg(long, env = "PUBLIC_BASE_URL")]
    pub public_base_url: Option<String>,
    #[arg(long, env = "BIND_ADDR", default_value = "127.0.0.1:8080")]
    pub bind_addr: SocketAddr,
    /// Id of the ElevenLabs workspace secret holding `Bearer <WEBHOOK_SECRET>`.
    #[arg(
        long,
        env = "ELEVENLABS_WEBHOOK_SECRET_ID",
        default_value = "calls_webhook_secret"
    )]
    pub secret_id: String,
}
