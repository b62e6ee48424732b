//! `cargo xtask db up|down|url`: pick the PostgreSQL to develop and test against.
//!
//! A reachable `DATABASE_URL` wins. Otherwise xtask runs a private cluster under
//! `target/xtask-pg`, on 127.0.0.1 only, with trust auth and fsync off: it is a
//! throwaway database, so speed matters more than durability.

use std::env;
use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Context, Error, Result};
use crate::process::{
    find_in_path, is_executable, is_root, output, project_root, run_quietly, shell_quote,
    tcp_reachable,
};

const DEFAULT_PG_PORT: u16 = 54329;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// `sun_path` is 108 bytes on Linux (104 on macOS); longer socket paths make postgres fail.
const MAX_SOCKET_PATH: usize = 100;

pub fn cmd(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("up") | Some("url") => {
            // Only the URL goes to stdout, so `export DATABASE_URL=$(cargo xtask db url)` works.
            println!("{}", ensure_database()?);
            Ok(())
        }
        Some("down") => down(),
        Some(other) => {
            Err(format!("unknown db command `{other}`; expected up, down or url").into())
        }
        None => Err("missing db command; expected up, down or url".into()),
    }
}

/// Make sure a database is available and return its URL. Callers hand it to their
/// children as `DATABASE_URL`; nothing is exported into our own environment.
pub fn ensure_database() -> Result<String> {
    if let Some(url) = user_database_url() {
        match parse_endpoint(&url) {
            Ok(endpoint) if endpoint.reachable() => {
                eprintln!("xtask: using DATABASE_URL ({endpoint})");
                return Ok(url);
            }
            Ok(endpoint) => eprintln!(
                "xtask: DATABASE_URL is set but {endpoint} is not reachable; \
                 using the private cluster instead"
            ),
            Err(e) => eprintln!(
                "xtask: cannot read DATABASE_URL ({e}); using the private cluster instead"
            ),
        }
    }
    ensure_private(&project_root()?)
}

fn user_database_url() -> Option<String> {
    env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
}

fn down() -> Result<()> {
    if let Some(url) = user_database_url() {
        let target = parse_endpoint(&url).map_or_else(|e| e, |endpoint| endpoint.to_string());
        eprintln!(
            "xtask: DATABASE_URL is in use ({target}); xtask does not manage that server \
             and leaves it running."
        );
    }
    let root = project_root()?;
    let fallback = Layout::fallback(&root)?;
    let layout = if Path::new(&fallback.data).join("PG_VERSION").exists() {
        fallback
    } else {
        Layout::new(&root)?
    };
    if !Path::new(&layout.data).join("PG_VERSION").exists() {
        eprintln!(
            "xtask: no private cluster in {}; nothing to stop",
            layout.base
        );
        return Ok(());
    }
    let cluster = Cluster::prepare(layout)?;
    match cluster.state()? {
        State::Running => {
            cluster.stop()?;
            eprintln!("xtask: private cluster stopped");
        }
        State::Stale => {
            cluster.remove_stale_pid_file()?;
            eprintln!("xtask: private cluster was not running (removed a stale pid file)");
        }
        State::Stopped => eprintln!("xtask: private cluster is not running"),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Where a postgres URL points

/// The server a `postgres://` URL points at, enough to check that it is up.
#[derive(Debug, PartialEq, Eq)]
pub enum Endpoint {
    Tcp {
        host: String,
        port: u16,
    },
    /// No host in the URL: libpq uses a unix socket in this directory.
    Unix {
        dir: String,
        port: u16,
    },
}

impl Endpoint {
    fn reachable(&self) -> bool {
        match self {
            Endpoint::Tcp { host, port } => tcp_reachable(host, *port, CONNECT_TIMEOUT),
            Endpoint::Unix { dir, port } => {
                UnixStream::connect(format!("{dir}/.s.PGSQL.{port}")).is_ok()
            }
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Endpoint::Tcp { host, port } => write!(f, "{host}:{port}"),
            Endpoint::Unix { dir, port } => write!(f, "socket {dir}/.s.PGSQL.{port}"),
        }
    }
}

/// Parse `postgres://user[:pw]@host[:port]/db?...` far enough to find the server.
/// Also understands `[v6]:port`, a host list (first one wins) and `?host=`/`?port=`.
pub fn parse_endpoint(url: &str) -> std::result::Result<Endpoint, String> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or("expected a postgres:// or postgresql:// URL")?;
    let (authority, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    // The password may contain '@', so the host starts after the last one.
    let hosts = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let first = hosts.split(',').next().unwrap_or_default();

    let (mut host, port) = if let Some(bracketed) = first.strip_prefix('[') {
        let (v6, after) = bracketed.split_once(']').ok_or("unclosed '[' in host")?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or("unexpected text after ']'")?),
        };
        (v6.to_string(), port)
    } else {
        match first.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (first.to_string(), None),
        }
    };
    let mut port = match port {
        None | Some("") => 5432,
        Some(p) => p.parse().map_err(|_| format!("invalid port `{p}`"))?,
    };

    let query = tail
        .split_once('?')
        .map_or("", |(_, q)| q.split('#').next().unwrap_or_default());
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("host", v)) if host.is_empty() => host = percent_decode(v),
            Some(("port", v)) => port = v.parse().map_err(|_| format!("invalid port `{v}`"))?,
            _ => {}
        }
    }

    if host.is_empty() {
        let dir = if cfg!(target_os = "macos") {
            "/tmp"
        } else {
            "/var/run/postgresql"
        };
        Ok(Endpoint::Unix {
            dir: dir.to_string(),
            port,
        })
    } else if host.starts_with('/') {
        Ok(Endpoint::Unix { dir: host, port })
    } else {
        Ok(Endpoint::Tcp { host, port })
    }
}

