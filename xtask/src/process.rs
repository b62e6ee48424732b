//! Helpers for paths, child processes and plain TCP checks.

use std::env;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::error::{Context, Error, Result};

/// The workspace root: xtask lives in `<root>/xtask`.
pub fn project_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| Error::from("xtask's manifest directory has no parent"))
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
pub fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    }
}

/// Turn a non-zero exit into `Error::Failed` that carries the child's exit code.
pub fn check(status: ExitStatus, what: &str) -> Result<()> {
    if status.success() {
        Ok(())
    } else {
        Err(Error::Failed {
            what: what.to_string(),
            code: exit_code(status),
        })
    }
}

/// Run a command to completion with inherited stdio; fail if it exits non-zero.
pub fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().context(|| format!("starting {what}"))?;
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

/// Quote a string for `/bin/sh` (single quotes; an embedded `'` becomes `'\''`).
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
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
    fn shell_quote_leaves_plain_words_alone() {
        assert_eq!(shell_quote("/work/main/target"), "/work/main/target");
        assert_eq!(
            shell_quote("listen_addresses=127.0.0.1"),
            "listen_addresses=127.0.0.1"
        );
    }

    #[test]
    fn shell_quote_quotes_spaces_and_quotes() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
