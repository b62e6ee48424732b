//! `calls-bench drill`, run by `cargo xtask drill`: failures made on purpose against a
//! release calls-server on a durable PostgreSQL, each bounded in time, with one table of
//! what the clients saw and what the database holds afterwards. A lost (acknowledged but
//! not stored) or duplicated turn, or a transcript not numbered 1..n, fails the command.

mod deliver;
mod locks;
mod pg;
mod slow;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;

use crate::batch::Batch;
use crate::fake::FakeElevenLabs;
use crate::pgbench::Database;
use crate::server::{self, Launch, Server};
use deliver::{Check, Delivery, ReadyWatch};

/// Driver ids of the drills' calls start here, clear of the bench's.
const FIRST_DRIVER: u32 = 2_000_001;

/// Failure drills on a durable PostgreSQL, printed as one table.
#[derive(Parser, Debug, Clone)]
#[command(name = "calls-bench drill", bin_name = "cargo xtask drill")]
pub struct Options {
    /// A durable PostgreSQL that the drill may restart; `cargo xtask drill` starts its own
    #[arg(long, env = "DRILL_DATABASE_URL")]
    database_url: String,
    /// The release calls-server binary (`cargo xtask drill` builds it)
    #[arg(long)]
    server_bin: PathBuf,
    /// Directory of psql and pg_ctl (default: PATH)
    #[arg(long)]
    pg_bin: Option<PathBuf>,
    /// Run only these drills (1..=5), e.g. `--only 2 --only 3`
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=5))]
    only: Vec<u8>,
    /// Seconds of load in each drill
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(3..=120))]
    seconds: u64,
    /// Concurrent senders of turns
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=128))]
    senders: u32,
}

impl Options {
    fn runs(&self, drill: u8) -> bool {
        self.only.is_empty() || self.only.contains(&drill)
    }

    fn duration(&self) -> Duration {
        Duration::from_secs(self.seconds)
    }
}

pub fn main(options: Options) -> std::process::ExitCode {
    crate::run_to_exit("drill", drill(options))
}

async fn drill(options: Options) -> Result<()> {
    let db = Database::at(&options.database_url, options.pg_bin.clone());
    let settings = db.durability().await?;
    let schema = format!("drill_{}", time::OffsetDateTime::now_utc().unix_timestamp());
    let db = db.with_schema(&schema);
    eprintln!("drill: schema {schema}; {}", settings.summary());
    server::migrate(&options.server_bin, &options.database_url, &schema).await?;
    let result = run(&options, &db, &settings).await;
    match db.drop_schema().await {
        Ok(()) => eprintln!("drill: schema {schema} dropped"),
        Err(e) => eprintln!("drill: schema {schema} left in place: {e:#}"),
    }
    result
}

/// One line of the table.
pub struct Row {
    pub drill: &'static str,
    pub acked: Option<u64>,
    pub check: Option<Check>,
    pub outage: Option<Duration>,
    pub figures: String,
    /// Expectations other than lost/duplicated turns that were not met (reported, not fatal).
    pub notes: Vec<String>,
}

impl Row {
    fn failed(&self) -> bool {
        self.check.as_ref().is_some_and(|c| !c.ok())
    }
}

/// Calls placed through the batch API (the fake ElevenLabs answers at once).
struct Calls {
    next_driver: u32,
}

impl Calls {
    async fn place(
        &mut self,
        client: &reqwest::Client,
        base_url: &str,
        n: u32,
    ) -> Result<Vec<String>> {
        let batch = Batch::new(self.next_driver, n);
        self.next_driver += n;
        batch
            .post(client, base_url, Duration::ZERO)
            .await
            .context("placing the drill's calls")?;
        Ok(batch.call_sids)
    }
}

async fn run(options: &Options, db: &Database, settings: &crate::pgbench::Settings) -> Result<()> {
    let fake = FakeElevenLabs::start(Duration::ZERO).await;
    let launch = Launch {
        bin: options.server_bin.clone(),
        database_url: options.database_url.clone(),
        schema: db.schema().to_string(),
        fake_uri: fake.uri(),
        env: Vec::new(),
    };
    let mut server = Server::launch(launch.clone(), server::free_port()?).await?;
    let client = crate::load::client(256)?;
    let mut calls = Calls {
        next_driver: FIRST_DRIVER,
    };
    let mut rows = Vec::new();
    let started = std::time::Instant::now();
    if options.runs(1) {
        eprintln!("drill 1: PostgreSQL restarted under webhook load");
        rows.push(postgres_restart(options, db, &server, &client, &mut calls).await?);
    }
    if options.runs(2) {
        eprintln!("drill 2: two instances, racing identical deliveries");
        rows.push(two_instances(options, &launch, &server, &client, &mut calls).await?);
    }
    if options.runs(3) {
        eprintln!("drill 3: kill -9 under load, restart, clients retry");
        rows.push(kill_nine(options, &mut server, &client, &mut calls).await?);
    }
    if options.runs(4) {
        eprintln!("drill 4: a locked Call row and a saturated pool");
        let sids = calls.place(&client, server.base_url(), 4).await?;
        rows.push(locks::drill(options, db, &server, &client, &sids).await?);
    }
    if options.runs(5) {
        eprintln!("drill 5: slow and oversized clients");
        rows.push(slow::drill(&server).await?);
    }
    server.stop().await;
    print(&rows, options, settings, started.elapsed());
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| r.failed())
        .map(|r| r.drill)
        .collect();
    if !failed.is_empty() {
        anyhow::bail!(
            "lost, duplicated or misnumbered turns in: {}",
            failed.join(", ")
        );
    }
    Ok(())
}

