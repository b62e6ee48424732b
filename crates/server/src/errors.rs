//! One error type for every HTTP failure, rendered as the SPEC envelope
//! `{"status":"error","message":…,"details":…}`. Which type to use where:
//! handlers return `Result<_, ApiError>`; domain and port errors reach it through `From`
//! impls with an explicit status; internal causes are logged here with their chain and
//! never sent to the client.

use std::fmt;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use calls_domain::RepositoryError;
use calls_domain::service::RecordTurnError;

pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, serde::Serialize)]
pub struct ErrorEnvelope<'a> {
    pub status: &'static str,
    pub message: &'a str,
    pub details: &'a str,
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    details: String,
}

pub const DB_UNAVAILABLE_MESSAGE: &str = "Database connection error. Please retry.";
pub const DB_UNAVAILABLE_DETAILS: &str = "Database temporarily unavailable";

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            details: details.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message, details)
    }

    pub fn unauthorized(details: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", details)
    }

    pub fn not_found(message: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message, details)
    }

    pub fn conflict(message: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message, details)
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body too large",
            format!("The body must be at most {limit} bytes"),
        )
    }

    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported content type",
            "Send the body as JSON with Content-Type: application/json",
        )
    }

    /// The database stayed unreachable through the repository's retries.
    pub fn db_unavailable(cause: &dyn std::error::Error) -> Self {
        tracing::error!(error.message = %cause, error.cause_chain = ?ChainDebug(cause), "database unavailable");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            DB_UNAVAILABLE_MESSAGE,
            DB_UNAVAILABLE_DETAILS,
        )
    }

    /// A bug or broken invariant: logged in full, answered with a fixed text.
    pub fn internal(cause: &dyn std::error::Error) -> Self {
        tracing::error!(error.message = %cause, error.cause_chain = ?ChainDebug(cause), "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal server error",
            "An unexpected error occurred; the request id identifies it in the server log",
        )
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Prints an error and all its sources.
struct ChainDebug<'a>(&'a dyn std::error::Error);

impl fmt::Debug for ChainDebug<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(ErrorEnvelope {
            status: "error",
            message: &self.message,
            details: &self.details,
        })
    }
}

impl From<RepositoryError> for ApiError {
    fn from(e: RepositoryError) -> Self {
        match &e {
            RepositoryError::NotFound => Self::not_found("Not found", "No such call"),
            RepositoryError::Incomplete { .. } => {
                Self::bad_request("Call record incomplete", e.to_string())
            }
            RepositoryError::Conflict(detail) => Self::conflict("Conflict", detail.clone()),
            RepositoryError::Unavailable(_) => Self::db_unavailable(&e),
            RepositoryError::Unexpected(_) => Self::internal(&e),
        }
    }
}

impl From<RecordTurnError> for ApiError {
    fn from(e: RecordTurnError) -> Self {
        match &e {
            RecordTurnError::CallNotFound { call_sid, .. } => Self::bad_request(
                format!("Call record not found or incomplete for call_sid: {call_sid}"),
                format!(
                    "Cannot save transcription - Call record not found for call_sid: {call_sid}"
                ),
            ),
            RecordTurnError::Unavailable(_) => Self::db_unavailable(&e),
            RecordTurnError::Unexpected(_) => Self::internal(&e),
        }
    }
}
