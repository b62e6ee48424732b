//! `cargo xtask bench`: batch placement and webhook throughput of a release calls-server
//! against an in-process fake ElevenLabs.
//!
//! Figures are printed as ratios against a baseline measured in the same run (a 1-driver
//! batch, `GET /healthz`), never checked against absolute thresholds: the machine decides
//! the absolute numbers. Only errors (including a wrong transcript) fail the command.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::clock::{rfc3339_utc, unix_now};
use crate::db::{ensure_database, tail};
use crate::dev::{Profile, Server, build_server_with, free_port};
use crate::error::{Context, Error, Result};
use crate::json::{self, Json};
use crate::process::{find_in_path, output, project_root, run_quietly, target_dir};

const API_TOKEN: &str = "bench-api-token";
const WEBHOOK_SECRET: &str = "bench-webhook-secret";
const OUTBOUND_CALL_PATH: &str = "/v1/convai/twilio/outbound-call";
/// The server's own default, printed when `--call-concurrency` is not given.
const SERVER_DEFAULT_CONCURRENCY: u32 = 8;
/// The server's default body limit; a larger batch body needs MAX_BODY_BYTES raised.
const SERVER_DEFAULT_MAX_BODY: usize = 65_536;
/// Below the server's default ELEVENLABS_TIMEOUT_SECS (15 s), so fake calls never time out.
const MAX_DELAY_MS: u64 = 10_000;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A fake connection idle this long is given up (the server's pool reconnects).
const FAKE_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_LINE: u64 = 16 * 1024;
const MAX_HEADERS: usize = 100;
/// Transcripts of a long run are a few MB; anything this big is a bug.
const MAX_BODY: usize = 256 * 1024 * 1024;
/// Most calls `--calls` may spread the webhook turns over.
const MAX_WEBHOOK_CALLS: u64 = 1_024;
/// Driver ids of the webhook calls start here, clear of the baseline's (1) and the large
/// batch's (1001 up to 101_000), and stay at 7 digits for the phone numbers.
const WEBHOOK_FIRST_DRIVER: u32 = 1_000_001;

pub const USAGE: &str = "\
Usage: cargo xtask bench [--drivers N] [--delay-ms N] [--call-concurrency N] [--seconds N]
                         [--clients N] [--calls N]

  --drivers N           drivers in the large batch (default 100)
  --delay-ms N          fake ElevenLabs answer delay (default 200)
  --call-concurrency N  CALL_CONCURRENCY of the server (default: the server's, 8)
  --seconds N           duration of each throughput run (default 5)
  --clients N           concurrent keep-alive clients (default 16)
  --calls N             calls the webhook turns are spread over (default 1, at most 1024):
                        client i posts to call i % N, or, with more calls than clients,
                        cycles through calls i, i+clients, i+2*clients, ... (1 is the worst
                        case: every turn waits for the same call's row lock)
";

#[derive(Debug, PartialEq)]
struct Options {
    drivers: u32,
    delay_ms: u64,
    call_concurrency: Option<u32>,
    seconds: u64,
    clients: usize,
    calls: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            drivers: 100,
            delay_ms: 200,
            call_concurrency: None,
            seconds: 5,
            clients: 16,
            calls: 1,
        }
    }
}

fn parse_options(args: &[String]) -> Result<Options> {
    let mut options = Options::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        // Both `--name N` and `--name=N`.
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (arg.as_str(), None),
        };
        let value = match inline {
            Some(value) => value,
            None => args
                .next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value\n\n{USAGE}"))?,
        };
        let number = |min: u64, max: u64| -> Result<u64> {
            value
                .parse::<u64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| {
                    format!("{name}: expected a number in {min}..={max}, got `{value}`").into()
                })
        };
        // The ranges keep phone numbers at 7 digits and ids and counts in their types.
        match name {
            "--drivers" => options.drivers = u32::try_from(number(1, 100_000)?).unwrap_or(1),
            "--delay-ms" => options.delay_ms = number(0, MAX_DELAY_MS)?,
            "--call-concurrency" => {
                options.call_concurrency = Some(u32::try_from(number(1, 10_000)?).unwrap_or(1));
            }
            "--seconds" => options.seconds = number(1, 3_600)?,
            "--clients" => options.clients = usize::try_from(number(1, 1_024)?).unwrap_or(1),
            "--calls" => {
                options.calls = usize::try_from(number(1, MAX_WEBHOOK_CALLS)?).unwrap_or(1);
            }
            _ => return Err(format!("unknown option `{arg}`\n\n{USAGE}").into()),
        }
    }
    Ok(options)
}

// ---------------------------------------------------------------------------------------
// The command

pub fn bench(args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{USAGE}");
        return Ok(());
    }
    let options = parse_options(args)?;
    let root = project_root()?;
    let db_url = ensure_database()?;
    // Release, because debug-build figures say little about the service.
    eprintln!("bench: cargo build --release -p calls-server");
    let bin = build_server_with(&root, Profile::Release)?;
    let schema = format!("bench_{}", unix_now());
    let log_path = target_dir(&root).join("xtask-bench-server.log");

    let result = migrate(&bin, &db_url, &schema)
        .and_then(|()| run_benchmarks(&options, &bin, &db_url, &schema, &log_path));
    // The schema goes whether or not the run succeeded; it only holds bench data.
    let schema_note = drop_schema(&db_url, &schema);

    match result {
        Ok(report) => {
            println!("\n== summary ==");
            for line in &report.summary {
                println!("  {line}");
            }
            println!("  schema {schema}: {schema_note}");
            println!("  server log: {}", log_path.display());
            if report.transcript_ok {
                Ok(())
            } else {
                Err("the transcript check failed (see above)".into())
            }
        }
        Err(e) => {
            eprintln!("bench: FAILED: {e}");
            eprintln!("bench: schema {schema}: {schema_note}");
            eprintln!("--- last 30 lines of {} ---", log_path.display());
            eprintln!("{}", tail(&log_path, 30));
            Err(Error::Msg("bench failed".to_string()))
        }
    }
}

/// `calls-server migrate` on the bench schema (it creates the schema), with the release
/// binary we already have rather than `cargo run`, which would build a debug one too.
fn migrate(bin: &Path, db_url: &str, schema: &str) -> Result<()> {
    eprintln!("bench: migrating schema {schema}");
    // run_quietly: its progress goes to stderr, keeping stdout for the figures.
    run_quietly(
        Command::new(bin)
            .arg("migrate")
            .env("DATABASE_URL", db_url)
            .env("DATABASE_SCHEMA", schema)
            .env("RUST_LOG", "warn"),
        "calls-server migrate",
    )
}