/// Decode `%2F`-style escapes (a socket directory in `?host=` is usually escaped).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------
// The private cluster

/// Paths of the private cluster, as strings because they end up in shell command lines.
struct Layout {
    base: String,
    data: String,
    log: String,
    port: u16,
}

impl Layout {
    fn new(root: &Path) -> Result<Self> {
        Self::at(root.join("target").join("xtask-pg"))
    }

    /// Where the cluster lives when the `postgres` user cannot reach the checkout (a clone
    /// under root's home, say): a directory in the temp dir, named after the checkout so
    /// that it is reused across runs.
    fn fallback(root: &Path) -> Result<Self> {
        use std::hash::{Hash, Hasher};
        // DefaultHasher::new() has fixed keys: the same checkout gets the same directory.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        root.hash(&mut hasher);
        Self::at(env::temp_dir().join(format!("calls-xtask-pg-{:016x}", hasher.finish())))
    }

    fn at(base: PathBuf) -> Result<Self> {
        let str_of = |p: PathBuf| {
            p.to_str()
                .map(str::to_string)
                .ok_or_else(|| Error::from(format!("path is not UTF-8: {}", p.display())))
        };
        let port = match env::var("XTASK_PG_PORT") {
            Ok(p) if !p.is_empty() => p
                .parse()
                .map_err(|_| format!("XTASK_PG_PORT must be a port number, got `{p}`"))?,
            _ => DEFAULT_PG_PORT,
        };
        Ok(Layout {
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

fn ensure_private(root: &Path) -> Result<String> {
    let layout = Layout::new(root)?;
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
            "xtask: something listens on 127.0.0.1:{} but does not answer SQL; starting our own cluster",
            layout.port
        );
    }

    let fallback = Layout::fallback(root)?;
    let cluster = if Path::new(&fallback.data).join("PG_VERSION").exists() {
        Cluster::prepare(fallback)?
    } else {
        match Cluster::prepare(layout) {
            Ok(cluster) => cluster,
            Err(e) if is_root() => {
                eprintln!("xtask: {e}");
                eprintln!(
                    "xtask: keeping the private cluster in {} instead",
                    fallback.base
                );
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
                    "xtask: reusing the private cluster on 127.0.0.1:{}",
                    cluster.layout.port
                );
                return Ok(url);
            }
            eprintln!(
                "xtask: private cluster runs but not on port {}; restarting it",
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
        fs::create_dir_all(&layout.base).context(|| format!("creating {}", layout.base))?;
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
        Err(msg.into())
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
            fs::remove_dir_all(data).context(|| format!("removing {}", self.layout.data))?;
        }
        eprintln!(
            "xtask: creating the private cluster in {} (first run only)",
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
        let out = initdb.output().context(|| "starting initdb".to_string())?;
        if !out.status.success() {
            eprint!("{}", String::from_utf8_lossy(&out.stdout));
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
            return Err("initdb failed (output above)".into());
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
        fs::remove_file(&pid_file).context(|| format!("removing {}", pid_file.display()))
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
            base,
            data,
            log,
            port,
            ..
        } = &self.layout;
        // pg_ctl hands -o to /bin/sh, so the socket directory must be shell-quoted.
        let socket_dir = if base.len() + "/.s.PGSQL.65535".len() <= MAX_SOCKET_PATH {
            shell_quote(base)
        } else {
            eprintln!("xtask: {base} is too long for a unix socket path; using TCP only");
            "''".to_string()
        };
        let options = format!(
            "-p {port} -k {socket_dir} -c listen_addresses=127.0.0.1 -c max_connections=200 \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        );
        eprintln!("xtask: starting the private cluster on 127.0.0.1:{port} (log: {log})");
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
            return Err(format!(
                "{e}\nIf the log says the data files are incompatible or damaged, delete {base} \
                 and try again (it is a throwaway database)."
            )
            .into());
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

/// Where `initdb` and `pg_ctl` live: `pg_config --bindir`, the newest Debian/Ubuntu
/// install, Homebrew's keg-only formulae, then `initdb` on PATH.
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

fn find_pg_bindir() -> Result<PathBuf> {
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
    Err(
        "PostgreSQL server binaries (initdb, pg_ctl) were not found.\n\
         Install PostgreSQL:\n  \
           Debian/Ubuntu: sudo apt-get install postgresql\n  \
           macOS:         brew install postgresql@15\n\
         or set DATABASE_URL to an existing server, e.g.\n  \
           export DATABASE_URL=postgres://user:password@localhost:5432/calls"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> Endpoint {
        Endpoint::Tcp {
            host: host.to_string(),
            port,
        }
    }

    #[test]
    fn parses_host_and_port() {
        assert_eq!(
            parse_endpoint("postgres://app:secret@db.internal:6543/calls"),
            Ok(tcp("db.internal", 6543))
        );
    }

    #[test]
    fn port_defaults_to_5432() {
        assert_eq!(
            parse_endpoint("postgres://postgres@localhost/postgres"),
            Ok(tcp("localhost", 5432))
        );
        assert_eq!(
            parse_endpoint("postgresql://localhost"),
            Ok(tcp("localhost", 5432))
        );
        assert_eq!(parse_endpoint("postgres://u@h:/d"), Ok(tcp("h", 5432)));
    }

    #[test]
    fn ignores_query_and_at_signs_in_the_password() {
        assert_eq!(
            parse_endpoint("postgres://u:p@ss@127.0.0.1:54329/postgres?sslmode=disable&x=@y"),
            Ok(tcp("127.0.0.1", 54329))
        );
    }

    #[test]
    fn parses_ipv6_and_host_lists() {
        assert_eq!(
            parse_endpoint("postgres://u@[::1]:5433/db"),
            Ok(tcp("::1", 5433))
        );
        assert_eq!(parse_endpoint("postgres://[::1]/db"), Ok(tcp("::1", 5432)));
        assert_eq!(parse_endpoint("postgres://u@a:1,b:2/db"), Ok(tcp("a", 1)));
    }

    #[test]
    fn hostless_urls_use_a_unix_socket() {
        assert_eq!(
            parse_endpoint("postgres:///calls?host=%2Ftmp%2Fpg&port=5499"),
            Ok(Endpoint::Unix {
                dir: "/tmp/pg".to_string(),
                port: 5499
            })
        );
        assert!(matches!(
            parse_endpoint("postgres:///calls"),
            Ok(Endpoint::Unix { port: 5432, .. })
        ));
    }

    #[test]
    fn rejects_bad_urls() {
        assert!(parse_endpoint("mysql://localhost/db").is_err());
        assert!(parse_endpoint("postgres://localhost:99999/db").is_err());
        assert!(parse_endpoint("postgres://localhost:abc/db").is_err());
        assert!(parse_endpoint("postgres://[::1/db").is_err());
    }

    #[test]
    fn endpoint_display() {
        assert_eq!(tcp("::1", 5432).to_string(), "[::1]:5432");
        assert_eq!(tcp("localhost", 5432).to_string(), "localhost:5432");
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
                data: format!("{base_str}/data"),
                log: format!("{base_str}/postgres.log"),
                base: base_str,
                port: DEFAULT_PG_PORT,
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
