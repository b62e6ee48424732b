//! One error type for every HTTP failure, rendered as the SPEC envelope
//! `{"status":"error","message":…,"details":…}`.
//!
//! Handlers and extractors return `Result<_, ApiError>`. Each error type of a lower layer
//! reaches it through one `From` impl (below for the domain's errors; next to `AuthError`
//! and `BodyError` for the extractors', so that this module depends on nothing of the
//! server), which is the only place that chooses its HTTP status, its message and its
//! [`ErrorKind`] (the label of the outcome metrics). Internal causes are logged here with
//! their chain and never sent to the client.

use std::fmt;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use calls_domain::service::{CreateBatchError, RecordTurnError, StoreFailure};
use calls_domain::{CallSid, RepositoryError, TurnParseError};

/// The error envelope every failure uses.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(as = ErrorBody, example = json!({"status": "error", "message": "Call record not found or incomplete for call_sid: EL_INVALID_999", "details": "Cannot save transcription - Call record not found for call_sid: EL_INVALID_999"}))]
pub struct ErrorEnvelope<'a> {
    /// Always `error`.
    pub status: &'static str,
    pub message: &'a str,
    pub details: &'a str,
}

/// What kind of failure, for outcome metrics: chosen with the status, in the same place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No or wrong credentials (401).
    Unauthenticated,
    /// The request itself is wrong: bad input, too large, wrong content type, too slow,
    /// unknown route or method.
    Invalid,
    /// A well-formed call_sid that no Call can take a turn for.
    UnknownCall,
    /// A resource that does not exist (404).
    NotFound,
    /// The request conflicts with what exists (409).
    Conflict,
    /// The database could not serve the request in time.
    Unavailable,
    /// A bound of the instance was reached (503 with `Retry-After`; `limits.rs`).
    Overloaded,
    /// A bug or a broken invariant.
    Internal,
}

impl ErrorKind {
    /// The `outcome` label of `webhook_transcription_outcomes_total`.
    pub fn outcome_label(self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::UnknownCall => "unknown_call",
            Self::Invalid | Self::NotFound | Self::Conflict => "invalid",
            Self::Unavailable | Self::Internal => "error",
            Self::Overloaded => "overloaded",
        }
    }
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: ErrorKind,
    message: String,
    details: String,
    /// The `Allow` header of a 405.
    allow: Option<String>,
    /// The `Retry-After` header (seconds) of a 503.
    retry_after: Option<u32>,
}

pub const DB_UNAVAILABLE_MESSAGE: &str = "Database connection error. Please retry.";
pub const DB_UNAVAILABLE_DETAILS: &str = "Database temporarily unavailable";

