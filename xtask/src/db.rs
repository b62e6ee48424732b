//! `cargo xtask db up|down|url`: pick the PostgreSQL to develop and test against.
//!
//! A reachable `DATABASE_URL` wins (`pg_isready`, i.e. libpq, reads the URL and asks the
//! server). Otherwise xtask runs a private cluster under `target/xtask-pg`, on 127.0.0.1
//! only, with trust auth and fsync off: it is a throwaway database, so speed matters more
//! than durability. `cargo xtask bench` gets a second private cluster with PostgreSQL's
//! durable defaults instead (`target/xtask-pg-durable`).

use std::env;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::process::{
    find_in_path, is_executable, is_root, output, run_quietly, shell_quote, tcp_reachable,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// `sun_path` is 108 bytes on Linux (104 on macOS); longer socket paths make postgres fail.
const MAX_SOCKET_PATH: usize = 100;

#[derive(clap::Subcommand)]
pub enum Action {
    /// Start a database if needed and print its URL
    Up,
    /// Print the database URL (starting the private cluster if needed)
    Url,
    /// Stop the private PostgreSQL clusters
    Down,
}

pub fn cmd(root: &Path, action: Action) -> Result<()> {
    match action {
        Action::Up | Action::Url => {
            // Only the URL goes to stdout, so `export DATABASE_URL=$(cargo xtask db url)` works.
            println!("{}", ensure_database(root)?);
            Ok(())
        }
        Action::Down => down(root),
    }
}

/// Make sure a database is available and return its URL. Callers hand it to their
/// children as `DATABASE_URL`; nothing is exported into our own environment.
pub fn ensure_database(root: &Path) -> Result<String> {
    if let Some(url) = user_database_url() {
        match probe(&url) {
            Probe::Ready(server) => {
                eprintln!("xtask: using DATABASE_URL ({server})");
                return Ok(url);
            }
            Probe::NoTool => {
                // Without the client tools no private cluster can start either.
                eprintln!("xtask: pg_isready not found; using DATABASE_URL unchecked");
                return Ok(url);
            }
            Probe::NotReady(why) => eprintln!(
                "xtask: DATABASE_URL is set but not usable ({why}); using the private cluster instead"
            ),
        }
    }
    ensure_private(root, Kind::Test)
}

/// The durable private cluster for `cargo xtask bench`: PostgreSQL's defaults (fsync,
/// synchronous_commit and full_page_writes on), apart from the throwaway test cluster.
pub fn ensure_durable(root: &Path) -> Result<String> {
    ensure_private(root, Kind::Durable)
}

/// The durable private cluster for `cargo xtask drill`, which restarts it mid-run: a
/// cluster of its own, so a bench (or another checkout's) is never restarted under it.
pub fn ensure_drill(root: &Path) -> Result<String> {
    ensure_private(root, Kind::Drill)
}

fn user_database_url() -> Option<String> {
    env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
}

enum Probe {
    /// pg_isready's description of the server, e.g. `127.0.0.1:5432 - accepting connections`.
    Ready(String),
    NotReady(String),
    NoTool,
}

/// Ask libpq, through `pg_isready`, whether the server `url` names accepts connections.
fn probe(url: &str) -> Probe {
    // pg_isready takes anything else for a database name on the default server.
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Probe::NotReady("expected a postgres:// or postgresql:// URL".to_string());
    }
    let Some(pg_isready) = find_in_path("pg_isready")
        .or_else(|| find_pg_bindir().ok().map(|dir| dir.join("pg_isready")))
    else {
        return Probe::NoTool;
    };
    let timeout = CONNECT_TIMEOUT.as_secs().to_string();
    let result = Command::new(pg_isready)
        .args(["-t", &timeout, "-d", url])
        .stdin(std::process::Stdio::null())
        .output();
    let Ok(out) = result else {
        return Probe::NoTool;
    };
    let said = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_string();
    let text = [said(&out.stdout), said(&out.stderr)]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if out.status.success() {
        Probe::Ready(text)
    } else {
        Probe::NotReady(text)
    }
}

