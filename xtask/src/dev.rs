//! `cargo xtask run` (a local server to poke at) and `cargo xtask demo` (an end-to-end
//! check with simulated telephony that finishes by itself).

use std::env;
use std::fs::File;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use reqwest::blocking::Client;
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::db::{ensure_database, tail};
use crate::process::{cargo, check, run, shell_quote, target_dir};

const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(250);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// A hung server fails the command instead of blocking it forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `calls-server <subcommand> [args]` against `db_url`, through cargo so it is built first.
pub fn calls_server(
    root: &Path,
    subcommand: &str,
    args: &[String],
    db_url: Option<&str>,
) -> Result<()> {
    let mut cmd = cargo(root);
    cmd.args(["run", "--quiet", "-p", "calls-server", "--", subcommand])
        .args(args);
    if let Some(url) = db_url {
        cmd.env("DATABASE_URL", url);
    }
    run(&mut cmd, &format!("calls-server {subcommand}"))
}

/// `calls-server reconcile [args]`; simulated telephony unless `TELEPHONY` says otherwise,
/// so a local run never needs an ElevenLabs account.
pub fn reconcile(root: &Path, args: &[String], db_url: &str) -> Result<()> {
    let mut cmd = cargo(root);
    cmd.args(["run", "--quiet", "-p", "calls-server", "--", "reconcile"])
        .args(args)
        .env("DATABASE_URL", db_url);
    if std::env::var_os("TELEPHONY").is_none() {
        cmd.env("TELEPHONY", "simulated");
    }
    run(&mut cmd, "calls-server reconcile")
}

/// Cargo profiles: `dev` for run/demo, `release` for bench.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Dev,
    Release,
}

/// Build the binaries of `packages` (each named after its package) and return their paths,
/// in order. We run them directly rather than through `cargo run`, so signals reach them.
pub fn build_binaries(root: &Path, profile: Profile, packages: &[&str]) -> Result<Vec<PathBuf>> {
    let (flag, dir) = match profile {
        Profile::Dev => ("--quiet", "debug"),
        Profile::Release => ("--release", "release"),
    };
    let mut args = vec!["build", flag];
    for package in packages {
        args.extend(["-p", package]);
    }
    run(
        cargo(root).args(&args),
        &format!("cargo {}", args.join(" ")),
    )?;
    packages
        .iter()
        .map(|package| {
            let bin = target_dir(root).join(dir).join(package);
            if bin.is_file() {
                Ok(bin)
            } else {
                Err(anyhow!(
                    "cargo built {package} but {} does not exist",
                    bin.display()
                ))
            }
        })
        .collect()
}

fn build_server(root: &Path) -> Result<PathBuf> {
    build_binaries(root, Profile::Dev, &["calls-server"])?
        .pop()
        .ok_or_else(|| anyhow!("no calls-server binary"))
}

/// The server's settings: the user's environment where it has them, dev defaults otherwise.
struct Settings {
    bind_addr: String,
    /// Where a client connects: `BIND_ADDR` with a wildcard host replaced by loopback.
    addr: String,
    base_url: String,
    api_token: String,
    webhook_secret: String,
    public_base_url: String,
    log_format: String,
}

fn env_or(name: &str, default: &str) -> String {
    env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// `0.0.0.0:port` and `[::]:port` are reached over loopback; anything else as it is.
fn reachable_addr(bind_addr: &str) -> String {
    match bind_addr.parse::<SocketAddr>() {
        Ok(mut addr) if addr.ip().is_unspecified() => {
            let loopback = match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            };
            addr.set_ip(loopback);
            addr.to_string()
        }
        _ => bind_addr.to_string(),
    }
}

impl Settings {
    fn new(bind_addr: String, log_format: String) -> Self {
        let addr = reachable_addr(&bind_addr);
        let base_url = format!("http://{addr}");
        Settings {
            public_base_url: env_or("PUBLIC_BASE_URL", &base_url),
            api_token: env_or("API_TOKEN", "dev-api-token"),
            webhook_secret: env_or("WEBHOOK_SECRET", "dev-webhook-secret"),
            bind_addr,
            addr,
            base_url,
            log_format,
        }
    }