fn drop_schema(db_url: &str, schema: &str) -> String {
    let manual = format!("drop it with: DROP SCHEMA \"{schema}\" CASCADE;");
    if find_in_path("psql").is_none() {
        return format!("left in place (psql not found); {manual}");
    }
    let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
    let dropped = output(
        Command::new("psql")
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                db_url,
                "-c",
                &sql,
            ])
            .env("PGCONNECT_TIMEOUT", "10"),
    );
    match dropped {
        Some(_) => "dropped".to_string(),
        None => format!("left in place (psql failed); {manual}"),
    }
}

struct Report {
    summary: Vec<String>,
    transcript_ok: bool,
}

fn run_benchmarks(
    options: &Options,
    bin: &Path,
    db_url: &str,
    schema: &str,
    log_path: &Path,
) -> Result<Report> {
    // Driver ids: 1 for the baseline, 1001.. for the large batch, 1_000_001.. for the
    // webhook calls, each batch with its own timestamp, so no call_sid repeats.
    let calls = u32::try_from(options.calls).unwrap_or(1);
    let webhook_batch = Batch::new(WEBHOOK_FIRST_DRIVER, calls);
    let baseline_batch = Batch::new(1, 1);
    let large_batch = Batch::new(1001, options.drivers);

    let fake = FakeElevenLabs::start(Duration::from_millis(options.delay_ms))?;
    eprintln!(
        "bench: fake ElevenLabs on {} (answer delay {} ms)",
        fake.addr, options.delay_ms
    );

    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let log = File::create(log_path).context(|| format!("creating {}", log_path.display()))?;
    let log_err = log
        .try_clone()
        .context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .env("DATABASE_URL", db_url)
        .env("DATABASE_SCHEMA", schema)
        .env("BIND_ADDR", &addr)
        .env("TELEPHONY", "elevenlabs")
        .env("ELEVENLABS_BASE_URL", format!("http://{}", fake.addr))
        .env("ELEVENLABS_API_KEY", "bench-api-key")
        .env("ELEVENLABS_AGENT_ID", "bench-agent")
        .env("ELEVENLABS_AGENT_PHONE_NUMBER_ID", "bench-phone-number")
        .env("WEBHOOK_SECRET", WEBHOOK_SECRET)
        .env("API_TOKEN", API_TOKEN)
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    if let Some(n) = options.call_concurrency {
        cmd.env("CALL_CONCURRENCY", n.to_string());
    }
    let largest_body = large_batch.body.len().max(webhook_batch.body.len());
    if largest_body > SERVER_DEFAULT_MAX_BODY {
        // Only the two multi-driver batches can need it; every other request stays far
        // below the default.
        cmd.env("MAX_BODY_BYTES", (largest_body * 2).to_string());
    }
    eprintln!(
        "bench: starting calls-server (release) on {addr} (log: {})",
        log_path.display()
    );
    let mut server = Server::spawn(cmd)?;
    server.wait_healthy(&addr)?;

    let result = (|| {
        // First, untimed: the calls the webhook turns go to, in one batch; it also warms
        // up the pools (database, HTTP to the fake).
        webhook_batch.post(&addr, Duration::from_millis(options.delay_ms))?;
        let mut summary = placement(options, &addr, &fake, &baseline_batch, &large_batch)?;
        let (lines, transcript_ok) = throughput(options, &addr, &webhook_batch.call_sids)?;
        summary.extend(lines);

        let expected = 1 + u64::from(calls) + u64::from(options.drivers);
        let placed = fake.shared.calls.load(Ordering::SeqCst);
        if placed != expected {
            return Err(Error::from(format!(
                "the fake ElevenLabs got {placed} outbound-call requests, expected {expected}"
            )));
        }
        summary.push(format!(
            "fake ElevenLabs: {placed} outbound calls, as expected"
        ));
        Ok(Report {
            summary,
            transcript_ok,
        })
    })();
    server.stop();
    drop(fake);
    eprintln!("bench: calls-server and the fake ElevenLabs stopped");
    result
}

// ---------------------------------------------------------------------------------------
// Batch placement

/// One `POST /driver_data/call-elevenlabs` request, built up front so its size is known
/// before the server starts.
struct Batch {
    body: String,
    call_sids: Vec<String>,
}

impl Batch {
    fn new(first_id: u32, drivers: u32) -> Self {
        // Digits only: the timestamp becomes part of each call_sid.
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
            .to_string();
        let ids: Vec<u32> = (first_id..first_id + drivers).collect();
        Batch {
            body: batch_body(&timestamp, &ids),
            call_sids: ids
                .iter()
                .map(|id| format!("EL_{id}_{timestamp}"))
                .collect(),
        }
    }

    /// Post the batch and check every call was placed; returns the wall time.
    fn post(&self, addr: &str, delay: Duration) -> Result<Duration> {
        // Generous: a small CALL_CONCURRENCY dials the drivers nearly one after another.
        let calls = u32::try_from(self.call_sids.len()).unwrap_or(u32::MAX);
        let timeout = REQUEST_TIMEOUT + delay.saturating_mul(calls).saturating_mul(2);
        // A fresh client, so the request is never retried: a retry would get 409.
        let mut client = Client::new(addr, timeout)?;
        let auth = format!("Bearer {API_TOKEN}");
        let started = Instant::now();
        let response = client.send(
            "POST",
            "/driver_data/call-elevenlabs",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            Some(&self.body),
        )?;
        let elapsed = started.elapsed();
        let body = String::from_utf8_lossy(&response.body);
        if response.status() != Some(200) {
            return Err(format!(
                "batch of {} drivers: expected HTTP 200, got `{}`: {}",
                self.call_sids.len(),
                response.start_line,
                clip(&body)
            )
            .into());
        }
        let doc = json::parse(&body).map_err(|e| format!("batch response: {e}"))?;
        let calls = doc
            .get("calls")
            .and_then(Json::as_array)
            .ok_or_else(|| format!("batch response has no `calls` array: {}", clip(&body)))?;
        let placed = calls
            .iter()
            .filter(|c| c.get("conversation_id").and_then(Json::as_str).is_some())
            .count();
        if placed != self.call_sids.len() {
            return Err(format!(
                "batch: {placed} of {} calls got a conversation_id: {}",
                self.call_sids.len(),
                clip(&body)
            )
            .into());
        }
        Ok(elapsed)
    }
}