fn down(root: &Path) -> Result<()> {
    if user_database_url().is_some() {
        eprintln!(
            "xtask: DATABASE_URL is set; xtask does not manage that server and leaves it running."
        );
    }
    for kind in [Kind::Test, Kind::Durable, Kind::Drill] {
        stop_private(root, kind)?;
    }
    Ok(())
}

fn stop_private(root: &Path, kind: Kind) -> Result<()> {
    let fallback = Layout::fallback(root, kind)?;
    let layout = if Path::new(&fallback.data).join("PG_VERSION").exists() {
        fallback
    } else {
        Layout::new(root, kind)?
    };
    let name = kind.name();
    if !Path::new(&layout.data).join("PG_VERSION").exists() {
        if kind == Kind::Test {
            eprintln!("xtask: no {name} in {}; nothing to stop", layout.base);
        }
        return Ok(());
    }
    let cluster = Cluster::prepare(layout)?;
    match cluster.state()? {
        State::Running => {
            cluster.stop()?;
            eprintln!("xtask: {name} stopped");
        }
        State::Stale => {
            cluster.remove_stale_pid_file()?;
            eprintln!("xtask: {name} was not running (removed a stale pid file)");
        }
        State::Stopped => eprintln!("xtask: {name} is not running"),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The private cluster

/// Which private cluster: the throwaway one for tests and dev runs, or the durable one
/// that `cargo xtask bench` measures against.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Test,
    Durable,
    /// Durable too; `cargo xtask drill` restarts it under load.
    Drill,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Test => "private cluster",
            Kind::Durable => "durable bench cluster",
            Kind::Drill => "durable drill cluster",
        }
    }

    /// Directory name under target/ (and in the temp-dir fallback).
    fn dir(self) -> &'static str {
        match self {
            Kind::Test => "xtask-pg",
            Kind::Durable => "xtask-pg-durable",
            Kind::Drill => "xtask-pg-drill",
        }
    }

    /// The environment variable that moves it to another port, and its default port.
    fn port_setting(self) -> (&'static str, u16) {
        match self {
            Kind::Test => ("XTASK_PG_PORT", 54329),
            Kind::Durable => ("XTASK_BENCH_PG_PORT", 54330),
            Kind::Drill => ("XTASK_DRILL_PG_PORT", 54331),
        }
    }

    /// Server options. The test cluster trades durability for speed; the bench cluster
    /// states PostgreSQL's durable defaults explicitly, so a postgresql.conf cannot undo them.
    fn settings(self) -> &'static str {
        match self {
            Kind::Test => "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            Kind::Durable | Kind::Drill => {
                "-c fsync=on -c synchronous_commit=on -c full_page_writes=on"
            }
        }
    }
}

/// Paths of the private cluster, as strings because they end up in shell command lines.
struct Layout {
    kind: Kind,
    base: String,
    data: String,
    log: String,
    port: u16,
}

impl Layout {
    fn new(root: &Path, kind: Kind) -> Result<Self> {
        Self::at(root.join("target").join(kind.dir()), kind)
    }

    /// Where the cluster lives when the `postgres` user cannot reach the checkout (a clone
    /// under root's home, say): a directory in the temp dir, named after the checkout so
    /// that it is reused across runs.
    fn fallback(root: &Path, kind: Kind) -> Result<Self> {
        use std::hash::{Hash, Hasher};
        // DefaultHasher::new() has fixed keys: the same checkout gets the same directory.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        root.hash(&mut hasher);
        let name = format!("calls-{}-{:016x}", kind.dir(), hasher.finish());
        Self::at(env::temp_dir().join(name), kind)
    }