    fn command(&self, bin: &Path, db_url: &str) -> Command {
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .env("DATABASE_URL", db_url)
            // Always simulated: a dev run must never dial a real phone.
            .env("TELEPHONY", "simulated")
            .env("WEBHOOK_SECRET", &self.webhook_secret)
            .env("API_TOKEN", &self.api_token)
            .env("BIND_ADDR", &self.bind_addr)
            .env("PUBLIC_BASE_URL", &self.public_base_url)
            .env("LOG_FORMAT", &self.log_format);
        cmd
    }
}

/// The HTTP client of `run` and `demo`: one request at a time, bounded by a timeout.
fn http_client() -> Result<Client> {
    Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("building the HTTP client")
}

/// A running calls-server that is stopped when dropped, so every error path cleans up.
struct Server {
    child: Child,
}

impl Server {
    fn spawn(mut cmd: Command) -> Result<Self> {
        let child = cmd.spawn().context("starting calls-server")?;
        Ok(Server { child })
    }

    /// Poll `GET /healthz` until it answers 200; fail early if the server exits.
    fn wait_healthy(&mut self, client: &Client, base_url: &str) -> Result<()> {
        let started = Instant::now();
        let url = format!("{base_url}/healthz");
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("calls-server exited ({status}) before answering /healthz");
            }
            let last = match client.get(&url).send() {
                Ok(r) if r.status().as_u16() == 200 => return Ok(()),
                Ok(r) => format!("HTTP {}", r.status()),
                Err(e) => e.to_string(),
            };
            if started.elapsed() > HEALTH_TIMEOUT {
                bail!(
                    "calls-server did not answer GET /healthz with 200 within {} s (last: {last})",
                    HEALTH_TIMEOUT.as_secs()
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// SIGTERM for a graceful shutdown; SIGKILL if that takes longer than 10 s.
    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        eprintln!("xtask: calls-server ignored SIGTERM for 10 s; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Driver {
    id: u32,
    name: &'static str,
    phone: &'static str,
    kind: &'static str,
    description: &'static str,
}

impl Driver {
    fn call_sid(&self, timestamp: &str) -> String {
        format!("EL_{}_{timestamp}", self.id)
    }
}

/// A `POST /driver_data/call-elevenlabs` body (the seed's BatchCallRequest).
fn batch_body(timestamp: &str, drivers: &[Driver]) -> serde_json::Value {
    let drivers: Vec<_> = drivers
        .iter()
        .map(|d| {
            json!({
                "driverId": d.id,
                "driverName": d.name,
                "phoneNumber": d.phone,
                "customRules": "",
                "violations": {
                    "tripId": format!("TRIP-{}", d.id),
                    "violationDetails": [{"type": d.kind, "description": d.description}],
                },
            })
        })
        .collect();
    json!({"callType": "violation", "timestamp": timestamp, "drivers": drivers})
}

/// Post a batch; the status and the body as text (shown as it is when something is off).
fn post_batch(
    client: &Client,
    settings: &Settings,
    body: &serde_json::Value,
) -> Result<(u16, String)> {
    let response = client
        .post(format!("{}/driver_data/call-elevenlabs", settings.base_url))
        .bearer_auth(&settings.api_token)
        .json(body)
        .send()
        .context("POST /driver_data/call-elevenlabs")?;
    let status = response.status().as_u16();
    Ok((status, response.text().unwrap_or_default()))
}

fn now_rfc3339(now: OffsetDateTime) -> Result<String> {
    now.format(&Rfc3339).context("formatting the time")
}

// ---------------------------------------------------------------------------------------
// cargo xtask run

pub fn run_server(root: &Path) -> Result<()> {
    let db_url = ensure_database(root)?;
    calls_server(root, "migrate", &[], Some(&db_url))?;
    let bin = build_server(root)?;

    let settings = Settings::new(
        env_or("BIND_ADDR", "127.0.0.1:8080"),
        env_or("LOG_FORMAT", "pretty"),
    );
    // Otherwise our health check could be answered by an older server on the same port.
    let taken = settings
        .addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
        });
    if taken {
        bail!(
            "something already listens on {} (an earlier `cargo xtask run`?); stop it or set BIND_ADDR",
            settings.addr
        );
    }

    // stdio is inherited, so the server's logs show up in this terminal.
    let client = http_client()?;
    let mut server = Server::spawn(settings.command(&bin, &db_url))?;
    server.wait_healthy(&client, &settings.base_url)?;

    let now = OffsetDateTime::now_utc();
    let timestamp = now.unix_timestamp().to_string();
    let sample = Driver {
        id: 1001,
        name: "Sam Carter",
        phone: "+15551234567",
        kind: "temperature",
        description: "Reefer at 45F, required 34-38F",
    };
    let call_sid = sample.call_sid(&timestamp);
    match post_batch(&client, &settings, &batch_body(&timestamp, &[sample])) {
        Ok((200, _)) => {}
        Ok((status, body)) => {
            eprintln!("xtask: warning: the sample call got HTTP {status}: {body}");
        }
        Err(e) => eprintln!("xtask: warning: the sample call failed: {e:#}"),
    }

    println!("{}", cheat_sheet(&settings, &call_sid, now)?);

    // Ctrl-C reaches the server too (same process group), so we only wait for it.
    let status = server.child.wait().context("waiting for calls-server")?;
    check(status, "calls-server serve")
}

/// What a newcomer needs next: the URLs, the token and curls that work as pasted.
fn cheat_sheet(s: &Settings, call_sid: &str, now: OffsetDateTime) -> Result<String> {
    let base = &s.base_url;
    let body = json!({
        "call_sid": call_sid,
        "speaker": "user",
        "message": "Hello, this is the driver.",
        "timestamp": now_rfc3339(now)?,
    })
    .to_string();
    let signature =
        calls_elevenlabs::sign(&s.webhook_secret, now.unix_timestamp(), body.as_bytes());
    let webhook = shell_quote(&format!("{base}/webhooks/elevenlabs/transcription"));
    let data = shell_quote(&body);
    let bearer_api = shell_quote(&format!("Authorization: Bearer {}", s.api_token));
    let bearer_webhook = shell_quote(&format!("Authorization: Bearer {}", s.webhook_secret));
    let signed = shell_quote(&format!(
        "{}: {signature}",
        calls_elevenlabs::SIGNATURE_HEADER
    ));

    Ok(format!(
        "
calls-server is running at {base} (simulated telephony)

  health     {base}/healthz
  readiness  {base}/readyz
  API docs   {base}/docs
  OpenAPI    {base}/openapi.json
  metrics    {base}/metrics

API token:      {api}
Webhook secret: {secret}
A sample call was placed: {call_sid}

Read it and its transcript:
  curl -H {bearer_api} {call_url}
  curl -H {bearer_api} {call_url}/transcriptions

Store a transcript turn as ElevenLabs would (the signature is valid for 30 minutes from now;
sending the same turn again stores nothing new and returns the original ids):
  curl -i -X POST {webhook} \\
    -H 'Content-Type: application/json' \\
    -H {signed} \\
    --data-raw {data}

or authenticate with the webhook secret as a bearer token instead:
  curl -i -X POST {webhook} \\
    -H 'Content-Type: application/json' \\
    -H {bearer_webhook} \\
    --data-raw {data}

Press Ctrl-C to stop.
",
        api = s.api_token,
        secret = s.webhook_secret,
        call_url = shell_quote(&format!("{base}/calls/{call_sid}")),
    ))
}

// ---------------------------------------------------------------------------------------
// cargo xtask demo

pub fn demo(root: &Path) -> Result<()> {
    demo_on(root, &ensure_database(root)?)
}

/// The demo against a database that is already up (`cargo xtask test` passes its own).
pub fn demo_on(root: &Path, db_url: &str) -> Result<()> {
    calls_server(root, "migrate", &[], Some(db_url))?;
    let bin = build_server(root)?;

    let port = free_port()?;
    let settings = Settings::new(format!("127.0.0.1:{port}"), "json".to_string());
    let log_path = target_dir(root).join("xtask-demo-server.log");
    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let log_err = log
        .try_clone()
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = settings.command(&bin, db_url);
    // The simulated telephony loses the webhook of each call's second turn on purpose; the
    // post-call event's transcript reconciliation must restore it.
    cmd.env("SIMULATED_DROP_TURN", DROPPED_TURN.to_string());
    cmd.stdin(Stdio::null()).stdout(log).stderr(log_err);

    println!(
        "demo: starting calls-server on {} (log: {})",
        settings.addr,
        log_path.display()
    );
    let client = http_client()?;
    let mut server = Server::spawn(cmd)?;
    let result = server
        .wait_healthy(&client, &settings.base_url)
        .and_then(|()| demo_calls(&client, &settings));
    server.stop();

    match result {
        Ok(()) => {
            println!("demo: OK");
            Ok(())
        }
        Err(e) => {
            eprintln!("demo: FAILED: {e:#}");
            eprintln!("--- last 50 lines of {} ---", log_path.display());
            eprintln!("{}", tail(&log_path, 50));
            Err(anyhow!("demo failed"))
        }
    }
}

/// Nothing listens on the port we get for 127.0.0.1:0; the tiny race until the server
/// binds it is acceptable for a dev tool.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr().context("finding a free port")?.port())
}