/// Distinct ids and phone numbers (`+1555` and the id in 7 digits).
fn batch_body(timestamp: &str, ids: &[u32]) -> String {
    let drivers: Vec<String> = ids
        .iter()
        .map(|id| {
            format!(
                r#"{{"driverId":{id},"driverName":"Bench Driver {id}","phoneNumber":"+1555{id:07}","customRules":"","violations":{{"tripId":"TRIP-{id}","violationDetails":[{{"type":"temperature","description":"Reefer at 45F, required 34-38F"}}]}}}}"#
            )
        })
        .collect();
    format!(
        r#"{{"callType":"violation","timestamp":{},"drivers":[{}]}}"#,
        json::quote(timestamp),
        drivers.join(",")
    )
}

fn placement(
    options: &Options,
    addr: &str,
    fake: &FakeElevenLabs,
    baseline_batch: &Batch,
    large_batch: &Batch,
) -> Result<Vec<String>> {
    let delay = Duration::from_millis(options.delay_ms);
    let n = options.drivers;
    let concurrency = options
        .call_concurrency
        .unwrap_or(SERVER_DEFAULT_CONCURRENCY);
    let origin = if options.call_concurrency.is_some() {
        "set"
    } else {
        "server default"
    };
    println!(
        "\n== batch placement (fake ElevenLabs delay {} ms, CALL_CONCURRENCY {concurrency}, {origin}) ==",
        options.delay_ms
    );
    let baseline = baseline_batch.post(addr, delay)?;
    fake.shared.peak.store(0, Ordering::SeqCst);
    let large = large_batch.post(addr, delay)?;
    let peak = fake.shared.peak.load(Ordering::SeqCst);

    let base_s = baseline.as_secs_f64();
    let large_s = large.as_secs_f64();
    let sequential = base_s * f64::from(n);
    let rounds = n.div_ceil(concurrency);
    let ratio = large_s / base_s;
    let speedup = sequential / large_s;
    println!("  {:<19} {base_s:>9.3} s   (baseline)", "1 driver");
    println!(
        "  {:<19} {large_s:>9.3} s   = {ratio:.1} x baseline",
        format!("{n} drivers")
    );
    println!(
        "  sequential estimate {sequential:>9.3} s   ({n} x baseline); speedup {speedup:.1} x"
    );
    println!(
        "  {:<19} {:>9.3} s   ({rounds} round{} x baseline)",
        format!("ideal, {concurrency} at a time"),
        base_s * f64::from(rounds),
        if rounds == 1 { "" } else { "s" }
    );
    println!("  peak concurrent outbound calls at the fake: {peak}");
    Ok(vec![format!(
        "batch: {n} drivers in {large_s:.3} s = {ratio:.1} x the 1-driver baseline ({base_s:.3} s); \
         {speedup:.1} x faster than sequential ({sequential:.3} s); peak {peak} calls at once"
    )])
}

// ---------------------------------------------------------------------------------------
// Webhook throughput

/// Counts per call, indexed like the calls (a missing index counts 0).
#[derive(Debug, Default, PartialEq)]
struct PerCall(Vec<u64>);

impl PerCall {
    fn add(&mut self, call: usize) {
        if self.0.len() <= call {
            self.0.resize(call + 1, 0);
        }
        if let Some(count) = self.0.get_mut(call) {
            *count += 1;
        }
    }

    fn merge(&mut self, other: &PerCall) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (mine, theirs) in self.0.iter_mut().zip(&other.0) {
            *mine += theirs;
        }
    }

    fn get(&self, call: usize) -> u64 {
        self.0.get(call).copied().unwrap_or(0)
    }

    fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// The call that request `n` (1, 2, ...) of client `client` goes to. With no more calls
/// than clients, client i always posts to call i % calls; with more, the calls are split
/// among the clients (client i owns i, i + clients, i + 2 * clients, ...) and each client
/// cycles through its own, so no two clients share a call either way when calls is a
/// multiple of clients, and every call gets turns.
fn call_for(client: usize, n: u64, clients: usize, calls: usize) -> usize {
    let calls = calls.max(1);
    let clients = clients.max(1);
    let client = client % clients;
    if calls <= clients {
        return client % calls;
    }
    // client < clients < calls, so it owns at least one call.
    let owned = (calls - client).div_ceil(clients);
    let turn =
        usize::try_from(n.saturating_sub(1) % u64::try_from(owned).unwrap_or(1)).unwrap_or(0);
    client + clients * turn
}

/// How the clients spread over the calls, for the header.
fn spread(clients: usize, calls: usize) -> String {
    if calls == 1 {
        "all on one call".to_string()
    } else if calls <= clients {
        format!("client i posts to call i % {calls}")
    } else {
        format!(
            "client i cycles through calls i, i+{clients}, i+{}, ...",
            2 * clients
        )
    }
}

/// What the clients of one load run saw.
#[derive(Debug, Default)]
struct Load {
    ok: u64,
    /// 201s (new turns) per call.
    created: PerCall,
    non_2xx: u64,
    errors: u64,
    latencies_us: Vec<u64>,
    elapsed: Duration,
    first_problem: Option<String>,
}

impl Load {
    fn merge(&mut self, other: Load) {
        self.ok += other.ok;
        self.created.merge(&other.created);
        self.non_2xx += other.non_2xx;
        self.errors += other.errors;
        self.latencies_us.extend(other.latencies_us);
        if self.first_problem.is_none() {
            self.first_problem = other.first_problem;
        }
    }

