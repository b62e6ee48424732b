//! The release calls-server under test: migrated, started against the fake ElevenLabs,
//! watched for its peak memory, and stopped with SIGTERM.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::Options;
use crate::batch::{API_TOKEN, Batch};
use crate::load::WEBHOOK_SECRET;

/// The server's default body limit; a larger batch body needs MAX_BODY_BYTES raised.
const SERVER_DEFAULT_MAX_BODY: usize = 65_536;
/// The server's default MAX_IN_FLIGHT_REQUESTS.
const SERVER_DEFAULT_MAX_IN_FLIGHT: u32 = 512;
const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// `calls-server migrate` on the bench schema (it creates the schema).
pub async fn migrate(bin: &Path, db_url: &str, schema: &str) -> Result<()> {
    let status = tokio::process::Command::new(bin)
        .arg("migrate")
        .env("DATABASE_URL", db_url)
        .env("DATABASE_SCHEMA", schema)
        .env("RUST_LOG", "warn")
        // Its progress goes to stderr; stdout is kept for the table.
        .stdout(Stdio::null())
        .status()
        .await
        .context("starting calls-server migrate")?;
    if !status.success() {
        bail!("calls-server migrate failed ({status})");
    }
    Ok(())
}

pub struct Server {
    child: Child,
    base_url: String,
    launch: Launch,
}

/// How a server is started, kept so that it can be started again on the same port.
#[derive(Clone)]
pub struct Launch {
    pub bin: PathBuf,
    pub database_url: String,
    pub schema: String,
    pub fake_uri: String,
    /// Settings beyond the bench's own (body limits, timeouts).
    pub env: Vec<(&'static str, String)>,
}

impl Server {
    pub async fn start(options: &Options, schema: &str, fake_uri: &str) -> Result<Self> {
        let mut env = Vec::new();
        if let Some(n) = options.call_concurrency {
            env.push(("CALL_CONCURRENCY", n.to_string()));
        }
        let largest = options.drivers.max(options.calls_per_round());
        let body = Batch::new(1, largest).body.to_string().len();
        if body > SERVER_DEFAULT_MAX_BODY {
            env.push(("MAX_BODY_BYTES", (body * 2).to_string()));
        }
        // An open live page holds an in-flight request for as long as it is open; past the
        // default 512 the pages would take the webhook's room (and get 503 themselves).
        let in_flight = SERVER_DEFAULT_MAX_IN_FLIGHT + options.live_pages;
        env.push(("MAX_IN_FLIGHT_REQUESTS", in_flight.to_string()));
        let launch = Launch {
            bin: options.server_bin.clone(),
            database_url: options.database_url.clone(),
            schema: schema.to_string(),
            fake_uri: fake_uri.to_string(),
            env,
        };
        Self::launch(launch, free_port()?).await
    }

    /// Start `launch` on `port` and wait until it answers /healthz.
    pub async fn launch(launch: Launch, port: u16) -> Result<Self> {
        let child = spawn(&launch, port)?;
        let mut server = Server {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
            launch,
        };
        server.wait_healthy().await?;
        Ok(server)
    }

    /// SIGKILL, no goodbye: what a crash or an OOM kill does.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The same server started again on the same port (after `kill9` or `stop`).
    pub async fn restart(&mut self) -> Result<()> {
        let port = self.port();
        self.child = spawn(&self.launch, port)?;
        self.wait_healthy().await
    }

    pub fn port(&self) -> u16 {
        self.base_url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn wait_healthy(&mut self) -> Result<()> {
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("calls-server exited ({status}) before answering /healthz");
            }
            let healthy = client
                .get(format!("{}/healthz", self.base_url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if healthy {
                return Ok(());
            }
            if started.elapsed() > HEALTH_TIMEOUT {
                bail!("calls-server did not answer GET /healthz within {HEALTH_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The most resident memory the server had at any time (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.memory_kib("VmHWM:")
    }

    /// The resident memory now (VmRSS), in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        self.memory_kib("VmRSS:")
    }

    fn memory_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    }

    /// SIGTERM for a graceful shutdown; SIGKILL if that takes longer than 10 s.
    pub async fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("bench: calls-server ignored SIGTERM for 10 s; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port")?
        .port())
}

fn spawn(launch: &Launch, port: u16) -> Result<Child> {
    let addr = format!("127.0.0.1:{port}");
    let log_path = std::env::temp_dir().join(format!("calls-bench-server-{port}.log"));
    // Appended: a restarted server keeps the log of the one before.
    let log = File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let log_err = log.try_clone().context("opening the server log")?;
    let mut cmd = Command::new(&launch.bin);
    cmd.arg("serve")
        .env("DATABASE_URL", &launch.database_url)
        .env("DATABASE_SCHEMA", &launch.schema)
        .env("BIND_ADDR", &addr)
        .env("TELEPHONY", "elevenlabs")
        .env("ELEVENLABS_BASE_URL", &launch.fake_uri)
        .env("ELEVENLABS_API_KEY", "bench-api-key")
        .env("ELEVENLABS_AGENT_ID", "bench-agent")
        .env("ELEVENLABS_AGENT_PHONE_NUMBER_ID", "bench-phone-number")
        .env("WEBHOOK_SECRET", WEBHOOK_SECRET)
        .env("API_TOKEN", API_TOKEN)
        // No stale-call sweeps in the middle of a measurement.
        .env("RECONCILE_INTERVAL_SECS", "0")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    for (name, value) in &launch.env {
        cmd.env(name, value);
    }
    eprintln!(
        "bench: starting calls-server (release) on {addr} (log: {})",
        log_path.display()
    );
    cmd.spawn().context("starting calls-server")
}

impl Drop for Server {
    fn drop(&mut self) {
        // The normal path stops it gracefully; this covers an early error return.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