fn demo_calls(client: &Client, settings: &Settings) -> Result<()> {
    let timestamp = OffsetDateTime::now_utc().unix_timestamp().to_string();
    let drivers = [
        Driver {
            id: 2001,
            name: "Sam Carter",
            phone: "+15551234567",
            kind: "temperature",
            description: "Reefer at 45F, required 34-38F",
        },
        Driver {
            id: 2002,
            name: "Maria Lopez",
            phone: "+15557654321",
            kind: "missed_stop",
            description: "Missed the scheduled stop at Dock 7",
        },
    ];

    println!("demo: POST /driver_data/call-elevenlabs with drivers 2001 and 2002");
    let (status, body) = post_batch(client, settings, &batch_body(&timestamp, &drivers))?;
    println!("demo: HTTP {status}\n{body}");
    if status != 200 {
        bail!("expected HTTP 200 from the batch call, got {status}");
    }

    for driver in &drivers {
        wait_completed(client, settings, &driver.call_sid(&timestamp))?;
    }
    for driver in &drivers {
        let call_sid = driver.call_sid(&timestamp);
        println!("\n=== {call_sid} ({}) ===", driver.name);
        let (_, body, call) =
            get_json::<CallOutcomeView>(client, settings, &format!("/calls/{call_sid}"))?;
        let outcome = call
            .and_then(|c| c.outcome)
            .ok_or_else(|| anyhow!("the completed call {call_sid} has no outcome: {body}"))?;
        println!("outcome: {outcome}");
        println!(
            "transcript (turn {DROPPED_TURN}'s webhook was dropped on purpose; the post-call event restored it):"
        );
        for line in transcript(client, settings, &call_sid)? {
            println!("{line}");
        }
    }
    println!();
    Ok(())
}