    fn per_second(&self) -> f64 {
        (self.ok + self.non_2xx) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn ms(&self, p: u64) -> f64 {
        percentile(&self.latencies_us, p).map_or(f64::NAN, |us| us as f64 / 1000.0)
    }

    fn row(&self, name: &str) -> String {
        format!(
            "  {name:<28} {:>10.1} {:>9.2} {:>9.2} {:>8} {:>8} {:>7}",
            self.per_second(),
            self.ms(50),
            self.ms(99),
            self.ok,
            self.non_2xx,
            self.errors
        )
    }
}

/// Nearest-rank percentile (`p` in 0..=100) of an ascending slice; `None` when empty.
fn percentile(sorted: &[u64], p: u64) -> Option<u64> {
    let n = u64::try_from(sorted.len()).ok()?;
    if n == 0 {
        return None;
    }
    // rank = ceil(p/100 * n), at least 1: integer arithmetic, no rounding surprises.
    let rank = (p.min(100) * n).div_ceil(100).max(1);
    sorted.get(usize::try_from(rank - 1).ok()?).copied()
}

/// `clients` threads, each with its own keep-alive connection, sending `request` in a
/// loop until `duration` has passed. `request(client, id, n)` sends request `n` (1, 2, ...)
/// of client `id` and says which call it was for (0 when that does not matter), so the
/// 201s are counted per call.
fn run_load<F>(addr: &str, clients: usize, duration: Duration, request: F) -> Result<Load>
where
    F: Fn(&mut Client, usize, u64) -> (usize, std::result::Result<Message, String>) + Sync,
{
    let request = &request;
    let started = Instant::now();
    let deadline = started + duration;
    let results: Vec<std::result::Result<Load, String>> = thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|id| {
                scope.spawn(move || -> std::result::Result<Load, String> {
                    let mut client = Client::new(addr, REQUEST_TIMEOUT)?;
                    let mut load = Load::default();
                    let mut counter = 0;
                    while Instant::now() < deadline {
                        counter += 1;
                        let sent = Instant::now();
                        let (call, result) = request(&mut client, id, counter);
                        match result {
                            Ok(response) => {
                                let micros = sent.elapsed().as_micros();
                                load.latencies_us
                                    .push(u64::try_from(micros).unwrap_or(u64::MAX));
                                match response.status() {
                                    Some(201) => {
                                        load.ok += 1;
                                        load.created.add(call);
                                    }
                                    Some(200..=299) => load.ok += 1,
                                    _ => {
                                        load.non_2xx += 1;
                                        load.first_problem.get_or_insert_with(|| {
                                            format!(
                                                "`{}`: {}",
                                                response.start_line,
                                                clip(&String::from_utf8_lossy(&response.body))
                                            )
                                        });
                                    }
                                }
                            }
                            Err(e) => {
                                load.errors += 1;
                                load.first_problem.get_or_insert(e);
                                // Don't spin if the server has gone away.
                                thread::sleep(Duration::from_millis(10));
                            }
                        }
                    }
                    Ok(load)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err("a client thread panicked".to_string()))
            })
            .collect()
    });
    let mut total = Load::default();
    for result in results {
        total.merge(result?);
    }
    total.elapsed = started.elapsed();
    total.latencies_us.sort_unstable();
    Ok(total)
}

fn throughput(options: &Options, addr: &str, call_sids: &[String]) -> Result<(Vec<String>, bool)> {
    let duration = Duration::from_secs(options.seconds);
    let clients = options.clients;
    let calls = call_sids.len();
    if calls == 0 {
        return Err("no calls for the webhook turns".into());
    }
    println!(
        "\n== webhook throughput ({clients} clients, {calls} call{}, {} s per run, keep-alive HTTP/1.1) ==",
        if calls == 1 { "" } else { "s" },
        options.seconds
    );
    println!("  turns spread: {}", spread(clients, calls));
    println!(
        "  {:<28} {:>10} {:>9} {:>9} {:>8} {:>8} {:>7}",
        "", "req/s", "p50 ms", "p99 ms", "2xx", "non-2xx", "errors"
    );

    let health = run_load(addr, clients, duration, |client, _, _| {
        (0, client.send("GET", "/healthz", &[], None))
    })?;
    println!("{}", health.row("GET /healthz (baseline)"));

    let auth = format!("Bearer {WEBHOOK_SECRET}");
    let timestamp = json::quote(&rfc3339_utc(unix_now()));
    let sids: Vec<String> = call_sids.iter().map(|sid| json::quote(sid)).collect();
    let webhook = run_load(addr, clients, duration, |client, id, n| {
        let call = call_for(id, n, clients, calls);
        let Some(sid) = sids.get(call) else {
            return (call, Err(format!("no call number {call}")));
        };
        let speaker = if n % 2 == 0 { "user" } else { "agent" };
        let body = format!(
            r#"{{"call_sid":{sid},"speaker":"{speaker}","message":"bench turn from client {id}, number {n}","timestamp":{timestamp}}}"#
        );
        let sent = client.send(
            "POST",
            "/webhooks/elevenlabs/transcription",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            Some(&body),
        );
        (call, sent)
    })?;
    println!("{}", webhook.row("POST transcription webhook"));

    let rate_ratio = webhook.per_second() / health.per_second();
    let p50_ratio = webhook.ms(50) / health.ms(50);
    let p99_ratio = webhook.ms(99) / health.ms(99);
    println!(
        "  webhook / healthz: {rate_ratio:.3} x the requests/s; {p50_ratio:.1} x p50, {p99_ratio:.1} x p99 latency"
    );
    for (name, load) in [("healthz", &health), ("webhook", &webhook)] {
        if let Some(problem) = &load.first_problem {
            println!("  first {name} problem: {problem}");
        }
    }

    let checks = check_transcripts(addr, call_sids, &webhook.created);
    let verdict = transcripts_verdict(&checks);
    let transcript_ok = verdict.is_ok();
    let verdict = match verdict {
        Ok(ok) => format!("OK ({ok})"),
        Err(e) => format!("FAIL: {e}"),
    };
    println!("  transcript check: {verdict}");

    let created = webhook.created.total();
    Ok((
        vec![
            format!(
                "webhook ({calls} call{}): {:.1} req/s = {rate_ratio:.3} x GET /healthz ({:.1} req/s); \
                 p50 {:.2} ms vs {:.2} ms, p99 {:.2} ms vs {:.2} ms",
                if calls == 1 { "" } else { "s" },
                webhook.per_second(),
                health.per_second(),
                webhook.ms(50),
                health.ms(50),
                webhook.ms(99),
                health.ms(99)
            ),
            format!(
                "webhook responses: {} 2xx ({created} new turns over {calls} call{}), {} non-2xx, {} transport errors",
                webhook.ok,
                if calls == 1 { "" } else { "s" },
                webhook.non_2xx,
                webhook.errors
            ),
            format!("transcript: {verdict}"),
        ],
        transcript_ok,
    ))
}

/// Check every call's transcript against the 201s it got: one result per call, in order,
/// with its turn count or what is wrong (naming the call).
fn check_transcripts(
    addr: &str,
    call_sids: &[String],
    created: &PerCall,
) -> Vec<std::result::Result<u64, String>> {
    // One keep-alive client for all of them; GETs are safe to retry.
    let mut client = match Client::new(addr, REQUEST_TIMEOUT) {
        Ok(client) => client,
        Err(e) => return vec![Err(e)],
    };
    call_sids
        .iter()
        .enumerate()
        .map(|(call, sid)| {
            check_transcript(&mut client, sid, created.get(call))
                .map_err(|e| format!("call {call} ({sid}): {e}"))
        })
        .collect()
}

