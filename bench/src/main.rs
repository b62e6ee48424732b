//! `calls-bench`, run by `cargo xtask bench`: the transcription webhook of a release
//! calls-server measured against PostgreSQL's own floor in one run, on a durable database.
//!
//! Every round runs, on the same database and at the same concurrency: pgbench with a
//! one-row prepared INSERT (the floor) and with the service's append transaction, the
//! webhook in a closed loop (turns spread over `--calls` calls, then all on one call), the
//! webhook at a fixed rate, `GET /healthz` (the HTTP ceiling), and batch placement against
//! a fake ElevenLabs. The table shows the median of the rounds, with ratios against the
//! same-run baselines. Every transcript is checked afterwards; any error fails the command.

mod batch;
mod cpu;
mod dialer;
mod drill;
mod fake;
mod live;
mod load;
mod pgbench;
mod report;
mod server;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;

use batch::Batch;
use load::{Load, Workload};
use pgbench::{Database, Pgbench, Script};
use report::Table;
use server::Server;

/// Turn ids of the webhook calls start here, clear of the batch-placement drivers.
const WEBHOOK_FIRST_DRIVER: u32 = 1_000_001;
/// The server's own default, printed when `--call-concurrency` is not given.
const SERVER_DEFAULT_CONCURRENCY: u32 = 8;

/// The webhook and batch placement of a release calls-server against pgbench on a durable
/// PostgreSQL, median of several rounds, printed as one table.
#[derive(Parser, Debug, Clone)]
#[command(name = "calls-bench", bin_name = "cargo xtask bench")]
pub struct Options {
    /// A durable PostgreSQL (fsync and synchronous_commit on); `cargo xtask bench` starts one
    #[arg(long, env = "BENCH_DATABASE_URL")]
    database_url: String,
    /// The release calls-server binary (`cargo xtask bench` builds it)
    #[arg(long)]
    server_bin: PathBuf,
    /// Directory of pgbench and psql (default: PATH)
    #[arg(long)]
    pg_bin: Option<PathBuf>,
    /// A short run: one round, 3 s per measurement, 5 s at the fixed rate, 20 drivers
    #[arg(long)]
    quick: bool,
    /// Rounds; the table shows each figure's median
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=9))]
    rounds: u32,
    /// Seconds of each closed-loop and pgbench measurement
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: u64,
    /// Concurrent connections of pgbench and of the HTTP client
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=150))]
    clients: u32,
    /// Calls the turns are spread over
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    calls: u32,
    /// Turns per second of the fixed-rate (open-loop) run
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    rate: u32,
    /// Seconds of the fixed-rate run
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    rate_seconds: u64,
    /// Drivers in the large batch
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    drivers: u32,
    /// Answer delay of the fake ElevenLabs, in ms
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    delay_ms: u64,
    /// CALL_CONCURRENCY of the server (default: the server's own)
    #[arg(long)]
    call_concurrency: Option<u32>,
    /// Drivers in the `POST /batches` batch the dialer places (also with --quick)
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    batch_drivers: u32,
    /// Seconds from the dialer's first outbound call over which its rate is measured
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    dialer_seconds: u64,
    /// Open SSE live pages (`/console/calls/{sid}/events`) during the second webhook row
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1800))]
    live_pages: u32,
}

impl Options {
    fn effective(mut self) -> Self {
        if self.quick {
            self.rounds = 1;
            self.seconds = 3;
            self.rate_seconds = 5;
            self.drivers = self.drivers.min(20);
            self.dialer_seconds = self.dialer_seconds.min(3);
            self.live_pages = self.live_pages.min(100);
        }
        self
    }

    fn duration(&self) -> Duration {
        Duration::from_secs(self.seconds)
    }

    fn dialer_window(&self) -> Duration {
        Duration::from_secs(self.dialer_seconds)
    }

    /// Calls each round places for the webhook rows: spread, live pages', one, fixed rate.
    fn calls_per_round(&self) -> u32 {
        3 * self.calls + 1
    }
}

fn main() -> std::process::ExitCode {
    // `calls-bench drill …` runs the failure drills (`cargo xtask drill`); anything else
    // is the bench, whose options stay as they were.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "drill") {
        args.remove(1);
        return drill::main(drill::Options::parse_from(args));
    }
    let options = Options::parse_from(args).effective();
    run_to_exit("bench", bench(options))
}

