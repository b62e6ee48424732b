//! Helpers for paths, child processes and plain TCP checks.

use std::env;
use std::fmt;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};

/// A child process failed. It has printed its own diagnostics, so the error only names it;
/// xtask ends with the child's exit code.
#[derive(Debug)]
pub struct ChildFailed {
    pub what: String,
    pub code: i32,
}

impl fmt::Display for ChildFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed (exit code {})", self.what, self.code)
    }
}

impl std::error::Error for ChildFailed {}

/// The workspace root: xtask lives in `<root>/xtask`.
pub fn project_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("xtask's manifest directory has no parent"))
}

/// Where cargo puts build output; honours `CARGO_TARGET_DIR` like cargo does.
pub fn target_dir(root: &Path) -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

/// `cargo`, the same one that runs us (cargo sets `CARGO`), run from the workspace root.
pub fn cargo(root: &Path) -> Command {
    let program = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    cmd.current_dir(root);
    cmd
}

/// A child's exit status as a shell would report it (128 + signal when killed).
fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    }
}

/// A non-zero exit becomes `ChildFailed`, which carries the child's exit code.
pub fn check(status: ExitStatus, what: &str) -> Result<()> {
    if status.success() {
        return Ok(());
    }
    Err(ChildFailed {
        what: what.to_string(),
        code: exit_code(status),
    }
    .into())
}

/// Run a command to completion with inherited stdio; fail if it exits non-zero.
pub fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {what}"))?;
    check(status, what)
}

/// Like `run`, but the child's stdout goes to our stderr, so commands whose stdout is
/// meant for machines (`db up` prints only the URL) stay clean.
pub fn run_quietly(cmd: &mut Command, what: &str) -> Result<()> {
    cmd.stdout(Stdio::from(std::io::stderr()));
    run(cmd, what)
}

/// Run a command and return its trimmed stdout if it succeeded.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Quote a word for `/bin/sh`, for command lines we print or hand to `su -c`.
pub fn shell_quote(s: &str) -> String {
    // Only a NUL byte cannot be quoted; none of our words (paths, URLs, JSON) has one.
    shlex::try_quote(s).map_or_else(|_| s.replace('\0', ""), |q| q.into_owned())
}

/// Search `PATH` for an executable file.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Can we open a TCP connection to `host:port` within `timeout`? Tries every address
/// the name resolves to (localhost may be both ::1 and 127.0.0.1).
pub fn tcp_reachable(host: &str, port: u16, timeout: Duration) -> bool {
    let Ok(addrs) = (host, port).to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|addr| TcpStream::connect_timeout(&addr, timeout).is_ok())
}

/// Are we root? PostgreSQL refuses to run as root, so the db code must switch users.
pub fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|uid| uid == "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_round_trips_through_a_shell_parser() {
        for word in ["/work/main/target", "a b", "it's", "", r#"{"a":"b c"}"#] {
            assert_eq!(
                shlex::split(&shell_quote(word)),
                Some(vec![word.to_string()]),
                "{word}"
            );
        }
        assert_eq!(shell_quote("/work/main/target"), "/work/main/target");
    }

    #[test]
    fn failed_children_keep_their_exit_code() {
        let status = Command::new("sh")
            .args(["-c", "exit 3"])
            .status()
            .expect("sh runs");
        let err = check(status, "sh").err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("sh failed (exit code 3)"));
    }
}
