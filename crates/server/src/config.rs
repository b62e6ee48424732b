//! Typed settings, built from the CLI once and checked as a whole: every missing required
//! setting is named at once.

use std::net::SocketAddr;
use std::time::Duration;

use calls_domain::models::{BatchDefaults, CallWindow, RedialDelays, TimeZone};
use calls_store_postgres::{DbConfig, SchemaName};
use secrecy::{ExposeSecret, SecretString};

use crate::cli::{DbArgs, ServeArgs, TelephonyKind};
use crate::limits::LimitSettings;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("missing required setting(s): {}", .0.join(", "))]
    Missing(Vec<&'static str>),
    #[error("invalid setting {name}: {reason}")]
    Invalid { name: &'static str, reason: String },
}

#[derive(Debug, Clone)]
pub enum TelephonySettings {
    ElevenLabs {
        base_url: String,
        api_key: SecretString,
        agent_id: String,
        agent_phone_number_id: String,
        timeout: Duration,
    },
    Simulated,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub bind_addr: SocketAddr,
    pub database: DbConfig,
    pub telephony: TelephonySettings,
    /// `None` only when running open for development.
    pub webhook_secret: Option<SecretString>,
    pub api_token: Option<SecretString>,
    pub conversation_wait: Duration,
    pub transfer_to_number: String,
    pub dispatcher_name: String,
    pub public_base_url: String,
    pub call_concurrency: usize,
    pub body_limits: BodyLimits,
    pub body_read_timeout: Duration,
    pub insecure_dev: bool,
    /// Time between two stale-call passes; `None`: no timer.
    pub reconcile_interval: Option<Duration>,
    /// Age at which an `in_progress` Call is stale.
    pub reconcile_after: Duration,
    pub simulation: SimulationSettings,
    /// What a batch leaves out (`DEFAULT_TIME_ZONE`, `CALL_WINDOW`, `REDIAL_DELAYS_SECS`,
    /// `DIAL_EXPIRY_SECS`).
    pub batch_defaults: BatchDefaults,
    /// `DIALER_POLL_MS`; `None` (0): this instance's dialer is off.
    pub dialer_poll: Option<Duration>,
    /// `PREDIAL_URL` and friends; `None`: no pre-dial check.
    pub predial: Option<PredialSettings>,
    pub limits: LimitSettings,
    pub console: ConsoleSettings,
}

/// The dispatcher console (docs/console.md).
#[derive(Debug, Clone)]
pub struct ConsoleSettings {
    pub session_ttl: Duration,
    /// `Secure` on the session cookie: PUBLIC_BASE_URL is https.
    pub secure_cookie: bool,
    /// Where the change feed LISTENs: DATABASE_DIRECT_URL, else DATABASE_URL.
    pub listen_url: SecretString,
}

/// The dispatcher system's pre-dial check.
#[derive(Debug, Clone)]
pub struct PredialSettings {
    pub url: String,
    pub token: Option<SecretString>,
    pub timeout: Duration,
}

/// How `TELEPHONY=simulated` misbehaves on purpose (demos); ignored otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimulationSettings {
    /// 1-based turn whose webhook is not delivered.
    pub drop_turn: Option<usize>,
    /// No post-call event at all.
    pub skip_post_call: bool,
}