/// Runs `work` on a multi-thread runtime; on an error prints `<name>: FAILED: …` and exits 1.
pub fn run_to_exit(name: &str, work: impl Future<Output = Result<()>>) -> std::process::ExitCode {
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
        .and_then(|rt| rt.block_on(work));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: FAILED: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn bench(options: Options) -> Result<()> {
    let db = Database::new(&options)?;
    let settings = db.durability().await?;
    let schema = format!("bench_{}", time::OffsetDateTime::now_utc().unix_timestamp());
    let db = db.with_schema(&schema);
    eprintln!("bench: schema {schema}; {}", settings.summary());
    server::migrate(&options.server_bin, &options.database_url, &schema).await?;
    let result = run(&options, &db, &settings).await;
    // The schema holds only bench data; it goes whether or not the run succeeded.
    match db.drop_schema().await {
        Ok(()) => eprintln!("bench: schema {schema} dropped"),
        Err(e) => eprintln!("bench: schema {schema} left in place: {e:#}"),
    }
    result
}

async fn run(options: &Options, db: &Database, settings: &pgbench::Settings) -> Result<()> {
    let meter = cpu::Meter::new(settings.postmaster);
    let load_before = cpu::load_average();
    let pgbench = Pgbench::prepare(db, options.calls, options.rounds, meter).await?;
    let fake = fake::FakeElevenLabs::start(Duration::from_millis(options.delay_ms)).await;
    let mut server = Server::start(options, db.schema(), &fake.uri()).await?;
    let outcome = rounds(options, &pgbench, &server, &fake, meter).await;
    let peak_rss = server.peak_rss_kib();
    server.stop().await;
    let (mut table, mut problems) = outcome?;

    let placed = fake.placed();
    let expected = u64::from(options.rounds)
        * (u64::from(options.calls_per_round()) + 1 + u64::from(options.drivers));
    // Fresh servers for POST /batches and the dialer: the peak RSS is theirs alone.
    for instances in [1, 2] {
        let first = dialer::FIRST_DRIVER + (instances - 1) * options.batch_drivers;
        eprintln!("bench: POST /batches and the dialer, {instances} instance(s)");
        table.add_dialing(dialer::measure(options, db.schema(), instances, first).await?);
    }
    if placed != expected {
        problems.push(format!(
            "the fake ElevenLabs got {placed} outbound-call requests, expected {expected}"
        ));
    }
    let notes = [
        format!(
            "machine: {}; the service, PostgreSQL and the load generator share it; load \
             average {load_before} before the run, {} after (the run's own processes count)",
            cpu::machine(),
            cpu::load_average()
        ),
        format!("database: {}", settings.summary()),
        format!(
            "service: release calls-server, DATABASE_POOL_SIZE 10 (its default), CALL_CONCURRENCY {}; \
             peak RSS {}",
            options
                .call_concurrency
                .unwrap_or(SERVER_DEFAULT_CONCURRENCY),
            peak_rss.map_or("unknown".to_string(), |kib| format!(
                "{:.1} MiB",
                kib as f64 / 1024.0
            ))
        ),
        format!(
            "load: {} connections for pgbench (-M prepared -j 2) and for the HTTP client (reqwest, \
             keep-alive); \"spread\" = over {} calls; closed loops of {} s; fixed rate {}/s for {} s, \
             latency from each request's scheduled time; median of {} round{}",
            options.clients,
            options.calls,
            options.seconds,
            options.rate,
            options.rate_seconds,
            options.rounds,
            if options.rounds == 1 { "" } else { "s" }
        ),
        format!(
            "batch placement: fake ElevenLabs (wiremock) answering after {} ms; {placed} outbound calls (expected {expected})",
            options.delay_ms
        ),
        format!(
            "POST /batches and the dialer: fresh servers with DIALER_POLL_MS {}, the batch's \
             window \"any\" and no re-dial, a fake ElevenLabs of their own answering after {} ms; \
             rate = outbound calls within {} s of the first one; the batch is cancelled after",
            dialer::DIALER_POLL_MS,
            options.delay_ms,
            options.dialer_seconds
        ),
    ];
    table.print(&notes);
    if !problems.is_empty() {
        for problem in &problems {
            eprintln!("bench: {problem}");
        }
        bail!("{} problem(s), listed above", problems.len());
    }
    println!(
        "- checked: every transcript is numbered 1..n with no gap or duplicate, and every 201 matches a stored row"
    );
    Ok(())
}

/// What the measurements of a run share, and what they found.
struct Run<'a> {
    options: &'a Options,
    server: &'a Server,
    client: reqwest::Client,
    meter: cpu::Meter,
    table: Table,
    problems: Vec<String>,
}