    fn at(base: PathBuf, kind: Kind) -> Result<Self> {
        let str_of = |p: PathBuf| {
            p.to_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow!("path is not UTF-8: {}", p.display()))
        };
        let (variable, default) = kind.port_setting();
        let port = match env::var(variable) {
            Ok(p) if !p.is_empty() => p
                .parse()
                .map_err(|_| anyhow!("{variable} must be a port number, got `{p}`"))?,
            _ => default,
        };
        Ok(Layout {
            kind,
            data: str_of(base.join("data"))?,
            log: str_of(base.join("postgres.log"))?,
            base: str_of(base)?,
            port,
        })
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

enum State {
    Running,
    /// A `postmaster.pid` whose process is gone (or is not postgres any more).
    Stale,
    Stopped,
}

struct Cluster {
    layout: Layout,
    bin: PathBuf,
    /// The user to run postgres as, when we are root (postgres refuses to run as root).
    run_as: Option<String>,
}

fn ensure_private(root: &Path, kind: Kind) -> Result<String> {
    let layout = Layout::new(root, kind)?;
    let name = kind.name();
    let url = layout.url();

    // Cheapest check first: an earlier run (or another checkout) already serves this port.
    // Reuse it only if it really answers SQL: a listener that is not a working PostgreSQL
    // (say, a cluster whose data directory was deleted) must not be mistaken for one.
    if tcp_reachable("127.0.0.1", layout.port, CONNECT_TIMEOUT) {
        if answers_sql(&url) {
            eprintln!("xtask: reusing the PostgreSQL on 127.0.0.1:{}", layout.port);
            return Ok(url);
        }
        eprintln!(
            "xtask: something listens on 127.0.0.1:{} but does not answer SQL; starting our {name}",
            layout.port
        );
    }

    let fallback = Layout::fallback(root, kind)?;
    let cluster = if Path::new(&fallback.data).join("PG_VERSION").exists() {
        Cluster::prepare(fallback)?
    } else {
        match Cluster::prepare(layout) {
            Ok(cluster) => cluster,
            Err(e) if is_root() => {
                eprintln!("xtask: {e:#}");
                eprintln!("xtask: keeping the {name} in {} instead", fallback.base);
                Cluster::prepare(fallback)?
            }
            Err(e) => return Err(e),
        }
    };
    cluster.init_if_needed()?;
    match cluster.state()? {
        State::Running => {
            // Perhaps it is still starting; otherwise it listens elsewhere (XTASK_PG_PORT
            // changed), so restart it with our options.
            if cluster.wait_for_port(Duration::from_secs(5)) {
                eprintln!(
                    "xtask: reusing the {name} on 127.0.0.1:{}",
                    cluster.layout.port
                );
                return Ok(url);
            }
            eprintln!(
                "xtask: the {name} runs but not on port {}; restarting it",
                cluster.layout.port
            );
            cluster.stop()?;
        }
        State::Stale => {
            eprintln!("xtask: removing a stale postmaster.pid left by a crashed run");
            cluster.remove_stale_pid_file()?;
        }
        State::Stopped => {}
    }
    cluster.start()?;
    Ok(url)
}

impl Cluster {
    /// Find the binaries, create `target/xtask-pg`, and when root hand it to a non-root user.
    fn prepare(layout: Layout) -> Result<Self> {
        let bin = find_pg_bindir()?;
        fs::create_dir_all(&layout.base).with_context(|| format!("creating {}", layout.base))?;
        let run_as = if is_root() {
            let user = if output(Command::new("id").args(["-u", "postgres"])).is_some() {
                "postgres"
            } else {
                "nobody"
            };
            Some(user.to_string())
        } else {
            None
        };
        let cluster = Cluster {
            layout,
            bin,
            run_as,
        };
        if let Some(user) = &cluster.run_as {
            cluster.hand_over_to(user)?;
        }
        Ok(cluster)
    }