fn non_empty(value: Option<&String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// A secret without surrounding white space (an `.env` line often has some); `None` when
/// empty.
fn non_empty_secret(value: Option<&SecretString>) -> Option<SecretString> {
    let value = value?.expose_secret().trim();
    (!value.is_empty()).then(|| SecretString::from(value))
}

pub fn database_config(
    args: &DbArgs,
    missing: &mut Vec<&'static str>,
) -> Result<Option<DbConfig>, ConfigError> {
    let schema = SchemaName::parse(&args.database_schema).map_err(|e| ConfigError::Invalid {
        name: "DATABASE_SCHEMA",
        reason: e.to_string(),
    })?;
    let Some(url) = non_empty_secret(args.database_url.as_ref()) else {
        missing.push("DATABASE_URL");
        return Ok(None);
    };
    let mut config = DbConfig::new(url, schema);
    config.pool_size = args.database_pool_size;
    config.wait_timeout = Duration::from_millis(args.database_pool_wait_ms);
    config.statement_timeout = Duration::from_millis(args.database_statement_timeout_ms);
    config.lock_timeout = Duration::from_millis(args.database_lock_timeout_ms);
    Ok(Some(config))
}

/// Just the database part, for `migrate` and `backfill`.
pub fn database_only(args: &DbArgs) -> Result<DbConfig, ConfigError> {
    let mut missing = Vec::new();
    match database_config(args, &mut missing)? {
        Some(config) => Ok(config),
        None => Err(ConfigError::Missing(missing)),
    }
}

impl Settings {
    /// Settings of `serve`: the webhook secret and API token are required unless running
    /// open for development.
    pub fn from_args(args: &ServeArgs) -> Result<Self, ConfigError> {
        Self::from_args_with(args, true)
    }

    /// Settings of one-shot commands that serve no HTTP (`reconcile`): the secrets of
    /// the HTTP API are optional.
    pub fn for_command(args: &ServeArgs) -> Result<Self, ConfigError> {
        Self::from_args_with(args, false)
    }

    fn from_args_with(args: &ServeArgs, serving: bool) -> Result<Self, ConfigError> {
        let mut missing = Vec::new();
        let database = database_config(&args.db, &mut missing)?;

        let telephony = match args.telephony {
            TelephonyKind::Simulated => TelephonySettings::Simulated,
            TelephonyKind::Elevenlabs => {
                let api_key = non_empty_secret(args.elevenlabs_api_key.as_ref());
                if api_key.is_none() {
                    missing.push("ELEVENLABS_API_KEY");
                }
                let mut need = |value: Option<&String>, name: &'static str| {
                    let v = non_empty(value);
                    if v.is_none() {
                        missing.push(name);
                    }
                    v.unwrap_or_default()
                };
                let agent_id = need(args.elevenlabs_agent_id.as_ref(), "ELEVENLABS_AGENT_ID");
                let phone_id = need(
                    args.elevenlabs_agent_phone_number_id.as_ref(),
                    "ELEVENLABS_AGENT_PHONE_NUMBER_ID",
                );
                TelephonySettings::ElevenLabs {
                    base_url: args.elevenlabs_base_url.trim_end_matches('/').to_owned(),
                    api_key: api_key.unwrap_or_default(),
                    agent_id,
                    agent_phone_number_id: phone_id,
                    timeout: Duration::from_secs(args.elevenlabs_timeout_secs),
                }
            }
        };

        let webhook_secret = non_empty_secret(args.webhook_secret.as_ref());
        let api_token = non_empty_secret(args.api_token.as_ref());
        if serving && !args.insecure_dev {
            if webhook_secret.is_none() {
                missing.push("WEBHOOK_SECRET");
            }
            if api_token.is_none() {
                missing.push("API_TOKEN");
            }
        }
        let batch_defaults = batch_defaults(args)?;
        let Some(database) = database.filter(|_| missing.is_empty()) else {
            return Err(ConfigError::Missing(missing));
        };
        let listen_url = non_empty_secret(args.database_direct_url.as_ref())
            .unwrap_or_else(|| database.url.clone());
        let public_base_url = non_empty(args.public_base_url.as_ref())
            .unwrap_or_else(|| format!("http://{}", args.bind_addr))
            .trim_end_matches('/')
            .to_owned();
        Ok(Self {
            bind_addr: args.bind_addr,
            database,
            telephony,
            webhook_secret,
            api_token,
            conversation_wait: Duration::from_millis(args.webhook_conversation_wait_ms),
            transfer_to_number: args.transfer_to_number.clone(),
            dispatcher_name: args.dispatcher_name.clone(),
            call_concurrency: args.call_concurrency,
            body_limits: BodyLimits {
                transcription: args.transcription_max_body_bytes,
                batch: args.max_body_bytes,
                post_call: args.post_call_max_body_bytes,
            },
            body_read_timeout: Duration::from_secs(args.body_read_timeout_secs),
            insecure_dev: args.insecure_dev,
            reconcile_interval: (args.reconcile_interval_secs > 0)
                .then(|| Duration::from_secs(args.reconcile_interval_secs)),
            reconcile_after: Duration::from_secs(args.reconcile_after_secs),
            simulation: SimulationSettings {
                drop_turn: args.simulated_drop_turn,
                skip_post_call: args.simulated_skip_post_call,
            },
            batch_defaults,
            dialer_poll: (args.dialer_poll_ms > 0)
                .then(|| Duration::from_millis(args.dialer_poll_ms)),
            predial: non_empty(args.predial_url.as_ref()).map(|url| PredialSettings {
                url,
                token: non_empty(args.predial_token.as_ref()).map(SecretString::from),
                timeout: Duration::from_millis(args.predial_timeout_ms),
            }),
            limits: LimitSettings {
                body_memory_budget: args.body_memory_budget_bytes as usize,
                max_connections: args.max_connections as usize,
                max_in_flight: args.max_in_flight_requests as usize,
                max_waiting_per_call: args.max_waiting_per_call as usize,
                ..LimitSettings::default()
            },
            console: ConsoleSettings {
                session_ttl: Duration::from_secs(args.console_session_ttl_secs),
                secure_cookie: public_base_url
                    .get(..8)
                    .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://")),
                listen_url,
            },
            public_base_url,
        })
    }
}