impl Run<'_> {
    fn pgbench(&mut self, row: &'static str, run: pgbench::Run) {
        self.add(row, run.measure, run.problem);
    }

    /// A row's measurement, with the service's peak memory so far.
    fn add(&mut self, row: &'static str, mut measure: report::Measure, problem: Option<String>) {
        measure.peak_rss_mib = self.server.peak_rss_kib().map(|kib| kib as f64 / 1024.0);
        self.table.add(row, measure, &mut self.problems, problem);
    }

    /// An HTTP measurement (closed loop, or at `rate`); for turns, every transcript checked.
    async fn http(&mut self, row: &'static str, workload: Workload<'_>, rate: Option<u32>) {
        let (server, options, meter) = (self.server, self.options, self.meter);
        let load = measure(server, &self.client, &workload, options, rate, meter).await;
        self.add(row, load.measure(), load.problem(row));
        if let Workload::Webhook { call_sids, .. } = workload {
            let checked =
                load::check_transcripts(&self.client, server.base_url(), call_sids, &load);
            self.problems.extend(checked.await);
        }
    }
}

/// All rounds; the table of medians and every problem seen (errors, bad transcripts).
async fn rounds(
    options: &Options,
    pgbench: &Pgbench,
    server: &Server,
    fake: &fake::FakeElevenLabs,
    meter: cpu::Meter,
) -> Result<(Table, Vec<String>)> {
    let mut run = Run {
        options,
        server,
        client: load::client(options.clients)?,
        meter,
        table: Table::default(),
        problems: Vec::new(),
    };
    let (clients, duration) = (options.clients, options.duration());
    let per_round = options.calls_per_round();
    run.table.live_pages = options.live_pages;
    for round in 1..=options.rounds {
        eprintln!("bench: round {round} of {}", options.rounds);
        // The calls of this round's turns: spread, one, and the fixed-rate run's.
        let batch = Batch::new(WEBHOOK_FIRST_DRIVER + (round - 1) * per_round, per_round);
        batch
            .post(
                &run.client,
                server.base_url(),
                Duration::from_millis(options.delay_ms),
            )
            .await
            .context("placing the calls the webhook turns go to")?;
        let (spread, rest) = batch.call_sids.split_at(options.calls as usize);
        let (watched, rest) = rest.split_at(options.calls as usize);
        let (one, fixed) = rest.split_at(1);

        let pgbench_run = |script| pgbench.measure(script, round, clients, duration);
        run.pgbench(report::FLOOR, pgbench_run(Script::Floor).await?);
        run.pgbench(report::APPEND, pgbench_run(Script::Append).await?);
        run.http(report::WEBHOOK, Workload::webhook(spread, round), None)
            .await;
        // The same load on calls of its own, each watched by live pages.
        let pages = live::LivePages::open(server.base_url(), watched, options.live_pages).await?;
        run.http(
            report::WEBHOOK_LIVE,
            Workload::webhook(watched, round),
            None,
        )
        .await;
        let (turn_events, problem) = pages.close().await;
        run.problems.extend(problem);
        run.table.live_turn_events += turn_events;
        run.pgbench(
            report::APPEND_ONE,
            pgbench_run(Script::AppendOneCall).await?,
        );
        run.http(report::WEBHOOK_ONE, Workload::webhook(one, round), None)
            .await;
        run.http(
            report::FIXED_RATE,
            Workload::webhook(fixed, round),
            Some(options.rate),
        )
        .await;

        run.http(report::HEALTHZ, Workload::Healthz, None).await;
        let placement = batch::placement(&run.client, server.base_url(), fake, options).await?;
        run.table.add_placement(placement);
    }
    Ok((run.table, run.problems))
}

/// One HTTP measurement, closed loop or at a fixed rate, with the CPU each side spent.
async fn measure(
    server: &Server,
    client: &reqwest::Client,
    workload: &Workload<'_>,
    options: &Options,
    rate: Option<u32>,
    meter: cpu::Meter,
) -> Load {
    let before = meter.sample(Some(server.pid()));
    let started = Instant::now();
    let target = load::Target {
        client,
        base_url: server.base_url(),
        workload,
    };
    let mut load = match rate {
        None => {
            let mode = load::Mode::Closed {
                clients: options.clients,
            };
            target.run(mode, options.duration()).await
        }
        Some(rate) => {
            let duration = Duration::from_secs(options.rate_seconds);
            target.run(load::Mode::Rate(rate), duration).await
        }
    };
    load.elapsed = started.elapsed();
    load.cpu = meter
        .sample(Some(server.pid()))
        .per_op_since(&before, load.completed());
    load
}