/// An authenticated GET: the status, the body as text, and the body as `T` where it is one.
fn get_json<T: for<'de> Deserialize<'de>>(
    client: &Client,
    settings: &Settings,
    path: &str,
) -> Result<(u16, String, Option<T>)> {
    let response = client
        .get(format!("{}{path}", settings.base_url))
        .bearer_auth(&settings.api_token)
        .send()
        .with_context(|| format!("GET {path}"))?;
    let status = response.status().as_u16();
    let body = response.text().with_context(|| format!("GET {path}"))?;
    let parsed = serde_json::from_str(&body).ok();
    Ok((status, body, parsed))
}

/// The part of `GET /calls/{sid}` the demo reads.
#[derive(Deserialize)]
struct CallStatus {
    status: String,
}

/// Poll `GET /calls/{sid}` until the simulated call has completed.
fn wait_completed(client: &Client, settings: &Settings, call_sid: &str) -> Result<()> {
    let started = Instant::now();
    let path = format!("/calls/{call_sid}");
    loop {
        let (status, body, call) = get_json::<CallStatus>(client, settings, &path)?;
        match call.map(|c| c.status.to_ascii_lowercase()).as_deref() {
            Some("completed") if status == 200 => {
                println!("demo: {call_sid} completed");
                return Ok(());
            }
            Some("failed") => bail!("call {call_sid} failed: {body}"),
            _ => {}
        }
        if started.elapsed() > CALL_TIMEOUT {
            bail!(
                "call {call_sid} did not complete within {} s; last answer: HTTP {status} {body}",
                CALL_TIMEOUT.as_secs()
            );
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Which turn's webhook the demo's simulated telephony drops.
const DROPPED_TURN: usize = 2;

/// The part of `GET /calls/{sid}` the demo prints.
#[derive(Deserialize)]
struct CallOutcomeView {
    outcome: Option<serde_json::Value>,
}

/// The part of `GET /calls/{sid}/transcriptions` the demo prints.
#[derive(Deserialize)]
struct Transcript {
    transcriptions: Vec<Turn>,
}

#[derive(Deserialize)]
struct Turn {
    sequence_number: i64,
    speaker_type: String,
    message_text: String,
}

/// `GET /calls/{sid}/transcriptions` as conversation lines: `  1 agent : Hello`.
fn transcript(client: &Client, settings: &Settings, call_sid: &str) -> Result<Vec<String>> {
    let path = format!("/calls/{call_sid}/transcriptions");
    let (status, body, parsed) = get_json::<Transcript>(client, settings, &path)?;
    if status != 200 {
        bail!("transcriptions of {call_sid}: HTTP {status} {body}");
    }
    let turns = parsed
        .ok_or_else(|| {
            anyhow!("transcriptions of {call_sid}: no `transcriptions` array in {body}")
        })?
        .transcriptions;
    if turns.is_empty() {
        bail!("the completed call {call_sid} has no transcript turns");
    }
    // Reconciled: numbered 1..N without gaps, the dropped turn included.
    let numbers: Vec<i64> = turns.iter().map(|t| t.sequence_number).collect();
    if numbers != (1..=turns.len() as i64).collect::<Vec<_>>() || turns.len() < DROPPED_TURN {
        bail!(
            "the transcript of {call_sid} is not gapless 1..N with turn {DROPPED_TURN}: {numbers:?}"
        );
    }
    Ok(turns.iter().map(format_turn).collect())
}

fn format_turn(turn: &Turn) -> String {
    format!(
        "{:>3} {:<6}: {}",
        turn.sequence_number, turn.speaker_type, turn.message_text
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use wiremock::matchers::{header, method, path, path_regex};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    #[test]
    fn batch_body_matches_the_documented_shape() {
        let driver = Driver {
            id: 1001,
            name: "Sam Carter",
            phone: "+15551234567",
            kind: "temperature",
            description: "Reefer at 45F, required 34-38F",
        };
        let expected: serde_json::Value = serde_json::from_str(
            r#"{"callType":"violation","timestamp":"1732400000","drivers":[{"driverId":1001,"driverName":"Sam Carter","phoneNumber":"+15551234567","customRules":"","violations":{"tripId":"TRIP-1001","violationDetails":[{"type":"temperature","description":"Reefer at 45F, required 34-38F"}]}}]}"#,
        )
        .unwrap_or_default();
        assert_eq!(batch_body("1732400000", &[driver]), expected);
    }

    #[test]
    fn formats_turns_as_a_conversation() {
        let turn = |json: &str| {
            serde_json::from_str::<Turn>(json)
                .map(|t| format_turn(&t))
                .ok()
        };
        assert_eq!(
            turn(
                r#"{"sequence_number":1,"speaker_type":"agent","message_text":"Hello","timestamp":"t"}"#
            ),
            Some("  1 agent : Hello".to_string())
        );
        assert_eq!(
            turn(r#"{"sequence_number":12,"speaker_type":"driver","message_text":"Hi"}"#),
            Some(" 12 driver: Hi".to_string())
        );
    }

    /// A stand-in for calls-server that answers the demo's requests with canned JSON, so
    /// the demo's HTTP and JSON handling is tested without a database. The first poll sees
    /// the call still running, to exercise the polling.
    fn fake_server(call_status: &'static str) -> (tokio::runtime::Runtime, MockServer) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime for the fake server");
        let server = rt.block_on(async {
            let server = MockServer::start().await;
            let auth = || header("Authorization", "Bearer dev-api-token");
            Mock::given(method("POST"))
                .and(path("/driver_data/call-elevenlabs"))
                .and(auth())
                .respond_with(ResponseTemplate::new(200).set_body_json(json!({"message": "ok", "calls": []})))
                .mount(&server)
                .await;
            Mock::given(method("GET"))
                .and(path_regex("^/calls/[^/]+/transcriptions$"))
                .and(auth())
                .respond_with(ResponseTemplate::new(200).set_body_json(json!({"transcriptions": [
                    {"sequence_number": 1, "speaker_type": "agent", "message_text": "Hello \u{e9}", "timestamp": "t"},
                    {"sequence_number": 2, "speaker_type": "driver", "message_text": "Hi", "timestamp": "t"},
                ]})))
                .mount(&server)
                .await;
            Mock::given(method("GET"))
                .and(path_regex("^/calls/[^/]+$"))
                .and(auth())
                .respond_with(ResponseTemplate::new(200).set_body_json(json!({"call_sid": "x", "status": "in_progress"})))
                .up_to_n_times(2)
                .with_priority(1)
                .mount(&server)
                .await;
            Mock::given(method("GET"))
                .and(path_regex("^/calls/[^/]+$"))
                .and(auth())
                .respond_with(ResponseTemplate::new(200).set_body_json(json!({"call_sid": "x", "status": call_status, "outcome": {"call_successful": "success"}})))
                .mount(&server)
                .await;
            server
        });
        (rt, server)
    }

    fn settings_for(server: &MockServer) -> Settings {
        let mut settings = Settings::new(server.address().to_string(), "json".to_string());
        settings.api_token = "dev-api-token".to_string(); // whatever API_TOKEN the caller has
        settings
    }

    #[test]
    fn demo_reads_completed_calls_and_transcripts() {
        let (_rt, server) = fake_server("completed");
        let result = http_client().and_then(|c| demo_calls(&c, &settings_for(&server)));
        assert!(result.is_ok(), "{result:?}");
    }

    #[test]
    fn demo_fails_when_a_call_fails() {
        let (_rt, server) = fake_server("failed");
        let result = http_client().and_then(|c| demo_calls(&c, &settings_for(&server)));
        assert!(result.is_err());
    }

    #[test]
    fn cheat_sheet_has_a_correctly_signed_curl() {
        let mut settings = Settings::new("127.0.0.1:8080".to_string(), "pretty".to_string());
        settings.webhook_secret = "wsec_test_secret".to_string();
        settings.api_token = "tok".to_string();
        let now = OffsetDateTime::from_unix_timestamp(1_732_406_400)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let sheet = cheat_sheet(&settings, "EL_1001_1732406400", now);
        let Ok(sheet) = sheet else {
            panic!("{sheet:?}");
        };
        // The curl, as a shell reads it, sends the body signed for that exact body.
        let words = shlex::split(&sheet.replace("\\\n", " ")).unwrap_or_default();
        let after = |flag: &str| -> Vec<&str> {
            words
                .windows(2)
                .filter(|w| w[0] == flag)
                .map(|w| w[1].as_str())
                .collect()
        };
        let bodies = after("--data-raw");
        let body = bodies.first().copied().unwrap_or_default();
        assert_eq!(bodies, [body, body], "{sheet}");
        let sent: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        assert_eq!(
            sent,
            json!({"call_sid": "EL_1001_1732406400", "speaker": "user",
                   "message": "Hello, this is the driver.", "timestamp": "2024-11-24T00:00:00Z"})
        );
        let signature = after("-H")
            .into_iter()
            .find_map(|h| h.strip_prefix("ElevenLabs-Signature: "))
            .unwrap_or_default()
            .to_string();
        assert_eq!(
            calls_elevenlabs::verify(
                "wsec_test_secret",
                &signature,
                body.as_bytes(),
                1_732_406_400,
                60
            ),
            Ok(()),
            "{sheet}"
        );
        assert!(
            after("-H").contains(&"Authorization: Bearer wsec_test_secret"),
            "{sheet}"
        );
        assert!(sheet.contains(
            "curl -H 'Authorization: Bearer tok' http://127.0.0.1:8080/calls/EL_1001_1732406400/transcriptions"
        ));
        assert!(sheet.contains("30 minutes"));
        for path in ["/healthz", "/readyz", "/docs", "/openapi.json", "/metrics"] {
            assert!(
                sheet.contains(&format!("http://127.0.0.1:8080{path}")),
                "{path}"
            );
        }
    }

    #[test]
    fn wildcard_bind_addresses_are_reached_over_loopback() {
        let s = Settings::new("0.0.0.0:9000".to_string(), "json".to_string());
        assert_eq!(s.addr, "127.0.0.1:9000");
        assert_eq!(s.bind_addr, "0.0.0.0:9000");
        assert_eq!(reachable_addr("[::]:9000"), "[::1]:9000");
        assert_eq!(reachable_addr("localhost:8080"), "localhost:8080");
        let s = Settings::new("127.0.0.1:8080".to_string(), "json".to_string());
        assert_eq!(s.base_url, "http://127.0.0.1:8080");
    }
}
