//! A small Prometheus registry: labelled counters and histograms, rendered in the text
//! exposition format. Hand-written because the service needs only these two kinds.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

type Labels = Vec<(&'static str, String)>;

/// Latency buckets in seconds, from 1 ms to 30 s.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

struct Family<T> {
    help: &'static str,
    series: BTreeMap<Labels, T>,
}

#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<&'static str, Family<u64>>>,
    histograms: Mutex<BTreeMap<&'static str, Family<Histogram>>>,
}

/// Values read at scrape time from their source: gauges, or counters kept elsewhere.
pub struct Gauge {
    pub name: &'static str,
    /// `gauge`, or `counter` for a monotonic value kept outside this registry.
    pub kind: &'static str,
    pub help: &'static str,
    pub labels: Labels,
    pub value: f64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a counter map inconsistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn inc(&self, name: &'static str, help: &'static str, labels: Labels) {
        self.add(name, help, labels, 1);
    }

    pub fn add(&self, name: &'static str, help: &'static str, labels: Labels, by: u64) {
        let mut counters = lock(&self.counters);
        let family = counters.entry(name).or_insert_with(|| Family {
            help,
            series: BTreeMap::new(),
        });
        *family.series.entry(labels).or_default() += by;
    }

    pub fn observe(&self, name: &'static str, help: &'static str, labels: Labels, value: Duration) {
        let seconds = value.as_secs_f64();
        let mut histograms = lock(&self.histograms);
        let family = histograms.entry(name).or_insert_with(|| Family {
            help,
            series: BTreeMap::new(),
        });
        let h = family.series.entry(labels).or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.counts[i] += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
    }

    /// A counter's current value (tests and diagnostics).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let counters = lock(&self.counters);
        counters
            .get(name)
            .map(|f| {
                f.series
                    .iter()
                    .filter(|(l, _)| {
                        labels
                            .iter()
                            .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
                    })
                    .map(|(_, v)| *v)
                    .sum()
            })
            .unwrap_or(0)
    }

    pub fn render(&self, gauges: &[Gauge]) -> String {
        let mut out = String::new();
        for (name, family) in lock(&self.counters).iter() {
            let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} counter", family.help);
            for (labels, value) in &family.series {
                let _ = writeln!(out, "{name}{} {value}", fmt_labels(labels, None));
            }
        }
        for (name, family) in lock(&self.histograms).iter() {
            let _ = writeln!(
                out,
                "# HELP {name} {}\n# TYPE {name} histogram",
                family.help
            );
            for (labels, h) in &family.series {
                for (i, bound) in BUCKETS.iter().enumerate() {
                    let le = bound.to_string();
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {}",
                        fmt_labels(labels, Some(&le)),
                        h.counts[i]
                    );
                }
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {}",
                    fmt_labels(labels, Some("+Inf")),
                    h.count
                );
                let _ = writeln!(out, "{name}_sum{} {}", fmt_labels(labels, None), h.sum);
                let _ = writeln!(out, "{name}_count{} {}", fmt_labels(labels, None), h.count);
            }
        }
        let mut last = "";
        for g in gauges {
            if g.name != last {
                let _ = writeln!(
                    out,
                    "# HELP {} {}\n# TYPE {} {}",
                    g.name, g.help, g.name, g.kind
                );
                last = g.name;
            }
            let _ = writeln!(out, "{}{} {}", g.name, fmt_labels(&g.labels, None), g.value);
        }
        out
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn fmt_labels(labels: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics::new();
        m.inc("x_total", "things", vec![("kind", "a\"b".into())]);
        m.inc("x_total", "things", vec![("kind", "a\"b".into())]);
        m.observe("lat_seconds", "latency", vec![], Duration::from_millis(20));
        let text = m.render(&[Gauge {
            name: "g",
            kind: "gauge",
            help: "gauge",
            labels: vec![],
            value: 3.0,
        }]);
        assert!(text.contains("# TYPE x_total counter"));
        assert!(text.contains("x_total{kind=\"a\\\"b\"} 2"));
        assert!(text.contains("lat_seconds_bucket{le=\"0.025\"} 1"));
        assert!(text.contains("lat_seconds_bucket{le=\"0.01\"} 0"));
        assert!(text.contains("lat_seconds_count 1"));
        assert!(text.contains("g 3"));
        assert_eq!(m.counter("x_total", &[("kind", "a\"b")]), 2);
    }
}
