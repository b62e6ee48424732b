//! The one table: each figure's median over the rounds, with ratios against the baselines
//! measured in the same run (the machine decides the absolute numbers; the ratios travel).

use std::time::Duration;

use hdrhistogram::Histogram;

use crate::batch::Placement;
use crate::cpu::PerOp;
use crate::dialer::Dialing;

/// Latencies in µs in an HDR histogram (3 significant digits): constant memory however
/// long the run, exact nearest-rank percentiles to that precision.
#[derive(Debug, Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        // Auto-resizing, so no value is ever out of range.
        Self(Histogram::new(3).expect("3 significant digits are supported"))
    }
}

impl Latencies {
    pub fn record(&mut self, latency: Duration) {
        self.record_us(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn record_us(&mut self, micros: u64) {
        // Cannot fail: the histogram grows to fit.
        let _ = self.0.record(micros);
    }

    pub fn add(&mut self, other: &Latencies) {
        let _ = self.0.add(&other.0);
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// The `p`-th percentile (0–100), in ms; `None` when empty.
    pub fn percentile_ms(&self, p: f64) -> Option<f64> {
        (!self.0.is_empty()).then(|| self.0.value_at_quantile(p / 100.0) as f64 / 1000.0)
    }

    pub fn max(&self) -> Duration {
        Duration::from_micros(self.0.max())
    }

    /// p50 and max, in ms, for the drills' notes.
    pub fn p50_max(&self) -> String {
        match self.percentile_ms(50.0) {
            None => "no answers".to_string(),
            Some(p50) => format!(
                "p50 {p50:.0} ms, max {:.0} ms (n={})",
                self.0.max() as f64 / 1000.0,
                self.len()
            ),
        }
    }
}

pub const FLOOR: &str = "pgbench: one-row INSERT per transaction (prepared), spread (the floor)";
pub const APPEND: &str = "pgbench: the service's append transaction, spread";
pub const WEBHOOK: &str = "webhook over HTTP, closed loop, spread";
pub const WEBHOOK_LIVE: &str = "webhook with N open live pages (SSE), closed loop, spread";
pub const APPEND_ONE: &str = "pgbench: the append transaction, all on one call";
pub const WEBHOOK_ONE: &str = "webhook over HTTP, closed loop, all on one call";
pub const FIXED_RATE: &str = "webhook over HTTP, fixed rate (open loop), spread";
pub const HEALTHZ: &str = "GET /healthz, closed loop (the HTTP ceiling)";

/// The rows in the order they are printed.
const ROWS: [&str; 8] = [
    FLOOR,
    APPEND,
    WEBHOOK,
    WEBHOOK_LIVE,
    APPEND_ONE,
    WEBHOOK_ONE,
    FIXED_RATE,
    HEALTHZ,
];

/// One measurement of one row.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Measure {
    pub per_second: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub cpu_us: PerOp,
    pub errors: u64,
    /// The service's peak resident memory so far (VmHWM) when the measurement ended.
    pub peak_rss_mib: Option<f64>,
}

#[derive(Default)]
pub struct Table {
    rows: Vec<(&'static str, Vec<Measure>)>,
    placements: Vec<Placement>,
    dialings: Vec<Dialing>,
    /// N of the live-pages row, and the `turn` events those pages received in all.
    pub live_pages: u32,
    pub live_turn_events: u64,
}

/// The median of some values (the mean of the middle two for an even count).
fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

fn fmt(value: Option<f64>, decimals: usize) -> String {
    value.map_or("–".to_string(), |v| format!("{v:.decimals$}"))
}

fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Table {
    /// Record a measurement; its problem, if any, joins the run's problems.
    pub fn add(
        &mut self,
        row: &'static str,
        measure: Measure,
        problems: &mut Vec<String>,
        problem: Option<String>,
    ) {
        problems.extend(problem);
        match self.rows.iter_mut().find(|(name, _)| *name == row) {
            Some((_, measures)) => measures.push(measure),
            None => self.rows.push((row, vec![measure])),
        }
    }

    pub fn add_placement(&mut self, placement: Placement) {
        self.placements.push(placement);
    }

    pub fn add_dialing(&mut self, dialing: Dialing) {
        self.dialings.push(dialing);
    }

    /// The median of each figure of `row` over the rounds.
    fn median_of(&self, row: &str) -> Option<Measure> {
        let measures = &self.rows.iter().find(|(name, _)| *name == row)?.1;
        let m = |f: fn(&Measure) -> Option<f64>| median(measures.iter().filter_map(f));
        Some(Measure {
            per_second: m(|x| Some(x.per_second))?,
            p50_ms: m(|x| x.p50_ms),
            p99_ms: m(|x| x.p99_ms),
            cpu_us: PerOp {
                server: m(|x| x.cpu_us.server),
                postgres: m(|x| x.cpu_us.postgres),
                load: m(|x| x.cpu_us.load),
                machine_busy: m(|x| x.cpu_us.machine_busy),
            },
            errors: measures.iter().map(|x| x.errors).sum(),
            // VmHWM only grows: the first round's value says which row first needed the memory.
            peak_rss_mib: measures
                .iter()
                .filter_map(|x| x.peak_rss_mib)
                .reduce(f64::min),
        })
    }

    fn ratio(&self, row: &str, base: &str) -> Option<f64> {
        let (a, b) = (self.median_of(row)?, self.median_of(base)?);
        (b.per_second > 0.0).then(|| a.per_second / b.per_second)
    }

    /// The ratio column of a row: what it is compared with, and the target where there is one.
    fn comparison(&self, row: &str) -> String {
        let r = |base| fmt(self.ratio(row, base), 2);
        match row {
            FLOOR => "1 (the floor)".to_string(),
            APPEND => format!("{} × floor", r(FLOOR)),
            WEBHOOK => format!(
                "{} × floor (target ≥ 0.5); {} × pgbench append",
                r(FLOOR),
                r(APPEND)
            ),
            WEBHOOK_LIVE => format!(
                "N = {}: {} × webhook spread without them; {} turn events reached the pages",
                self.live_pages,
                r(WEBHOOK),
                self.live_turn_events
            ),
            APPEND_ONE => format!("{} × pgbench append spread", r(APPEND)),
            WEBHOOK_ONE => format!(
                "{} × pgbench append on one call (target ≥ 1.5)",
                r(APPEND_ONE)
            ),
            FIXED_RATE => {
                let p99 = self.median_of(row).and_then(|m| m.p99_ms);
                let met = p99.map_or("", |p| if p < 10.0 { ", met" } else { ", not met" });
                format!("p99 target < 10 ms{met}")
            }
            HEALTHZ => format!(
                "webhook spread = {} × this",
                fmt(self.ratio(WEBHOOK, row), 3)
            ),
            _ => String::new(),
        }
    }

    pub fn print(&self, notes: &[String]) {
        println!();
        println!(
            "| what | per second | p50 ms | p99 ms | CPU µs per op: service / PostgreSQL / load generator | all cores busy | service peak RSS MiB, so far in round 1 | errors | compared with the same run |"
        );
        println!("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |");
        for row in ROWS {
            let Some(m) = self.median_of(row) else {
                continue;
            };
            let cpu = format!(
                "{} / {} / {}",
                fmt(m.cpu_us.server, 0),
                fmt(m.cpu_us.postgres, 0),
                fmt(m.cpu_us.load, 0)
            );
            println!(
                "| {row} | {} | {} | {} | {cpu} | {}% | {} | {} | {} |",
                thousands(m.per_second),
                fmt(m.p50_ms, 2),
                fmt(m.p99_ms, 2),
                fmt(m.cpu_us.machine_busy, 0),
                fmt(m.peak_rss_mib, 1),
                m.errors,
                self.comparison(row)
            );
        }
        if let Some(line) = self.placement_row() {
            println!("{line}");
        }
        for line in self.dialing_rows() {
            println!("{line}");
        }
        println!();
        for note in notes {
            println!("- {note}");
        }
    }

    /// `POST /batches` (time to the 202, peak RSS) and the dialer's rate against the ideal.
    fn dialing_rows(&self) -> Vec<String> {
        let met = |ok: bool| if ok { "met" } else { "not met" };
        let mut rows = Vec::new();
        for d in &self.dialings {
            let instances = match d.instances {
                1 => "1 instance".to_string(),
                n => format!("{n} instances"),
            };
            let secs = d.accepted.as_secs_f64();
            let rss = d.peak_rss_mib;
            rows.push(format!(
                "| POST /batches: {} drivers answered 202 ({instances} running) | – | {:.0} | – | – | – | {} | 0 | {secs:.2} s (target < 2 s, {}); peak RSS target < 64 MiB, {} |",
                thousands(f64::from(d.drivers)),
                secs * 1000.0,
                fmt(rss, 1),
                met(secs < 2.0),
                rss.map_or("unknown", |r| met(r < 64.0))
            ));
            let ratio = d.rate() / (d.ideal() / f64::from(d.instances));
            let target = 0.8 * f64::from(d.instances);
            rows.push(format!(
                "| dialer: {instances}, CALL_CONCURRENCY {}, fake ElevenLabs answering after {} ms, first {} s | {:.1} calls | – | – | – | – | {} | 0 | {ratio:.2} × the ideal rate per instance {:.0}/s (target ≥ {target:.1}, {}); {} calls |",
                d.concurrency,
                d.delay.as_millis(),
                d.window.as_secs(),
                d.rate(),
                fmt(rss, 1),
                d.ideal() / f64::from(d.instances),
                met(ratio >= target),
                d.placed
            ));
        }
        rows
    }

    /// Batch placement: the large batch against the 1-driver baseline of the same round.
    fn placement_row(&self) -> Option<String> {
        let first = self.placements.first()?;
        let base = median(self.placements.iter().map(|p| p.baseline.as_secs_f64()))?;
        let large = median(self.placements.iter().map(|p| p.large.as_secs_f64()))?;
        let peak = self.placements.iter().map(|p| p.peak).max().unwrap_or(0);
        let n = first.drivers;
        let sequential = base * f64::from(n);
        let rounds = n.div_ceil(first.concurrency.max(1));
        Some(format!(
            "| batch placement: {n} drivers, CALL_CONCURRENCY {}, fake ElevenLabs answering after a fixed delay | {} calls | – | – | – | – | – | 0 | {large:.2} s = {:.1} × the 1-driver batch ({base:.3} s); ideal {rounds} × it; {:.1} × faster than sequential; peak {peak} calls at once |",
            first.concurrency,
            fmt(Some(f64::from(n) / large), 0),
            large / base,
            sequential / large
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_give_nearest_rank_percentiles() {
        // Three significant digits: a value reads back within 0.1 % above itself.
        let about = |got: Option<f64>, want: f64| {
            let got = got.unwrap_or(f64::NAN);
            assert!(got >= want && got <= want * 1.001, "{got} vs {want}");
        };
        let mut l = Latencies::default();
        assert_eq!(
            (l.percentile_ms(50.0), l.p50_max()),
            (None, "no answers".to_string())
        );
        for ms in [3, 1, 2, 10] {
            l.record(Duration::from_millis(ms));
        }
        about(l.percentile_ms(50.0), 2.0);
        about(l.percentile_ms(99.0), 10.0);
        assert_eq!(l.p50_max(), "p50 2 ms, max 10 ms (n=4)");
        let mut hundred = Latencies::default();
        (1..=100).for_each(|ms| hundred.record_us(ms * 1000));
        about(hundred.percentile_ms(50.0), 50.0);
        about(hundred.percentile_ms(51.0), 51.0);
        about(hundred.percentile_ms(99.0), 99.0);
    }

    fn measure(per_second: f64) -> Measure {
        Measure {
            per_second,
            p99_ms: Some(per_second / 100.0),
            ..Measure::default()
        }
    }

    #[test]
    fn medians_and_ratios_come_from_the_same_run() {
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median([4.0, 1.0]), Some(2.5));
        assert_eq!(median([]), None);
        let mut table = Table::default();
        let mut problems = Vec::new();
        for (floor, webhook) in [(1000.0, 400.0), (900.0, 600.0), (1100.0, 500.0)] {
            table.add(FLOOR, measure(floor), &mut problems, None);
            table.add(WEBHOOK, measure(webhook), &mut problems, Some("x".into()));
        }
        assert_eq!(problems.len(), 3);
        assert_eq!(table.ratio(WEBHOOK, FLOOR), Some(0.5));
        assert!(
            table
                .comparison(WEBHOOK)
                .starts_with("0.50 × floor (target ≥ 0.5)")
        );
        table.add(FIXED_RATE, measure(1000.0), &mut problems, None);
        assert_eq!(table.comparison(FIXED_RATE), "p99 target < 10 ms, not met");
    }

    #[test]
    fn numbers_read_easily() {
        assert_eq!(thousands(9298.4), "9,298");
        assert_eq!(thousands(416.0), "416");
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(fmt(None, 2), "–");
    }
}