fn secs(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64())
}

fn print(rows: &[Row], options: &Options, settings: &crate::pgbench::Settings, took: Duration) {
    let dash = || "–".to_string();
    println!();
    println!(
        "| drill | turns acknowledged (2xx) | stored | lost | duplicated | longest s without a 2xx | figures | result |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |");
    for row in rows {
        let check = row.check.as_ref();
        let result = match check {
            Some(c) if !c.ok() => format!("FAILED {}", c.summary()),
            _ if !row.notes.is_empty() => {
                format!("ok; expectation missed: {}", row.notes.join("; "))
            }
            _ => "ok".to_string(),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {result} |",
            row.drill,
            row.acked.map_or_else(dash, |n| n.to_string()),
            check.map_or_else(dash, |c| c.stored.to_string()),
            check.map_or_else(dash, |c| c.lost.to_string()),
            check.map_or_else(dash, |c| c.duplicated.to_string()),
            row.outage.map_or_else(dash, secs),
            row.figures,
        );
    }
    println!();
    println!(
        "- machine: {}; database: {}",
        crate::cpu::machine(),
        settings.summary()
    );
    println!(
        "- service: release calls-server with its default settings (DATABASE_POOL_SIZE 10, \
         DATABASE_POOL_WAIT_MS 2000, DATABASE_LOCK_TIMEOUT_MS 500, DATABASE_STATEMENT_TIMEOUT_MS 5000, \
         BODY_READ_TIMEOUT_SECS 10, TRANSCRIPTION_MAX_BODY_BYTES 65536); {} s of load per drill, \
         {} senders retrying every 5xx or unanswered delivery; whole run {:.0} s",
        options.seconds,
        options.senders,
        took.as_secs_f64()
    );
}

/// Drill 1: `pg_ctl restart -m fast` a third of the way into the load.
async fn postgres_restart(
    options: &Options,
    db: &Database,
    server: &Server,
    client: &reqwest::Client,
    calls: &mut Calls,
) -> Result<Row> {
    let sids = calls.place(client, server.base_url(), 8).await?;
    let watch = ReadyWatch::start(client, server.base_url());
    let load = deliver::retrying_load(
        client,
        server.base_url(),
        &sids,
        options.senders as usize,
        options.duration(),
        "restart",
    );
    let fault = async {
        tokio::time::sleep(options.duration() / 3).await;
        pg::restart(db).await
    };
    let (outcome, restart) = tokio::join!(load, fault);
    let restart = restart?;
    let readiness = watch.finish().await;
    let check = deliver::check(client, server.base_url(), &sids, &outcome.acked).await;
    let mut notes = Vec::new();
    if !readiness.contains("503") && !readiness.contains("none") {
        notes.push("/readyz never reported the database down".to_string());
    }
    if outcome.unanswered > 0 {
        notes.push(format!("{} turns never acknowledged", outcome.unanswered));
    }
    Ok(Row {
        drill: "1. pg_ctl restart -m fast under webhook load",
        acked: Some(outcome.acked.len() as u64),
        outage: Some(outcome.longest_outage()),
        figures: format!(
            "restart took {} s; {} retried deliveries (first failure: {}); /readyz seen: {readiness}",
            secs(restart),
            outcome.retries,
            outcome.first_failure.as_deref().unwrap_or("none"),
        ),
        check: Some(check),
        notes,
    })
}

/// Drill 2: a second server on the same database; every turn sent to both at once.
async fn two_instances(
    options: &Options,
    launch: &Launch,
    first: &Server,
    client: &reqwest::Client,
    calls: &mut Calls,
) -> Result<Row> {
    let sids = calls.place(client, first.base_url(), 4).await?;
    let mut second = Server::launch(launch.clone(), server::free_port()?).await?;
    let timestamp = deliver::now_rfc3339();
    let deadline = std::time::Instant::now() + options.duration();
    // Several senders per call, so different turns of one call race as well.
    let senders = options.senders as usize;
    let runs = (0..senders).map(|sender| {
        let (sids, timestamp) = (&sids, &timestamp);
        let second = &second;
        async move {
            let call = sender % sids.len();
            let mut tally = Tally::default();
            let mut n = 0;
            while std::time::Instant::now() < deadline {
                n += 1;
                let turn = Delivery::new(
                    call,
                    &sids[call],
                    format!("drill race sender {sender} turn {n}"),
                    timestamp,
                );
                let (a, b) = tokio::join!(
                    deliver::send(client, first.base_url(), &turn),
                    deliver::send(client, second.base_url(), &turn)
                );
                tally.count(&turn, &a, &b);
            }
            tally
        }
    });
    let mut tally = Tally::default();
    for t in futures_util::future::join_all(runs).await {
        tally.merge(t);
    }
    second.stop().await;
    let check = deliver::check(client, first.base_url(), &sids, &tally.acked).await;
    let mut notes = Vec::new();
    if tally.disagreements > 0 {
        notes.push(format!(
            "{} pairs answered with different ids",
            tally.disagreements
        ));
    }
    if tally.failures > 0 {
        notes.push(format!(
            "{} deliveries not acknowledged (first: {})",
            tally.failures,
            tally.first_failure.as_deref().unwrap_or("")
        ));
    }
    Ok(Row {
        drill: "2. two instances, each turn delivered to both at once",
        acked: Some(tally.acked.len() as u64),
        outage: None,
        figures: format!(
            "{} turns × 2 deliveries over {} calls: {} × 201, {} × 200 (the repeat), both 201: {}; \
             numbered 1..n: {}",
            tally.turns,
            sids.len(),
            tally.created,
            tally.repeats,
            tally.both_created,
            if check.gapped_calls == 0 { "yes" } else { "NO" }
        ),
        check: Some(check),
        notes,
    })
}

