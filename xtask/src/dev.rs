//! `cargo xtask run` (a local server to poke at) and `cargo xtask demo` (an end-to-end
//! check with simulated telephony that finishes by itself).

use std::env;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::clock::{rfc3339_utc, unix_now};
use crate::db::{ensure_database, tail};
use crate::error::{Context, Error, Result};
use crate::http::http_request;
use crate::json::{self, Json};
use crate::process::{cargo, check, project_root, run, shell_quote, target_dir, tcp_reachable};
use crate::signing::signature_header;

const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(250);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// `calls-server migrate [args]` against `db_url`, through cargo so it is built first.
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

/// Cargo profiles the server is built with: `dev` for run/demo, `release` for bench.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Profile {
    Dev,
    Release,
}

/// Build calls-server and return the binary, which we run directly so signals reach it.
fn build_server(root: &Path) -> Result<PathBuf> {
    build_server_with(root, Profile::Dev)
}

pub(crate) fn build_server_with(root: &Path, profile: Profile) -> Result<PathBuf> {
    let (args, dir): (&[&str], &str) = match profile {
        Profile::Dev => (&["build", "--quiet", "-p", "calls-server"], "debug"),
        Profile::Release => (&["build", "--release", "-p", "calls-server"], "release"),
    };
    run(cargo(root).args(args), &format!("cargo {}", args.join(" ")))?;
    let bin = target_dir(root).join(dir).join("calls-server");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "cargo built calls-server but {} does not exist",
            bin.display()
        )
        .into())
    }
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