    /// chown the cluster directory to `user` and check that the user can reach it.
    fn hand_over_to(&self, user: &str) -> Result<()> {
        let base = &self.layout.base;
        run_quietly(
            Command::new("chown").args(["-R", user, base]),
            &format!("chown -R {user} {base}"),
        )?;
        let mut probe = self.as_user("test", &["-w", base, "-a", "-x", base]);
        if output(&mut probe).is_some() {
            return Ok(());
        }
        // Name the directories that lock the user out, so the fix is obvious.
        let blocked: Vec<String> = Path::new(base)
            .ancestors()
            .skip(1)
            .filter(|dir| {
                dir.metadata()
                    .is_ok_and(|m| m.permissions().mode() & 0o001 == 0)
            })
            .map(|dir| dir.display().to_string())
            .collect();
        let mut msg = format!(
            "PostgreSQL refuses to run as root, so xtask runs it as user `{user}`, \
             but `{user}` cannot enter {base}."
        );
        if !blocked.is_empty() {
            msg += &format!(
                "\nThese directories are not searchable by other users: {}\n\
                 Fix: chmod o+x {}",
                blocked.join(", "),
                blocked.join(" ")
            );
        }
        msg += "\nOr move the checkout somewhere world-readable, or set DATABASE_URL to an \
                existing PostgreSQL server.";
        Err(anyhow!(msg))
    }

    /// A command run as the cluster's user: directly when we are not root, else through
    /// `runuser` (or `su` where runuser is missing). `program` is a PostgreSQL binary name
    /// or, for anything else, a command on PATH.
    fn pg(&self, program: &str, args: &[&str]) -> Command {
        let path = self.bin.join(program);
        let mut cmd = self.as_user(&path.to_string_lossy(), args);
        cmd.current_dir(&self.layout.base);
        cmd
    }

    fn as_user(&self, program: &str, args: &[&str]) -> Command {
        let Some(user) = &self.run_as else {
            let mut cmd = Command::new(program);
            cmd.args(args);
            return cmd;
        };
        if find_in_path("runuser").is_some() {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", user, "--", program]).args(args);
            cmd
        } else {
            // `-s /bin/sh` because system users such as nobody have a nologin shell.
            let line = std::iter::once(program)
                .chain(args.iter().copied())
                .map(shell_quote)
                .collect::<Vec<_>>()
                .join(" ");
            let mut cmd = Command::new("su");
            cmd.args(["-s", "/bin/sh", user, "-c", &line]);
            cmd
        }
    }