/// Drill 2's count of the paired answers.
#[derive(Default)]
struct Tally {
    turns: u64,
    created: u64,
    repeats: u64,
    both_created: u64,
    disagreements: u64,
    failures: u64,
    first_failure: Option<String>,
    acked: Vec<(Delivery, crate::load::Saved)>,
}

impl Tally {
    fn count(&mut self, turn: &Delivery, a: &deliver::Answer, b: &deliver::Answer) {
        use deliver::Answer::{Created, Repeat};
        self.turns += 1;
        for answer in [a, b] {
            match answer {
                Created(_) => self.created += 1,
                Repeat(_) => self.repeats += 1,
                other => {
                    self.failures += 1;
                    self.first_failure.get_or_insert_with(|| other.describe());
                }
            }
        }
        if matches!((a, b), (Created(_), Created(_))) {
            self.both_created += 1;
        }
        match (a.acknowledged(), b.acknowledged()) {
            (Some(x), Some(y)) if x != y => self.disagreements += 1,
            _ => {}
        }
        // Either acknowledgement promises the turn; both are checked against the store.
        for saved in [a.acknowledged(), b.acknowledged()].into_iter().flatten() {
            self.acked.push((turn.clone(), saved));
        }
    }

    fn merge(&mut self, other: Tally) {
        self.turns += other.turns;
        self.created += other.created;
        self.repeats += other.repeats;
        self.both_created += other.both_created;
        self.disagreements += other.disagreements;
        self.failures += other.failures;
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
        self.acked.extend(other.acked);
    }
}

/// Drill 3: SIGKILL the server a third of the way in, start it again on the same port.
async fn kill_nine(
    options: &Options,
    server: &mut Server,
    client: &reqwest::Client,
    calls: &mut Calls,
) -> Result<Row> {
    let sids = calls.place(client, server.base_url(), 8).await?;
    let base_url = server.base_url().to_string();
    let load = deliver::retrying_load(
        client,
        &base_url,
        &sids,
        options.senders as usize,
        options.duration(),
        "kill",
    );
    let fault = async {
        tokio::time::sleep(options.duration() / 3).await;
        server.kill9();
        let killed = std::time::Instant::now();
        server.restart().await.map(|()| killed.elapsed())
    };
    let (outcome, back) = tokio::join!(load, fault);
    let back = back?;
    let check = deliver::check(client, &base_url, &sids, &outcome.acked).await;
    let mut notes = Vec::new();
    if outcome.unanswered > 0 {
        notes.push(format!("{} turns never acknowledged", outcome.unanswered));
    }
    Ok(Row {
        drill: "3. kill -9 of the server under load, restarted, clients retry",
        acked: Some(outcome.acked.len() as u64),
        outage: Some(outcome.longest_outage()),
        figures: format!(
            "healthy again {} s after SIGKILL; {} retried deliveries (first failure: {})",
            secs(back),
            outcome.retries,
            outcome.first_failure.as_deref().unwrap_or("none"),
        ),
        check: Some(check),
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::Saved;
    use deliver::Answer;

    fn saved(id: i64) -> Saved {
        Saved {
            transcription_id: id,
            sequence_number: 1,
        }
    }

    #[test]
    fn racing_pairs_are_tallied() {
        let turn = Delivery::new(0, "EL_1", "m".to_string(), "t");
        let mut tally = Tally::default();
        tally.count(&turn, &Answer::Created(saved(1)), &Answer::Repeat(saved(1)));
        tally.count(
            &turn,
            &Answer::Created(saved(2)),
            &Answer::Created(saved(3)),
        );
        tally.count(
            &turn,
            &Answer::Status(500, String::new()),
            &Answer::Repeat(saved(4)),
        );
        assert_eq!(
            (
                tally.turns,
                tally.created,
                tally.repeats,
                tally.both_created
            ),
            (3, 3, 2, 1)
        );
        assert_eq!(
            (tally.disagreements, tally.failures, tally.acked.len()),
            (1, 1, 5)
        );
    }
}