impl ApiError {
    pub fn new(
        status: StatusCode,
        kind: ErrorKind,
        message: impl Into<String>,
        details: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            details: details.into(),
            allow: None,
            retry_after: None,
        }
    }

    /// A bound of the instance was reached: 503, come back after `retry_after_secs`.
    pub fn overloaded(details: impl Into<String>, retry_after_secs: u32) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Overloaded,
            "Server busy. Please retry.",
            details,
        );
        e.retry_after = Some(retry_after_secs);
        e
    }

    pub fn bad_request(message: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorKind::Invalid,
            message,
            details,
        )
    }

    pub fn not_found(message: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorKind::NotFound, message, details)
    }

    /// A method the route does not serve; `allow` lists the ones it does.
    pub fn method_not_allowed(method: &str, path: &str, allow: &str) -> Self {
        let mut e = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::Invalid,
            "Method not allowed",
            format!("{method} is not supported on {path}; use {allow}"),
        );
        e.allow = Some(allow.to_owned());
        e
    }

    /// The database stayed unreachable through the repository's retries, or could not
    /// serve in time.
    pub fn db_unavailable(cause: &dyn std::error::Error) -> Self {
        tracing::error!(error.message = %cause, error.cause_chain = ?ChainDebug(cause), "database unavailable");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Unavailable,
            DB_UNAVAILABLE_MESSAGE,
            DB_UNAVAILABLE_DETAILS,
        )
    }

    /// A bug or broken invariant: logged in full, answered with a fixed text.
    pub fn internal(cause: &dyn std::error::Error) -> Self {
        tracing::error!(error.message = %cause, error.cause_chain = ?ChainDebug(cause), "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Internal,
            "Internal server error",
            "An unexpected error occurred; the request id identifies it in the server log",
        )
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn details(&self) -> &str {
        &self.details
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
        let mut response = HttpResponse::build(self.status);
        if let Some(allow) = self
            .allow
            .as_deref()
            .and_then(|a| HeaderValue::from_str(a).ok())
        {
            response.insert_header((header::ALLOW, allow));
        }
        if let Some(secs) = self.retry_after {
            response.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        response.json(ErrorEnvelope {
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
            RepositoryError::Conflict(detail) => Self::new(
                StatusCode::CONFLICT,
                ErrorKind::Conflict,
                "Conflict",
                detail.clone(),
            ),
            RepositoryError::Unavailable(_) => Self::db_unavailable(&e),
            RepositoryError::Unexpected(_) => Self::internal(&e),
        }
    }
}

/// The seed's wording, kept for every reason (unknown, failed, still without or completed
/// without a conversation_id): ElevenLabs and the dispatcher only need to know the turn
/// was not stored; the reason is logged by the use case.
fn call_record_not_found(call_sid: &CallSid) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        ErrorKind::UnknownCall,
        format!("Call record not found or incomplete for call_sid: {call_sid}"),
        format!("Cannot save transcription - Call record not found for call_sid: {call_sid}"),
    )
}

impl From<RecordTurnError> for ApiError {
    fn from(e: RecordTurnError) -> Self {
        match &e {
            RecordTurnError::CallNotFound { call_sid, .. } => call_record_not_found(call_sid),
            RecordTurnError::Unavailable(_) => Self::db_unavailable(&e),
            RecordTurnError::Unexpected(_) => Self::internal(&e),
        }
    }
}

impl From<TurnParseError> for ApiError {
    fn from(e: TurnParseError) -> Self {
        let field = match e {
            TurnParseError::CallSid(_) => "call_sid",
            TurnParseError::Speaker(_) => "speaker",
            TurnParseError::EmptyMessage | TurnParseError::NulInMessage => "message",
            TurnParseError::Timestamp(_) => "timestamp",
        };
        Self::bad_request(
            format!("Invalid request: invalid field '{field}'"),
            e.to_string(),
        )
    }
}

/// A retried request: attempt 1's call_sid is taken, so nothing was written and nobody
/// dialed. The seed's wording ("already exists") is kept.
fn already_exists(detail: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        ErrorKind::Conflict,
        "Call already exists",
        format!("{detail} (a retried request?); nothing was written and nobody was dialed"),
    )
}

impl From<CreateBatchError> for ApiError {
    fn from(e: CreateBatchError) -> Self {
        match &e {
            CreateBatchError::NotBeforeTooFar { driver } => {
                let field = driver.map_or_else(
                    || "schedule.notBefore".to_owned(),
                    |i| format!("drivers[{i}].notBefore"),
                );
                Self::bad_request("Invalid batch request", format!("{field}: {e}"))
            }
            CreateBatchError::NeverDue { driver } => {
                Self::bad_request("Invalid batch request", format!("drivers[{driver}]: {e}"))
            }
            CreateBatchError::AlreadyExists(detail) => already_exists(detail),
            CreateBatchError::Unavailable(_) => Self::db_unavailable(&e),
            CreateBatchError::Unexpected(_) => Self::internal(&e),
        }
    }
}

/// Also `PostCallError`, an alias of it.
impl From<StoreFailure> for ApiError {
    fn from(e: StoreFailure) -> Self {
        match &e {
            StoreFailure::Unavailable(_) => Self::db_unavailable(&e),
            StoreFailure::Unexpected(_) => Self::internal(&e),
        }
    }
}
