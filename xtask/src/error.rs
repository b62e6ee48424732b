//! One small error type for every command: no anyhow, to keep xtask dependency-free.

use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// Something went wrong; the text says what and, where possible, how to fix it.
    Msg(String),
    /// A child process failed. It has already printed its own diagnostics, so we only
    /// name it and pass its exit code on as ours.
    Failed { what: String, code: i32 },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The exit code xtask should end with.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Msg(_) => 1,
            Error::Failed { code, .. } => *code,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Msg(msg) => f.write_str(msg),
            Error::Failed { what, code } => write!(f, "{what} failed (exit code {code})"),
        }
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(msg: String) -> Self {
        Error::Msg(msg)
    }
}

impl From<&str> for Error {
    fn from(msg: &str) -> Self {
        Error::Msg(msg.to_string())
    }
}

/// Attach what we were doing to a lower-level error, so a bare "Permission denied"
/// becomes "creating /x/y: Permission denied".
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::Msg(format!("{}: {e}", what())))
    }
}