/// The checks of all calls in one line: `Ok` with what was verified when every call's
/// transcript is right, otherwise `Err` with how many calls failed and the first problems.
fn transcripts_verdict(
    checks: &[std::result::Result<u64, String>],
) -> std::result::Result<String, String> {
    const SHOWN: usize = 3;
    let failed: Vec<&String> = checks.iter().filter_map(|c| c.as_ref().err()).collect();
    if let Some(first) = failed.first() {
        if checks.len() == 1 {
            return Err((*first).clone());
        }
        let mut text = format!("{} of {} calls: ", failed.len(), checks.len());
        let shown: Vec<&str> = failed.iter().take(SHOWN).map(|s| s.as_str()).collect();
        text.push_str(&shown.join("; "));
        if failed.len() > SHOWN {
            text.push_str(&format!("; and {} more", failed.len() - SHOWN));
        }
        return Err(text);
    }
    let counts: Vec<u64> = checks
        .iter()
        .filter_map(|c| c.as_ref().ok().copied())
        .collect();
    let (Some(min), Some(max)) = (counts.iter().min(), counts.iter().max()) else {
        return Err("no calls were checked".to_string());
    };
    if let [n] = counts.as_slice() {
        return Ok(format!("{n} turns, sequence numbers exactly 1..={n}"));
    }
    Ok(format!(
        "{} calls, {} turns; each call's sequence numbers exactly 1..=k_c, k_c from {min} to {max}",
        counts.len(),
        counts.iter().sum::<u64>()
    ))
}

/// The stored turns are exactly 1..=created, all distinct: no gap, no duplicate, none lost.
fn check_transcript(
    client: &mut Client,
    call_sid: &str,
    created: u64,
) -> std::result::Result<u64, String> {
    let auth = format!("Bearer {API_TOKEN}");
    let response = client.send(
        "GET",
        &format!("/calls/{call_sid}/transcriptions"),
        &[("Authorization", &auth)],
        None,
    )?;
    let body = String::from_utf8_lossy(&response.body);
    if response.status() != Some(200) {
        return Err(format!("`{}`: {}", response.start_line, clip(&body)));
    }
    let doc = json::parse(&body)?;
    let turns = doc
        .get("transcriptions")
        .and_then(Json::as_array)
        .ok_or("no `transcriptions` array")?;
    sequence_problem(turns, created).map_or(Ok(created), Err)
}

/// What is wrong with `turns` if they are not sequence numbers 1..=expected with distinct
/// messages, in order.
fn sequence_problem(turns: &[Json], expected: u64) -> Option<String> {
    let mut messages = std::collections::HashSet::new();
    for (i, turn) in (1u64..).zip(turns) {
        let seq = turn.get("sequence_number").and_then(Json::as_f64);
        if seq != Some(i as f64) {
            return Some(format!("turn {i} has sequence_number {seq:?}"));
        }
        let message = turn
            .get("message_text")
            .and_then(Json::as_str)
            .unwrap_or("");
        if !messages.insert(message) {
            return Some(format!("message `{message}` is stored twice"));
        }
    }
    let stored = turns.len();
    if u64::try_from(stored).ok() != Some(expected) {
        return Some(format!(
            "{stored} turns stored but {expected} deliveries were answered 201"
        ));
    }
    None
}

/// The start of a response body, enough to say what went wrong.
fn clip(text: &str) -> String {
    const MAX: usize = 300;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// HTTP/1.1 messages and a keep-alive client

/// One HTTP/1.1 request or response as read off a connection.
#[derive(Debug, PartialEq)]
struct Message {
    start_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The body ran to the end of the connection (no length given), which is then done.
    until_eof: bool,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Request,
    Response,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The status code of a response.
    fn status(&self) -> Option<u16> {
        let mut parts = self.start_line.split_whitespace();
        parts
            .next()
            .filter(|v| v.starts_with("HTTP/"))
            .and_then(|_| parts.next())
            .and_then(|code| code.parse().ok())
    }

    /// Must the connection close after this message? HTTP/1.1 keeps it open unless told
    /// otherwise; HTTP/1.0 closes unless told otherwise.
    fn wants_close(&self) -> bool {
        let connection = self.header("connection").map(str::to_ascii_lowercase);
        let has = |token: &str| {
            connection
                .as_deref()
                .is_some_and(|v| v.split(',').any(|t| t.trim() == token))
        };
        self.until_eof
            || has("close")
            || (self.start_line.contains("HTTP/1.0") && !has("keep-alive"))
    }
}

/// One line without its line ending; 0 bytes read means the peer closed the connection.
fn read_line(reader: &mut impl BufRead, line: &mut String) -> io::Result<usize> {
    line.clear();
    let n = reader.take(MAX_LINE).read_line(line)?;
    if n > 0 && !line.ends_with('\n') {
        let what = if u64::try_from(n).is_ok_and(|n| n >= MAX_LINE) {
            "header line too long"
        } else {
            "connection closed mid-line"
        };
        return Err(io::Error::new(io::ErrorKind::InvalidData, what));
    }
    let trimmed = line.trim_end_matches(['\r', '\n']).len();
    line.truncate(trimmed);
    Ok(n)
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Read one message; `Ok(None)` when the peer closed the connection before sending any
/// (an idle keep-alive connection ending normally).
fn read_message(reader: &mut impl BufRead, kind: Kind) -> io::Result<Option<Message>> {
    let mut line = String::new();
    // Empty lines before a request line are to be ignored (RFC 9112, section 2.2).
    loop {
        if read_line(reader, &mut line)? == 0 {
            return Ok(None);
        }
        if !line.is_empty() {
            break;
        }
    }
    let start_line = line.clone();
    let mut headers = Vec::new();
    loop {
        if read_line(reader, &mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in the headers",
            ));
        }
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("bad header line `{line}`")))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
        if headers.len() > MAX_HEADERS {
            return Err(invalid("too many headers"));
        }
    }
    let mut message = Message {
        start_line,
        headers,
        body: Vec::new(),
        until_eof: false,
    };
    if kind == Kind::Response {
        let status = message
            .status()
            .ok_or_else(|| invalid(format!("bad status line `{}`", message.start_line)))?;
        // These never have a body, whatever the headers say.
        if status < 200 || status == 204 || status == 304 {
            return Ok(Some(message));
        }
    }
    let chunked = message
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        message.body = read_chunked(reader)?;
    } else if let Some(length) = message.header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| invalid(format!("bad Content-Length `{length}`")))?;
        if length > MAX_BODY {
            return Err(invalid(format!("body of {length} bytes is too large")));
        }
        message.body = vec![0; length];
        reader.read_exact(&mut message.body)?;
    } else if kind == Kind::Response {
        // No length: the body is everything until the server closes the connection.
        reader
            .take(u64::try_from(MAX_BODY).unwrap_or(u64::MAX))
            .read_to_end(&mut message.body)?;
        message.until_eof = true;
    }
    Ok(Some(message))
}