fn invalid(name: &'static str, reason: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        name,
        reason: reason.to_string(),
    }
}

/// The instance's batch defaults; each bad value is refused naming its variable.
fn batch_defaults(args: &ServeArgs) -> Result<BatchDefaults, ConfigError> {
    let time_zone = TimeZone::parse(args.default_time_zone.trim())
        .map_err(|e| invalid("DEFAULT_TIME_ZONE", e))?;
    let window = match args.call_window.trim() {
        "" => CallWindow::Any,
        value => CallWindow::parse(value).map_err(|e| invalid("CALL_WINDOW", e))?,
    };
    let delays = args
        .redial_delays_secs
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            part.parse::<u64>().map_err(|_| {
                invalid(
                    "REDIAL_DELAYS_SECS",
                    format!("{part:?} is not a whole number of seconds (e.g. 600,1800)"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let redial_delays = RedialDelays::new(delays).map_err(|e| invalid("REDIAL_DELAYS_SECS", e))?;
    Ok(BatchDefaults {
        time_zone,
        window,
        redial_delays,
        expiry: Duration::from_secs(args.dial_expiry_secs),
    })
}

/// Largest accepted body per endpoint, in bytes. docs/operations.md gives the reasoning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// One dialogue turn: a few hundred bytes; a long monologue is still a few KiB.
    pub transcription: usize,
    /// The dispatcher's batch: about 400 bytes per driver.
    pub batch: usize,
    /// ElevenLabs' post-call event: the whole transcript with per-turn metadata and the
    /// transcription tool's call and result on every agent turn, about 1.4 KiB per turn; a
    /// one-hour call is about 1.3 MB (measured by a test), so this fits about three hours.
    pub post_call: usize,
}

impl Default for BodyLimits {
    fn default() -> Self {
        Self {
            transcription: 64 * 1024,
            batch: 1024 * 1024,
            post_call: 4 * 1024 * 1024,
        }
    }
}

/// How long reading a whole body may take; a client that sends slower is cut off with 408.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Settings, ConfigError> {
        let cli = crate::cli::Cli::try_parse_from(
            std::iter::once("calls-server").chain(args.iter().copied()),
        )
        .expect("cli parses");
        Settings::from_args(&cli.serve)
    }

    // Startup without required settings is tested on the binary itself, with a cleared
    // environment (tests/api/startup.rs), since clap reads the environment here.

    /// Simulated telephony in insecure dev mode: only the database is required.
    fn simulated_dev() -> Settings {
        parse(&[
            "--database-url",
            "postgres://localhost/x",
            "--telephony",
            "simulated",
            "--insecure-dev",
        ])
        .expect("valid")
    }

    #[test]
    fn simulated_and_insecure_dev_need_only_the_database() {
        let settings = simulated_dev();
        assert!(settings.insecure_dev);
        assert!(matches!(settings.telephony, TelephonySettings::Simulated));
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let settings = parse(&[
            "--database-url",
            "postgres://u:dbpass@localhost/x",
            "--telephony",
            "simulated",
            "--webhook-secret",
            "whsec_topsecret",
            "--api-token",
            "tok_topsecret",
        ])
        .expect("valid");
        let debug = format!("{settings:?}");
        assert!(!debug.contains("topsecret"), "{debug}");
        assert!(!debug.contains("dbpass"), "{debug}");
    }

    /// Read from clap's declared defaults, so the environment cannot interfere.
    #[test]
    fn the_cli_defaults_are_the_documented_limits_and_timeouts() {
        let command = <crate::cli::Cli as clap::CommandFactory>::command();
        let default = |id: &str| -> u64 {
            let arg = command
                .get_arguments()
                .find(|a| a.get_id() == id)
                .unwrap_or_else(|| panic!("{id} is an argument"));
            arg.get_default_values()[0]
                .to_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{id} has a numeric default"))
        };
        let limits = BodyLimits::default();
        let as_u64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        assert_eq!(
            default("transcription_max_body_bytes"),
            as_u64(limits.transcription)
        );
        assert_eq!(default("max_body_bytes"), as_u64(limits.batch));
        assert_eq!(
            default("post_call_max_body_bytes"),
            as_u64(limits.post_call)
        );
        assert_eq!(
            default("body_read_timeout_secs"),
            DEFAULT_BODY_READ_TIMEOUT.as_secs()
        );
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        assert_eq!(
            default("database_pool_wait_ms"),
            millis(calls_store_postgres::DEFAULT_POOL_WAIT)
        );
        assert_eq!(
            default("database_statement_timeout_ms"),
            millis(calls_store_postgres::DEFAULT_STATEMENT_TIMEOUT)
        );
        assert_eq!(
            default("database_lock_timeout_ms"),
            millis(calls_store_postgres::DEFAULT_LOCK_TIMEOUT)
        );
    }

    #[test]
    fn reconciliation_runs_every_minute_for_calls_older_than_half_an_hour_by_default() {
        let settings = simulated_dev();
        assert_eq!(settings.reconcile_interval, Some(Duration::from_secs(60)));
        assert_eq!(settings.reconcile_after, Duration::from_secs(1800));
        assert_eq!(settings.simulation, SimulationSettings::default());

        let settings = parse(&[
            "--database-url",
            "postgres://localhost/x",
            "--telephony",
            "simulated",
            "--insecure-dev",
            "--reconcile-interval-secs",
            "0",
            "--reconcile-after-secs",
            "120",
            "--simulated-drop-turn",
            "2",
        ])
        .expect("valid");
        assert_eq!(settings.reconcile_interval, None, "0 turns the timer off");
        assert_eq!(settings.reconcile_after, Duration::from_secs(120));
        assert_eq!(settings.simulation.drop_turn, Some(2));
    }

    #[test]
    fn one_shot_commands_do_not_need_the_http_secrets() {
        let cli = crate::cli::Cli::try_parse_from([
            "calls-server",
            "--database-url",
            "postgres://localhost/x",
            "--telephony",
            "simulated",
        ])
        .expect("cli parses");
        assert!(Settings::from_args(&cli.serve).is_err());
        assert!(Settings::for_command(&cli.serve).is_ok());
    }

    #[test]
    fn batch_settings_default_to_the_documented_values() {
        let settings = simulated_dev();
        assert_eq!(settings.batch_defaults, BatchDefaults::default());
        assert_eq!(settings.batch_defaults.time_zone.name(), "UTC");
        assert_eq!(settings.batch_defaults.window, CallWindow::Any);
        assert_eq!(
            settings.batch_defaults.redial_delays.as_secs(),
            &[600, 1800]
        );
        assert_eq!(settings.batch_defaults.expiry, Duration::from_secs(86_400));
        assert_eq!(settings.dialer_poll, Some(Duration::from_millis(1000)));
        assert!(settings.predial.is_none());
    }

    #[test]
    fn batch_settings_are_read_and_the_predial_token_stays_secret() {
        let settings = parse(&[
            "--database-url",
            "postgres://localhost/x",
            "--telephony",
            "simulated",
            "--insecure-dev",
            "--default-time-zone",
            "America/Chicago",
            "--call-window",
            "08:00-20:00",
            "--redial-delays-secs",
            " 60, 120 ,",
            "--dial-expiry-secs",
            "3600",
            "--dialer-poll-ms",
            "0",
            "--predial-url",
            "http://dispatch.example/predial",
            "--predial-token",
            "predial_topsecret",
            "--predial-timeout-ms",
            "500",
        ])
        .expect("valid");
        let d = &settings.batch_defaults;
        assert_eq!(d.time_zone.name(), "America/Chicago");
        assert_eq!(d.window.to_string(), "08:00-20:00");
        assert_eq!(d.redial_delays.as_secs(), &[60, 120]);
        assert_eq!(d.expiry, Duration::from_secs(3600));
        assert_eq!(settings.dialer_poll, None, "0 turns the dialer off");
        let predial = settings.predial.as_ref().expect("predial on");
        assert_eq!(predial.timeout, Duration::from_millis(500));
        assert!(!format!("{settings:?}").contains("topsecret"));
        let none = parse(&[
            "--database-url",
            "postgres://localhost/x",
            "--telephony",
            "simulated",
            "--insecure-dev",
            "--redial-delays-secs",
            "",
            "--call-window",
            "any",
        ])
        .expect("valid");
        assert!(none.batch_defaults.redial_delays.as_secs().is_empty());
        assert_eq!(none.batch_defaults.window, CallWindow::Any);
    }

    #[test]
    fn bad_batch_settings_stop_startup_naming_the_variable() {
        for (flag, value, name) in [
            ("--default-time-zone", "Mars/Olympus", "DEFAULT_TIME_ZONE"),
            ("--call-window", "08:00-08:00", "CALL_WINDOW"),
            ("--call-window", "8-20", "CALL_WINDOW"),
            ("--redial-delays-secs", "600,soon", "REDIAL_DELAYS_SECS"),
            ("--redial-delays-secs", "604801", "REDIAL_DELAYS_SECS"),
            (
                "--redial-delays-secs",
                "1,1,1,1,1,1,1,1,1,1,1",
                "REDIAL_DELAYS_SECS",
            ),
        ] {
            let err = parse(&[
                "--database-url",
                "postgres://localhost/x",
                "--telephony",
                "simulated",
                "--insecure-dev",
                flag,
                value,
            ])
            .expect_err(value);
            assert!(err.to_string().contains(name), "{name} in {err}");
        }
        for (flag, name) in [
            ("--dial-expiry-secs", "DIAL_EXPIRY_SECS"),
            ("--predial-timeout-ms", "PREDIAL_TIMEOUT_MS"),
        ] {
            let err = crate::cli::Cli::try_parse_from(["calls-server", flag, "0"])
                .expect_err("0 refused");
            assert!(err.to_string().contains(name), "{name} in {err}");
        }
    }

    #[test]
    fn the_console_defaults_to_12_hour_sessions_plain_cookies_and_the_database_url() {
        let settings = simulated_dev();
        assert_eq!(settings.console.session_ttl, Duration::from_secs(43_200));
        assert!(!settings.console.secure_cookie);
        assert_eq!(
            settings.console.listen_url.expose_secret(),
            "postgres://localhost/x"
        );

        let settings = parse(&[
            "--database-url",
            "postgres://pooler/x",
            "--database-direct-url",
            "postgres://primary/x",
            "--public-base-url",
            "HTTPS://calls.example.com",
            "--console-session-ttl-secs",
            "600",
            "--telephony",
            "simulated",
            "--insecure-dev",
        ])
        .expect("valid");
        assert_eq!(settings.console.session_ttl, Duration::from_secs(600));
        assert!(settings.console.secure_cookie, "https: Secure cookies");
        assert_eq!(
            settings.console.listen_url.expose_secret(),
            "postgres://primary/x"
        );
        assert!(
            crate::cli::Cli::try_parse_from([
                "calls-server",
                "--database-url",
                "postgres://localhost/x",
                "--console-session-ttl-secs",
                "0",
            ])
            .is_err(),
            "a session must last at least a second"
        );
    }

    #[test]
    fn a_bad_schema_name_is_refused() {
        let err = parse(&[
            "--database-url",
            "postgres://x/y",
            "--database-schema",
            "a;b",
        ])
        .expect_err("invalid");
        assert!(err.to_string().contains("DATABASE_SCHEMA"));
    }

    #[test]
    fn values_out_of_range_are_refused_naming_the_variable() {
        for (flag, value, variable) in [
            ("--database-pool-size", "0", "DATABASE_POOL_SIZE"),
            ("--database-pool-wait-ms", "0", "DATABASE_POOL_WAIT_MS"),
            (
                "--database-lock-timeout-ms",
                "0",
                "DATABASE_LOCK_TIMEOUT_MS",
            ),
            ("--call-concurrency", "0", "CALL_CONCURRENCY"),
            ("--elevenlabs-timeout-secs", "0", "ELEVENLABS_TIMEOUT_SECS"),
            ("--max-body-bytes", "1023", "MAX_BODY_BYTES"),
            ("--body-read-timeout-secs", "0", "BODY_READ_TIMEOUT_SECS"),
        ] {
            let err = crate::cli::Cli::try_parse_from([
                "calls-server",
                "--database-url",
                "postgres://x/y",
                flag,
                value,
            ])
            .expect_err(flag);
            assert!(err.to_string().contains(variable), "{err}");
        }
        let at_the_floor = parse(&[
            "--database-url",
            "postgres://x/y",
            "--telephony",
            "simulated",
            "--insecure-dev",
            "--max-body-bytes",
            "1024",
        ])
        .expect("1024 is allowed");
        assert_eq!(at_the_floor.body_limits.batch, 1024);
    }
}