    fn init_if_needed(&self) -> Result<()> {
        let data = Path::new(&self.layout.data);
        if data.join("PG_VERSION").exists() {
            return Ok(());
        }
        if data.exists() {
            // A half-finished initdb (interrupted first run); initdb refuses non-empty dirs.
            eprintln!(
                "xtask: removing incomplete data directory {}",
                self.layout.data
            );
            fs::remove_dir_all(data).with_context(|| format!("removing {}", self.layout.data))?;
        }
        eprintln!(
            "xtask: creating the {} in {} (first run only)",
            self.layout.kind.name(),
            self.layout.data
        );
        let mut initdb = self.pg(
            "initdb",
            &[
                "-D",
                &self.layout.data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        );
        // initdb is chatty; show its output only when it fails.
        let out = initdb.output().context("starting initdb")?;
        if !out.status.success() {
            eprint!("{}", String::from_utf8_lossy(&out.stdout));
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
            bail!("initdb failed (output above)");
        }
        Ok(())
    }

    fn pid_file(&self) -> PathBuf {
        Path::new(&self.layout.data).join("postmaster.pid")
    }

    /// `pg_ctl status`, double-checked with `ps`: in containers a stale pid is often
    /// reused by an unrelated process (which we must never signal), and a killed
    /// postmaster can linger as a zombie until something reaps it.
    fn state(&self) -> Result<State> {
        let Ok(contents) = fs::read_to_string(self.pid_file()) else {
            return Ok(State::Stopped);
        };
        let Some(pid) = contents
            .lines()
            .next()
            .map(str::trim)
            .filter(|p| !p.is_empty())
        else {
            return Ok(State::Stale);
        };
        let running =
            output(&mut self.pg("pg_ctl", &["-D", &self.layout.data, "status"])).is_some();
        let is_live_postgres = output(Command::new("ps").args(["-p", pid, "-o", "stat=,comm="]))
            .is_some_and(|line| {
                let (stat, comm) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
                !stat.starts_with('Z') && (comm.contains("postgres") || comm.contains("postmaster"))
            });
        Ok(if running && is_live_postgres {
            State::Running
        } else {
            State::Stale
        })
    }

    /// `pg_ctl stop -m fast`. If that fails because the server died meanwhile, only
    /// its pid file is left to clean up.
    fn stop(&self) -> Result<()> {
        let stopped = run_quietly(
            &mut self.pg(
                "pg_ctl",
                &["-D", &self.layout.data, "-m", "fast", "-w", "stop"],
            ),
            "pg_ctl stop",
        );
        match (stopped, self.state()?) {
            (Ok(()), _) | (Err(_), State::Stopped) => Ok(()),
            (Err(e), State::Running) => Err(e),
            (Err(_), State::Stale) => self.remove_stale_pid_file(),
        }
    }

    fn remove_stale_pid_file(&self) -> Result<()> {
        let pid_file = self.pid_file();
        fs::remove_file(&pid_file).with_context(|| format!("removing {}", pid_file.display()))
    }

    fn wait_for_port(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if tcp_reachable("127.0.0.1", self.layout.port, CONNECT_TIMEOUT) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn start(&self) -> Result<()> {
        let Layout {
            kind,
            base,
            data,
            log,
            port,
        } = &self.layout;
        // pg_ctl hands -o to /bin/sh, so the socket directory must be shell-quoted.
        let socket_dir = if base.len() + "/.s.PGSQL.65535".len() <= MAX_SOCKET_PATH {
            shell_quote(base)
        } else {
            eprintln!("xtask: {base} is too long for a unix socket path; using TCP only");
            "''".to_string()
        };
        let options = format!(
            "-p {port} -k {socket_dir} -c listen_addresses=127.0.0.1 -c max_connections=200 {}",
            kind.settings()
        );
        eprintln!(
            "xtask: starting the {} on 127.0.0.1:{port} (log: {log})",
            kind.name()
        );
        let started = run_quietly(
            &mut self.pg(
                "pg_ctl",
                &["-D", data, "-l", log, "-w", "-o", &options, "start"],
            ),
            "pg_ctl start",
        );
        if let Err(e) = started {
            eprintln!("xtask: last lines of {log}:");
            eprintln!("{}", tail(Path::new(log), 30));
            return Err(e.context(format!(
                "the {} did not start; if its log says the data files are incompatible or \
                 damaged, delete {base} and try again (it is a throwaway database)",
                kind.name()
            )));
        }
        Ok(())
    }
}

/// The last `n` lines of a file, or a note that it cannot be read.
pub fn tail(path: &Path, n: usize) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// `psql -c 'SELECT 1'` against `url` succeeds (and creates a table, so a cluster whose
/// files are gone fails here rather than in the tests).
fn answers_sql(url: &str) -> bool {
    let Ok(bin) = find_pg_bindir() else {
        return false;
    };
    Command::new(bin.join("psql"))
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "CREATE TEMP TABLE xtask_probe (x int); SELECT 1",
            url,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Where `initdb` and `pg_ctl` live: `pg_config --bindir`, the newest Debian/Ubuntu
/// install, Homebrew's keg-only formulae, then `initdb` on PATH.
pub fn find_pg_bindir() -> Result<PathBuf> {
    let has_tools =
        |dir: &Path| is_executable(&dir.join("initdb")) && is_executable(&dir.join("pg_ctl"));

    // Debian's pg_config comes with libpq-dev and may name a server version that is not installed.
    if let Some(dir) = output(Command::new("pg_config").arg("--bindir")).map(PathBuf::from) {
        if has_tools(&dir) {
            return Ok(dir);
        }
    }
    let mut versioned: Vec<(Vec<u32>, PathBuf)> = Vec::new();
    for (parent, prefix) in [
        ("/usr/lib/postgresql", ""),
        ("/opt/homebrew/opt", "postgresql@"),
        ("/usr/local/opt", "postgresql@"),
    ] {
        let Ok(entries) = fs::read_dir(parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(version) = name.strip_prefix(prefix) else {
                continue;
            };
            let Ok(numbers) = version
                .split('.')
                .map(str::parse)
                .collect::<std::result::Result<Vec<u32>, _>>()
            else {
                continue;
            };
            let dir = entry.path().join("bin");
            if has_tools(&dir) {
                versioned.push((numbers, dir));
            }
        }
    }
    versioned.sort();
    if let Some((_, dir)) = versioned.pop() {
        return Ok(dir);
    }
    if let Some(initdb) = find_in_path("initdb") {
        // Follow symlinks (e.g. /usr/local/bin/initdb) to find pg_ctl next to the real binary.
        let real = fs::canonicalize(&initdb).unwrap_or(initdb.clone());
        for dir in [real.parent(), initdb.parent()].into_iter().flatten() {
            if has_tools(dir) {
                return Ok(dir.to_path_buf());
            }
        }
    }
    bail!(
        "PostgreSQL server binaries (initdb, pg_ctl) were not found.\n\
         Install PostgreSQL:\n  \
           Debian/Ubuntu: sudo apt-get install postgresql\n  \
           macOS:         brew install postgresql@15\n\
         or set DATABASE_URL to an existing server, e.g.\n  \
           export DATABASE_URL=postgres://user:password@localhost:5432/calls"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_that_are_not_postgres_are_not_probed() {
        assert!(matches!(probe("mysql://localhost/db"), Probe::NotReady(_)));
        assert!(matches!(probe("calls"), Probe::NotReady(_)));
    }

    #[test]
    fn the_bench_cluster_is_durable_and_apart_from_the_test_cluster() {
        assert!(!Kind::Durable.settings().contains("=off"));
        assert!(Kind::Test.settings().contains("fsync=off"));
        assert_ne!(Kind::Test.dir(), Kind::Durable.dir());
        assert_ne!(Kind::Test.port_setting(), Kind::Durable.port_setting());
        assert!(!Kind::Drill.settings().contains("=off"));
        assert_ne!(Kind::Drill.dir(), Kind::Durable.dir());
        assert_ne!(Kind::Drill.port_setting(), Kind::Durable.port_setting());
    }

    #[test]
    fn explains_which_directory_locks_the_postgres_user_out() {
        // Only root switches users; elsewhere there is nothing to check.
        if !is_root() {
            return;
        }
        let top = env::temp_dir().join(format!("xtask-locked-{}", std::process::id()));
        let locked = top.join("locked");
        let base = locked.join("xtask-pg");
        assert!(fs::create_dir_all(&base).is_ok());
        assert!(fs::set_permissions(&top, fs::Permissions::from_mode(0o755)).is_ok());
        assert!(fs::set_permissions(&locked, fs::Permissions::from_mode(0o700)).is_ok());
        let base_str = base.to_string_lossy().into_owned();
        let cluster = Cluster {
            layout: Layout {
                kind: Kind::Test,
                data: format!("{base_str}/data"),
                log: format!("{base_str}/postgres.log"),
                base: base_str,
                port: Kind::Test.port_setting().1,
            },
            bin: PathBuf::from("/nonexistent"),
            run_as: Some("nobody".to_string()),
        };
        let result = cluster.hand_over_to("nobody");
        let _ = fs::remove_dir_all(&top);
        let Err(e) = result else {
            panic!("nobody should not be able to enter a 0700 root directory");
        };
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("chmod o+x {}", locked.display())),
            "{msg}"
        );
        assert!(msg.contains("DATABASE_URL"), "{msg}");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = env::temp_dir().join(format!("xtask-tail-{}", std::process::id()));
        let _ = fs::create_dir_all(&dir);
        let file = dir.join("log");
        assert!(fs::write(&file, "1\n2\n3\n4\n").is_ok());
        assert_eq!(tail(&file, 2), "3\n4");
        assert_eq!(tail(&file, 10), "1\n2\n3\n4");
        let _ = fs::remove_dir_all(&dir);
    }
}