fn read_chunked(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        if read_line(reader, &mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "truncated chunk",
            ));
        }
        // Chunk extensions (";name=value") may follow the size.
        let size_hex = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| invalid(format!("bad chunk size `{size_hex}`")))?;
        if size == 0 {
            // Trailer fields, if any, up to the empty line.
            loop {
                if read_line(reader, &mut line)? == 0 || line.is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(invalid("chunked body is too large"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        read_line(reader, &mut line)?;
        if !line.is_empty() {
            return Err(invalid("chunk not followed by CRLF"));
        }
    }
}

/// A request as sent on the wire; keep-alive is HTTP/1.1's default, so no Connection header.
fn format_request(
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> String {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    } else {
        request.push_str("\r\n");
    }
    request
}

/// An HTTP/1.1 client that keeps one connection open across requests.
struct Client {
    addr: SocketAddr,
    host: String,
    timeout: Duration,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    fn new(addr: &str, timeout: Duration) -> std::result::Result<Self, String> {
        let socket = addr
            .to_socket_addrs()
            .map_err(|e| format!("resolving {addr}: {e}"))?
            .next()
            .ok_or_else(|| format!("{addr} resolves to no address"))?;
        Ok(Client {
            addr: socket,
            host: addr.to_string(),
            timeout,
            conn: None,
        })
    }

    fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> std::result::Result<Message, String> {
        let request = format_request(method, &self.host, path, headers, body);
        let reused = self.conn.is_some();
        match self.exchange(request.as_bytes()) {
            Ok(response) => Ok(response),
            // The server may close an idle keep-alive connection just as we reuse it; try
            // once more on a fresh one. Safe for what bench sends again: GETs and webhook
            // turns, whose repeat stores nothing (batches always use a fresh client).
            Err(_) if reused => self.exchange(request.as_bytes()),
            Err(e) => Err(e),
        }
        .map_err(|e| format!("{method} {path}: {e}"))
    }

    fn exchange(&mut self, request: &[u8]) -> std::result::Result<Message, String> {
        let result = self.try_exchange(request);
        // A failed or finished connection is not reused; the next request reconnects.
        if result.as_ref().map_or(true, Message::wants_close) {
            self.conn = None;
        }
        result
    }

    fn try_exchange(&mut self, request: &[u8]) -> std::result::Result<Message, String> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let stream = TcpStream::connect_timeout(&self.addr, self.timeout)
                    .map_err(|e| format!("connecting to {}: {e}", self.addr))?;
                // A timeout so a hung server fails the run instead of blocking it forever.
                let _ = stream.set_read_timeout(Some(self.timeout));
                let _ = stream.set_write_timeout(Some(self.timeout));
                // Requests are written whole; Nagle would only add latency.
                let _ = stream.set_nodelay(true);
                self.conn.insert(BufReader::new(stream))
            }
        };
        conn.get_mut()
            .write_all(request)
            .map_err(|e| format!("sending: {e}"))?;
        match read_message(conn, Kind::Response) {
            Ok(Some(response)) => Ok(response),
            Ok(None) => Err("connection closed before the response".to_string()),
            Err(e) => Err(format!("reading the response: {e}")),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The fake ElevenLabs

struct FakeShared {
    delay: Duration,
    stop: AtomicBool,
    /// Outbound calls answered so far; also numbers the conversation ids.
    calls: AtomicU64,
    in_flight: AtomicUsize,
    /// Most outbound calls in flight at once (reset between measurements).
    peak: AtomicUsize,
    /// Makes conversation ids unique across runs, not only within one.
    run_id: String,
}

/// `POST /v1/convai/twilio/outbound-call` answered after a delay, on 127.0.0.1, with a
/// thread per connection and keep-alive. Stopped when dropped.
struct FakeElevenLabs {
    addr: SocketAddr,
    shared: Arc<FakeShared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FakeElevenLabs {
    fn start(delay: Duration) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .context(|| "starting the fake ElevenLabs".to_string())?;
        let addr = listener
            .local_addr()
            .context(|| "starting the fake ElevenLabs".to_string())?;
        let shared = Arc::new(FakeShared {
            delay,
            stop: AtomicBool::new(false),
            calls: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            run_id: format!("{}_{}", unix_now(), std::process::id()),
        });
        let accept_shared = Arc::clone(&shared);
        let acceptor = thread::spawn(move || {
            for stream in listener.incoming() {
                if accept_shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let conn_shared = Arc::clone(&accept_shared);
                // Detached: it ends when the client closes the connection or idles out.
                thread::spawn(move || serve_connection(stream, &conn_shared));
            }
        });
        Ok(FakeElevenLabs {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }
}

impl Drop for FakeElevenLabs {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // accept() blocks; a connection of our own wakes it up to see the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn serve_connection(stream: TcpStream, shared: &FakeShared) {
    let _ = stream.set_read_timeout(Some(FAKE_IDLE_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    // A malformed request or a closed connection ends it; reqwest opens a new one.
    while let Ok(Some(request)) = read_message(&mut reader, Kind::Request) {
        let (status, body) = answer(&request, shared);
        let close = request.wants_close() || shared.stop.load(Ordering::SeqCst);
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{body}",
            body.len(),
            if close { "close" } else { "keep-alive" }
        );
        if writer.write_all(response.as_bytes()).is_err() || close {
            return;
        }
    }
}

fn answer(request: &Message, shared: &FakeShared) -> (&'static str, String) {
    let mut parts = request.start_line.split_whitespace();
    let (method, path) = (parts.next(), parts.next());
    if method != Some("POST") || path != Some(OUTBOUND_CALL_PATH) {
        return ("404 Not Found", r#"{"detail":"Not Found"}"#.to_string());
    }
    if request.header("xi-api-key").is_none_or(str::is_empty) {
        return (
            "401 Unauthorized",
            r#"{"detail":{"status":"invalid_api_key","message":"missing xi-api-key"}}"#.to_string(),
        );
    }
    let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    shared.peak.fetch_max(now, Ordering::SeqCst);
    thread::sleep(shared.delay);
    shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    let n = shared.calls.fetch_add(1, Ordering::SeqCst) + 1;
    (
        "200 OK",
        format!(
            r#"{{"success":true,"message":"ok","conversation_id":"conv_bench_{}_{n}","callSid":"CA{n:032x}"}}"#,
            shared.run_id
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(raw: &[u8], kind: Kind) -> io::Result<Option<Message>> {
        read_message(&mut BufReader::new(raw), kind)
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn formats_requests_with_and_without_a_body() {
        assert_eq!(
            format_request("GET", "127.0.0.1:8080", "/healthz", &[], None),
            "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
        );
        assert_eq!(
            format_request(
                "POST",
                "h:1",
                "/x",
                &[("Authorization", "Bearer t")],
                Some("{}")
            ),
            "POST /x HTTP/1.1\r\nHost: h:1\r\nAuthorization: Bearer t\r\nContent-Length: 2\r\n\r\n{}"
        );
    }

    #[test]
    fn reads_back_to_back_responses_on_one_connection() {
        let raw = b"HTTP/1.1 201 Created\r\ncontent-length: 11\r\n\r\n{\"ok\":true}\
                    HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
        let mut reader = BufReader::new(&raw[..]);
        let first = read_message(&mut reader, Kind::Response);
        let Ok(Some(first)) = first else {
            panic!("{first:?}");
        };
        assert_eq!(first.status(), Some(201));
        assert_eq!(first.body, b"{\"ok\":true}");
        assert!(!first.wants_close());
        let second = read_message(&mut reader, Kind::Response);
        let Ok(Some(second)) = second else {
            panic!("{second:?}");
        };
        assert_eq!(second.status(), Some(200));
        assert_eq!(second.body, b"ok");
        assert!(second.wants_close());
        // Then the peer's close: no message, no error.
        assert!(matches!(
            read_message(&mut reader, Kind::Response),
            Ok(None)
        ));
    }

    #[test]
    fn reads_chunked_and_unframed_responses() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nWiki\r\n5\r\npedia\r\n0\r\nT: v\r\n\r\n";
        let chunked = read(raw, Kind::Response);
        assert_eq!(
            chunked.ok().flatten().map(|m| m.body),
            Some(b"Wikipedia".to_vec())
        );

        let unframed = read(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", Kind::Response);
        let Ok(Some(unframed)) = unframed else {
            panic!("{unframed:?}");
        };
        assert_eq!(unframed.body, b"until the end");
        assert!(unframed.wants_close());

        let no_body = read(b"HTTP/1.1 204 No Content\r\n\r\n", Kind::Response);
        assert_eq!(no_body.ok().flatten().map(|m| m.body), Some(vec![]));
    }

    #[test]
    fn reads_requests_for_the_fake() {
        let raw = b"\r\nPOST /v1/convai/twilio/outbound-call HTTP/1.1\r\nxi-api-key: k\r\nContent-Length: 2\r\n\r\n{}";
        let request = read(raw, Kind::Request);
        let Ok(Some(request)) = request else {
            panic!("{request:?}");
        };
        assert_eq!(
            request.start_line,
            "POST /v1/convai/twilio/outbound-call HTTP/1.1"
        );
        assert_eq!(request.header("XI-API-KEY"), Some("k"));
        assert_eq!(request.body, b"{}");
        assert!(!request.wants_close());
        // A request without a length has no body; HTTP/1.0 closes by default.
        let get = read(b"GET / HTTP/1.0\r\n\r\n", Kind::Request);
        let Ok(Some(get)) = get else {
            panic!("{get:?}");
        };
        assert!(get.body.is_empty());
        assert!(get.wants_close());
    }

    #[test]
    fn rejects_malformed_messages() {
        assert!(read(b"HTTP/1.1 abc\r\n\r\n", Kind::Response).is_err());
        assert!(read(b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", Kind::Response).is_err());
        assert!(
            read(
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                Kind::Response
            )
            .is_err()
        );
        assert!(
            read(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
                Kind::Response
            )
            .is_err()
        );
        assert!(read(b"HTTP/1.1 200 OK\r\nContent-Le", Kind::Response).is_err());
        assert!(
            read(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                Kind::Response
            )
            .is_err()
        );
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(20_000));
        assert!(read(long.as_bytes(), Kind::Request).is_err());
    }

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[7], 0), Some(7));
        assert_eq!(percentile(&[7], 99), Some(7));
        let hundred: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&hundred, 50), Some(50));
        assert_eq!(percentile(&hundred, 99), Some(99));
        assert_eq!(percentile(&hundred, 100), Some(100));
        assert_eq!(percentile(&[1, 2, 3, 4], 50), Some(2));
        assert_eq!(percentile(&[1, 2, 3, 4], 51), Some(3));
        assert_eq!(percentile(&[10, 20, 30], 99), Some(30));
    }

    #[test]
    fn checks_transcript_sequences() {
        let turns = |doc: &str| match json::parse(doc) {
            Ok(Json::Array(items)) => items,
            other => panic!("{other:?}"),
        };
        let good = turns(
            r#"[{"sequence_number":1,"message_text":"a"},{"sequence_number":2,"message_text":"b"}]"#,
        );
        assert_eq!(sequence_problem(&good, 2), None);
        assert!(sequence_problem(&good, 3).is_some());
        let gap = turns(
            r#"[{"sequence_number":1,"message_text":"a"},{"sequence_number":3,"message_text":"b"}]"#,
        );
        assert!(sequence_problem(&gap, 2).is_some());
        let twice = turns(
            r#"[{"sequence_number":1,"message_text":"a"},{"sequence_number":2,"message_text":"a"}]"#,
        );
        assert!(sequence_problem(&twice, 2).is_some());
    }

    #[test]
    fn parses_options() {
        assert_eq!(parse_options(&[]).ok(), Some(Options::default()));
        let parsed = parse_options(&args(&[
            "--drivers",
            "20",
            "--delay-ms=50",
            "--call-concurrency",
            "4",
            "--seconds",
            "3",
            "--clients=2",
            "--calls",
            "16",
        ]));
        assert_eq!(
            parsed.ok(),
            Some(Options {
                drivers: 20,
                delay_ms: 50,
                call_concurrency: Some(4),
                seconds: 3,
                clients: 2,
                calls: 16,
            })
        );
        assert_eq!(
            parse_options(&args(&["--calls=1024"]))
                .ok()
                .map(|o| o.calls),
            Some(1024)
        );
        assert!(parse_options(&args(&["--calls", "0"])).is_err());
        assert!(parse_options(&args(&["--calls", "1025"])).is_err());
        assert!(parse_options(&args(&["--drivers", "0"])).is_err());
        assert!(parse_options(&args(&["--seconds"])).is_err());
        assert!(parse_options(&args(&["--nope", "1"])).is_err());
        assert!(parse_options(&args(&["--delay-ms", "99999"])).is_err());
    }

    #[test]
    fn counts_201s_per_call() {
        let mut a = PerCall::default();
        assert_eq!((a.get(0), a.total()), (0, 0));
        a.add(2);
        a.add(0);
        a.add(2);
        assert_eq!(a, PerCall(vec![1, 0, 2]));
        let mut b = PerCall::default();
        b.add(4);
        b.add(0);
        a.merge(&b);
        assert_eq!(a, PerCall(vec![2, 0, 2, 0, 1]));
        assert_eq!((a.get(0), a.get(4), a.get(99), a.total()), (2, 1, 0, 5));
        // Merging a shorter one keeps the longer's tail.
        let mut c = PerCall(vec![1]);
        c.merge(&a);
        b.merge(&PerCall(vec![7]));
        assert_eq!(c, PerCall(vec![3, 0, 2, 0, 1]));
        assert_eq!(b, PerCall(vec![8, 0, 0, 0, 1]));
    }

    #[test]
    fn spreads_clients_over_calls() {
        // One call: everything goes to it.
        assert!((0..16).all(|client| (1..50).all(|n| call_for(client, n, 16, 1) == 0)));
        // No more calls than clients: client i sticks to call i % calls.
        for (clients, calls) in [(16, 16), (16, 5), (3, 3)] {
            for client in 0..clients {
                assert!((1..20).all(|n| call_for(client, n, clients, calls) == client % calls));
            }
        }
        // More calls than clients: each client cycles through its own calls, and together
        // they cover every call exactly once per cycle.
        for (clients, calls) in [(3, 8), (16, 1024), (1, 5), (4, 5)] {
            let mut owner = vec![None; calls];
            for client in 0..clients {
                let owned = (calls - client).div_ceil(clients);
                let first: Vec<usize> = (1..=owned as u64)
                    .map(|n| call_for(client, n, clients, calls))
                    .collect();
                let again: Vec<usize> = (owned as u64 + 1..=2 * owned as u64)
                    .map(|n| call_for(client, n, clients, calls))
                    .collect();
                assert_eq!(first, again, "client {client} repeats its cycle");
                for call in first {
                    assert!(call < calls);
                    assert_eq!(call % clients, client);
                    assert_eq!(owner[call].replace(client), None, "call {call} owned twice");
                }
            }
            assert!(
                owner.iter().all(Option::is_some),
                "{clients} clients, {calls} calls"
            );
        }
        assert_eq!(spread(16, 1), "all on one call");
        assert_eq!(spread(16, 4), "client i posts to call i % 4");
        assert!(spread(16, 64).contains("i+16, i+32"));
    }

    #[test]
    fn sums_up_the_transcript_checks() {
        assert_eq!(
            transcripts_verdict(&[Ok(5)]),
            Ok("5 turns, sequence numbers exactly 1..=5".to_string())
        );
        let ok = transcripts_verdict(&[Ok(5), Ok(0), Ok(7)]);
        assert_eq!(
            ok,
            Ok(
                "3 calls, 12 turns; each call's sequence numbers exactly 1..=k_c, k_c from 0 to 7"
                    .to_string()
            )
        );
        assert_eq!(transcripts_verdict(&[Err("gap".into())]), Err("gap".into()));
        let failed = transcripts_verdict(&[
            Ok(1),
            Err("a".into()),
            Err("b".into()),
            Ok(2),
            Err("c".into()),
            Err("d".into()),
        ]);
        assert_eq!(failed, Err("4 of 6 calls: a; b; c; and 1 more".to_string()));
        assert!(transcripts_verdict(&[]).is_err());
    }

    #[test]
    fn batch_bodies_have_distinct_drivers_and_phones() {
        let body = batch_body("123", &[1001, 1002]);
        let Ok(doc) = json::parse(&body) else {
            panic!("{body}");
        };
        let drivers = doc
            .get("drivers")
            .and_then(Json::as_array)
            .unwrap_or_default();
        let phones: Vec<_> = drivers
            .iter()
            .filter_map(|d| d.get("phoneNumber").and_then(Json::as_str))
            .collect();
        assert_eq!(phones, ["+15550001001", "+15550001002"]);
        assert_eq!(doc.get("timestamp").and_then(Json::as_str), Some("123"));
    }

    /// The client against the fake: keep-alive reuse, the outbound-call answer, 404s.
    #[test]
    fn client_and_fake_talk_keep_alive() {
        let Ok(fake) = FakeElevenLabs::start(Duration::ZERO) else {
            return; // no loopback networking in this sandbox; the parser tests cover the rest
        };
        let Ok(mut client) = Client::new(&fake.addr.to_string(), REQUEST_TIMEOUT) else {
            panic!("client");
        };
        for n in 1..=3u64 {
            let response = client.send(
                "POST",
                OUTBOUND_CALL_PATH,
                &[("xi-api-key", "k")],
                Some("{}"),
            );
            let Ok(response) = response else {
                panic!("{response:?}");
            };
            assert_eq!(response.status(), Some(200));
            let body = String::from_utf8_lossy(&response.body).into_owned();
            assert!(body.contains(&format!("_{n}\"")), "{body}");
            assert!(client.conn.is_some(), "the connection is kept open");
        }
        let missing = client
            .send("GET", "/nope", &[], None)
            .ok()
            .and_then(|m| m.status());
        assert_eq!(missing, Some(404));
        let unauthorized = client
            .send("POST", OUTBOUND_CALL_PATH, &[], Some("{}"))
            .ok()
            .and_then(|m| m.status());
        assert_eq!(unauthorized, Some(401));
        assert_eq!(fake.shared.calls.load(Ordering::SeqCst), 3);
        assert_eq!(fake.shared.peak.load(Ordering::SeqCst), 1);
    }
}