impl Settings {
    fn new(bind_addr: String, log_format: String) -> Self {
        let addr = if let Some(port) = bind_addr.strip_prefix("0.0.0.0:") {
            format!("127.0.0.1:{port}")
        } else if let Some(port) = bind_addr.strip_prefix("[::]:") {
            format!("[::1]:{port}")
        } else {
            bind_addr.clone()
        };
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

    fn bearer(&self) -> String {
        format!("Bearer {}", self.api_token)
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

/// A running calls-server that is stopped when dropped, so every error path cleans up.
pub(crate) struct Server {
    child: Child,
}

impl Server {
    pub(crate) fn spawn(mut cmd: Command) -> Result<Self> {
        let child = cmd
            .spawn()
            .context(|| "starting calls-server".to_string())?;
        Ok(Server { child })
    }

    /// Poll `GET /healthz` until it answers 200; fail early if the server exits.
    pub(crate) fn wait_healthy(&mut self, addr: &str) -> Result<()> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(
                    format!("calls-server exited ({status}) before answering /healthz").into(),
                );
            }
            let last = match http_request("GET", addr, "/healthz", &[], None) {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => format!("HTTP {status}: {body}"),
                Err(e) => e,
            };
            if started.elapsed() > HEALTH_TIMEOUT {
                return Err(format!(
                    "calls-server did not answer GET /healthz with 200 within {} s (last: {last})",
                    HEALTH_TIMEOUT.as_secs()
                )
                .into());
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// SIGTERM for a graceful shutdown; SIGKILL if that takes longer than 10 s.
    pub(crate) fn stop(&mut self) {
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
fn batch_body(timestamp: &str, drivers: &[Driver]) -> String {
    let drivers: Vec<String> = drivers
        .iter()
        .map(|d| {
            format!(
                r#"{{"driverId":{},"driverName":{},"phoneNumber":{},"customRules":"","violations":{{"tripId":{},"violationDetails":[{{"type":{},"description":{}}}]}}}}"#,
                d.id,
                json::quote(d.name),
                json::quote(d.phone),
                json::quote(&format!("TRIP-{}", d.id)),
                json::quote(d.kind),
                json::quote(d.description),
            )
        })
        .collect();
    format!(
        r#"{{"callType":"violation","timestamp":{},"drivers":[{}]}}"#,
        json::quote(timestamp),
        drivers.join(",")
    )
}

fn post_batch(settings: &Settings, body: &str) -> std::result::Result<(u16, String), String> {
    let auth = settings.bearer();
    http_request(
        "POST",
        &settings.addr,
        "/driver_data/call-elevenlabs",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        Some(body),
    )
}

// ---------------------------------------------------------------------------------------
// cargo xtask run

pub fn run_server() -> Result<()> {
    let root = project_root()?;
    let db_url = ensure_database()?;
    calls_server(&root, "migrate", &[], Some(&db_url))?;
    let bin = build_server(&root)?;

    let settings = Settings::new(
        env_or("BIND_ADDR", "127.0.0.1:8080"),
        env_or("LOG_FORMAT", "pretty"),
    );
    // Otherwise our health check could be answered by an older server on the same port.
    if let Some((host, port)) = settings.addr.rsplit_once(':') {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if port
            .parse()
            .is_ok_and(|port| tcp_reachable(host, port, Duration::from_secs(1)))
        {
            return Err(format!(
                "something already listens on {} (an earlier `cargo xtask run`?); stop it or set BIND_ADDR",
                settings.addr
            )
            .into());
        }
    }

    // stdio is inherited, so the server's logs show up in this terminal.
    let mut server = Server::spawn(settings.command(&bin, &db_url))?;
    server.wait_healthy(&settings.addr)?;

    let now = unix_now();
    let timestamp = now.to_string();
    let sample = Driver {
        id: 1001,
        name: "Sam Carter",
        phone: "+15551234567",
        kind: "temperature",
        description: "Reefer at 45F, required 34-38F",
    };
    let call_sid = sample.call_sid(&timestamp);
    match post_batch(&settings, &batch_body(&timestamp, &[sample])) {
        Ok((200, _)) => {}
        Ok((status, body)) => {
            eprintln!("xtask: warning: the sample call got HTTP {status}: {body}");
        }
        Err(e) => eprintln!("xtask: warning: the sample call failed: {e}"),
    }

    println!("{}", cheat_sheet(&settings, &call_sid, now)?);

    // Ctrl-C reaches the server too (same process group), so we only wait for it.
    let status = server
        .child
        .wait()
        .context(|| "waiting for calls-server".to_string())?;
    check(status, "calls-server serve")
}

/// What a newcomer needs next: the URLs, the token and curls that work as pasted.
fn cheat_sheet(s: &Settings, call_sid: &str, now: u64) -> Result<String> {
    let base = &s.base_url;
    let body = format!(
        r#"{{"call_sid":{},"speaker":"user","message":"Hello, this is the driver.","timestamp":{}}}"#,
        json::quote(call_sid),
        json::quote(&rfc3339_utc(now))
    );
    let signature = signature_header(&s.webhook_secret, now, &body)?;
    let webhook = shell_quote(&format!("{base}/webhooks/elevenlabs/transcription"));
    let data = shell_quote(&body);
    let bearer_api = shell_quote(&format!("Authorization: Bearer {}", s.api_token));
    let bearer_webhook = shell_quote(&format!("Authorization: Bearer {}", s.webhook_secret));
    let signed = shell_quote(&format!("ElevenLabs-Signature: {signature}"));

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

pub fn demo() -> Result<()> {
    demo_on(&ensure_database()?)
}

/// The demo against a database that is already up (`cargo xtask test` passes its own).
pub fn demo_on(db_url: &str) -> Result<()> {
    let root = project_root()?;
    calls_server(&root, "migrate", &[], Some(db_url))?;
    let bin = build_server(&root)?;

    let port = free_port()?;
    let settings = Settings::new(format!("127.0.0.1:{port}"), "json".to_string());
    let log_path = root.join("target").join("xtask-demo-server.log");
    let log = File::create(&log_path).context(|| format!("creating {}", log_path.display()))?;
    let log_err = log
        .try_clone()
        .context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = settings.command(&bin, db_url);
    cmd.stdin(Stdio::null()).stdout(log).stderr(log_err);

    println!(
        "demo: starting calls-server on {} (log: {})",
        settings.addr,
        log_path.display()
    );
    let mut server = Server::spawn(cmd)?;
    let result = server
        .wait_healthy(&settings.addr)
        .and_then(|()| demo_calls(&settings));
    server.stop();

    match result {
        Ok(()) => {
            println!("demo: OK");
            Ok(())
        }
        Err(e) => {
            eprintln!("demo: FAILED: {e}");
            eprintln!("--- last 50 lines of {} ---", log_path.display());
            eprintln!("{}", tail(&log_path, 50));
            Err(Error::Msg("demo failed".to_string()))
        }
    }
}

/// Nothing listens on the port we get for 127.0.0.1:0; the tiny race until the server
/// binds it is acceptable for a dev tool.
pub(crate) fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind("127.0.0.1:0").context(|| "finding a free port".to_string())?;
    let port = listener
        .local_addr()
        .context(|| "finding a free port".to_string())?
        .port();
    Ok(port)
}

fn demo_calls(settings: &Settings) -> Result<()> {
    let timestamp = unix_now().to_string();
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
    let (status, body) = post_batch(settings, &batch_body(&timestamp, &drivers))?;
    println!("demo: HTTP {status}\n{body}");
    if status != 200 {
        return Err(format!("expected HTTP 200 from the batch call, got {status}").into());
    }

    for driver in &drivers {
        wait_completed(settings, &driver.call_sid(&timestamp))?;
    }
    for driver in &drivers {
        let call_sid = driver.call_sid(&timestamp);
        println!("\n=== {call_sid} ({}) ===", driver.name);
        for line in transcript(settings, &call_sid)? {
            println!("{line}");
        }
    }
    println!();
    Ok(())
}

fn get_json(settings: &Settings, path: &str) -> Result<(u16, String, Option<Json>)> {
    let auth = settings.bearer();
    let (status, body) = http_request(
        "GET",
        &settings.addr,
        path,
        &[("Authorization", &auth)],
        None,
    )?;
    let parsed = json::parse(&body).ok();
    Ok((status, body, parsed))
}

/// Poll `GET /calls/{sid}` until the simulated call has completed.
fn wait_completed(settings: &Settings, call_sid: &str) -> Result<()> {
    let started = Instant::now();
    let path = format!("/calls/{call_sid}");
    loop {
        let (status, body, parsed) = get_json(settings, &path)?;
        let call_status = parsed
            .as_ref()
            .and_then(|call| call.get("status"))
            .and_then(Json::as_str)
            .map(str::to_ascii_lowercase);
        match call_status.as_deref() {
            Some("completed") if status == 200 => {
                println!("demo: {call_sid} completed");
                return Ok(());
            }
            Some("failed") => return Err(format!("call {call_sid} failed: {body}").into()),
            _ => {}
        }
        if started.elapsed() > CALL_TIMEOUT {
            return Err(format!(
                "call {call_sid} did not complete within {} s; last answer: HTTP {status} {body}",
                CALL_TIMEOUT.as_secs()
            )
            .into());
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// `GET /calls/{sid}/transcriptions` as conversation lines: `  1 agent : Hello`.
fn transcript(settings: &Settings, call_sid: &str) -> Result<Vec<String>> {
    let (status, body, parsed) = get_json(settings, &format!("/calls/{call_sid}/transcriptions"))?;
    if status != 200 {
        return Err(format!("transcriptions of {call_sid}: HTTP {status} {body}").into());
    }
    let turns = parsed
        .as_ref()
        .and_then(|doc| doc.get("transcriptions"))
        .and_then(Json::as_array)
        .ok_or_else(|| {
            format!("transcriptions of {call_sid}: no `transcriptions` array in {body}")
        })?;
    if turns.is_empty() {
        return Err(format!("the completed call {call_sid} has no transcript turns").into());
    }
    Ok(turns.iter().map(format_turn).collect())
}

fn format_turn(turn: &Json) -> String {
    let text = |key: &str| {
        turn.get(key)
            .and_then(Json::as_str)
            .unwrap_or("?")
            .to_string()
    };
    let sequence = turn
        .get("sequence_number")
        .and_then(Json::as_f64)
        .map_or_else(|| "?".to_string(), |n| format!("{n}"));
    format!(
        "{sequence:>3} {:<6}: {}",
        text("speaker_type"),
        text("message_text")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_body_matches_the_documented_shape() {
        let driver = Driver {
            id: 1001,
            name: "Sam Carter",
            phone: "+15551234567",
            kind: "temperature",
            description: "Reefer at 45F, required 34-38F",
        };
        assert_eq!(
            batch_body("1732400000", &[driver]),
            r#"{"callType":"violation","timestamp":"1732400000","drivers":[{"driverId":1001,"driverName":"Sam Carter","phoneNumber":"+15551234567","customRules":"","violations":{"tripId":"TRIP-1001","violationDetails":[{"type":"temperature","description":"Reefer at 45F, required 34-38F"}]}}]}"#
        );
    }

    #[test]
    fn formats_turns_as_a_conversation() {
        let turn = json::parse(
            r#"{"sequence_number":1,"speaker_type":"agent","message_text":"Hello","timestamp":"t"}"#,
        );
        assert_eq!(
            turn.map(|t| format_turn(&t)),
            Ok("  1 agent : Hello".to_string())
        );
        let turn =
            json::parse(r#"{"sequence_number":12,"speaker_type":"driver","message_text":"Hi"}"#);
        assert_eq!(
            turn.map(|t| format_turn(&t)),
            Ok(" 12 driver: Hi".to_string())
        );
    }

    /// A stand-in for calls-server: answers the demo's requests from canned JSON, so the
    /// demo's HTTP and JSON handling is tested without a database.
    fn fake_server(call_status: &'static str) -> Option<String> {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = TcpListener::bind("127.0.0.1:0").ok()?;
        let addr = listener.local_addr().ok()?.to_string();
        thread::spawn(move || {
            let mut polls = 0;
            for conn in listener.incoming().flatten() {
                let mut reader = BufReader::new(conn);
                let mut request_line = String::new();
                let mut authorized = false;
                let mut length = 0;
                let _ = reader.read_line(&mut request_line);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).is_err() || line == "\r\n" || line.is_empty() {
                        break;
                    }
                    authorized |= line == "Authorization: Bearer dev-api-token\r\n";
                    if let Some(n) = line.strip_prefix("Content-Length: ") {
                        length = n.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let path = request_line
                    .split(' ')
                    .nth(1)
                    .unwrap_or_default()
                    .to_string();
                let (status, reply) = if !authorized {
                    (401, r#"{"status":"error"}"#.to_string())
                } else if path == "/driver_data/call-elevenlabs" {
                    (200, r#"{"message":"ok","calls":[]}"#.to_string())
                } else if path.ends_with("/transcriptions") {
                    let turns = r#"{"transcriptions":[
                        {"sequence_number":1,"speaker_type":"agent","message_text":"Hello \u00e9","timestamp":"t"},
                        {"sequence_number":2,"speaker_type":"driver","message_text":"Hi","timestamp":"t"}]}"#;
                    (200, turns.to_string())
                } else {
                    // The first poll sees the call still running, to exercise the polling.
                    polls += 1;
                    let state = if polls == 1 {
                        "in_progress"
                    } else {
                        call_status
                    };
                    (200, format!(r#"{{"call_sid":"x","status":"{state}"}}"#))
                };
                let mut conn = reader.into_inner();
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{reply}",
                    reply.len()
                );
            }
        });
        Some(addr)
    }

    #[test]
    fn demo_reads_completed_calls_and_transcripts() {
        let Some(addr) = fake_server("completed") else {
            return; // no loopback networking in this sandbox
        };
        let mut settings = Settings::new(addr, "json".to_string());
        settings.api_token = "dev-api-token".to_string(); // whatever API_TOKEN the caller has
        let result = demo_calls(&settings);
        assert!(result.is_ok(), "{result:?}");
    }

    #[test]
    fn demo_fails_when_a_call_fails() {
        let Some(addr) = fake_server("failed") else {
            return;
        };
        let mut settings = Settings::new(addr, "json".to_string());
        settings.api_token = "dev-api-token".to_string(); // whatever API_TOKEN the caller has
        assert!(demo_calls(&settings).is_err());
    }

    #[test]
    fn cheat_sheet_has_a_correctly_signed_curl() {
        let mut settings = Settings::new("127.0.0.1:8080".to_string(), "pretty".to_string());
        settings.webhook_secret = "wsec_test_secret".to_string();
        settings.api_token = "tok".to_string();
        let sheet = cheat_sheet(&settings, "EL_1001_1732406400", 1_732_406_400);
        let Ok(sheet) = sheet else {
            panic!("{sheet:?}");
        };
        let body = r#"{"call_sid":"EL_1001_1732406400","speaker":"user","message":"Hello, this is the driver.","timestamp":"2024-11-24T00:00:00Z"}"#;
        let signature = signature_header("wsec_test_secret", 1_732_406_400, body);
        let Ok(signature) = signature else {
            panic!("{signature:?}");
        };
        assert!(sheet.contains(&format!("--data-raw '{body}'")), "{sheet}");
        assert!(
            sheet.contains(&format!("-H 'ElevenLabs-Signature: {signature}'")),
            "{sheet}"
        );
        assert!(
            sheet.contains("-H 'Authorization: Bearer wsec_test_secret'"),
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
        let s = Settings::new("127.0.0.1:8080".to_string(), "json".to_string());
        assert_eq!(s.base_url, "http://127.0.0.1:8080");
    }
}
