//! CPU time spent by each side of a measurement, from /proc: the service, PostgreSQL (the
//! postmaster and its backends) and the load generator (this process, or pgbench, its
//! child). It says where the time of a turn goes; on a 2-core machine the three compete.

use std::fs;
use std::process::Command;
use std::time::Duration;

/// CPU used so far by the processes we measure; `None` where /proc cannot tell.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    server: Option<Duration>,
    postgres: Option<Duration>,
    load: Option<Duration>,
    /// All cores: (busy, total) clock ticks since boot, from /proc/stat.
    machine: Option<(u64, u64)>,
}

/// Which processes to measure.
#[derive(Clone, Copy, Debug)]
pub struct Meter {
    /// Clock ticks per second of /proc's counters.
    ticks: u64,
    postmaster: Option<u32>,
}

/// CPU per operation, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PerOp {
    pub server: Option<f64>,
    pub postgres: Option<f64>,
    pub load: Option<f64>,
    /// How busy all cores were, in percent, whoever used them: near 100 means the
    /// figure is CPU-bound; well above the three processes' share means other work ran.
    pub machine_busy: Option<f64>,
}

/// The times of `/proc/<pid>/stat`: user, system, and those of waited-for children.
struct Times {
    own: u64,
    children: u64,
    parent: u32,
}

/// Fields after the command name (which may hold spaces), as proc(5) numbers them from 3.
fn read_times(pid: &str) -> Option<Times> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    Some(Times {
        own: field(14)? + field(15)?,
        children: field(16)? + field(17)?,
        parent: u32::try_from(field(4)?).ok()?,
    })
}

impl Meter {
    pub fn new(postmaster: Option<u32>) -> Self {
        let ticks = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .unwrap_or(100);
        Meter { ticks, postmaster }
    }

    fn duration(&self, ticks: u64) -> Duration {
        Duration::from_secs_f64(ticks as f64 / self.ticks.max(1) as f64)
    }

    /// CPU of the server `server` (when given), of PostgreSQL, and of this process with its
    /// finished children.
    pub fn sample(&self, server: Option<u32>) -> Sample {
        let own = read_times("self").map(|t| self.duration(t.own + t.children));
        let server = server
            .and_then(|pid| read_times(&pid.to_string()))
            .map(|t| self.duration(t.own));
        Sample {
            server,
            postgres: self.postmaster.and_then(|pid| self.postgres(pid)),
            load: own,
            machine: machine_ticks(),
        }
    }

    /// The postmaster with the backends it reaped, plus the backends alive now.
    fn postgres(&self, postmaster: u32) -> Option<Duration> {
        let main = read_times(&postmaster.to_string())?;
        let live: u64 = fs::read_dir("/proc")
            .ok()?
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                name.bytes().all(|b| b.is_ascii_digit()).then_some(name)
            })
            .filter_map(|pid| read_times(&pid))
            .filter(|t| t.parent == postmaster)
            .map(|t| t.own)
            .sum();
        Some(self.duration(main.own + main.children + live))
    }
}

impl Sample {
    /// What was spent between `before` and this sample, per operation.
    pub fn per_op_since(&self, before: &Sample, ops: u64) -> PerOp {
        let per = |now: Option<Duration>, then: Option<Duration>| {
            let spent = now?.checked_sub(then?)?;
            (ops > 0).then(|| spent.as_secs_f64() * 1e6 / ops as f64)
        };
        let busy = match (self.machine, before.machine) {
            (Some((busy, total)), Some((busy0, total0))) if total > total0 => {
                Some(busy.saturating_sub(busy0) as f64 * 100.0 / (total - total0) as f64)
            }
            _ => None,
        };
        PerOp {
            server: per(self.server, before.server),
            postgres: per(self.postgres, before.postgres),
            load: per(self.load, before.load),
            machine_busy: busy,
        }
    }
}

/// Busy and total ticks of all cores (`cpu` line of /proc/stat; idle and iowait are idle).
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((total - idle, total))
}

/// The 1-, 5- and 15-minute load averages: above the core count, other work on the
/// machine competed with the run and its figures are low.
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_string())
}

/// `2 cores, AMD EPYC …` for the report.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let memory = fs::read_to_string("/proc/meminfo").ok().and_then(|info| {
        info.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    let memory = memory.map_or(String::new(), |kib| {
        format!(", {} GiB RAM", (kib + (1 << 19)) >> 20)
    });
    format!("{cores} cores, {model}{memory}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_uses_cpu_and_a_sample_tells_it() {
        let meter = Meter::new(None);
        let before = meter.sample(Some(std::process::id()));
        let mut x = 0u64;
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        let after = meter.sample(Some(std::process::id()));
        let per = after.per_op_since(&before, 1);
        assert!(per.load.is_some_and(|us| us >= 0.0), "{per:?} {x}");
        assert!(per.server.is_some());
        assert_eq!(per.postgres, None);
        assert_eq!(after.per_op_since(&before, 0).load, None);
        assert!(
            per.machine_busy.is_none_or(|b| (0.0..=100.0).contains(&b)),
            "{per:?}"
        );
    }

    #[test]
    fn describes_the_machine() {
        assert!(machine().contains("cores"));
    }
}
