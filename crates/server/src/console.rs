//! The dispatcher console: server-rendered HTML pages under `/console` (docs/console.md).
//!
//! Pages read through the same repository calls as the JSON API (`GET /calls` and its
//! parameter parser); sessions live in PostgreSQL; live pages are fed by Server-Sent
//! Events from the instance's [`ChangeFeed`] (PostgreSQL LISTEN/NOTIFY).

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, HttpResponseBuilder, ResponseError, web};
use askama::Template;
use calls_domain::RepositoryError;

mod batches;
mod limiter;
mod live;
mod pages;
mod session;
mod state;
mod views;

pub use limiter::{LoginLimiter, LoginLimits};
pub use session::{COOKIE_NAME, ConsoleSession, FORM_TOKEN_FIELD};
pub use state::ConsoleState;

/// The console's routes, under `/console`; wired next to the API's route table.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/console")
            // The console's forms are a token or two: small bodies only.
            .app_data(web::PayloadConfig::new(FORM_BODY_LIMIT))
            .route("", web::get().to(pages::home))
            .route("/", web::get().to(pages::home))
            .route("/login", web::get().to(pages::login_form))
            .route("/login", web::post().to(pages::login))
            .route("/logout", web::post().to(pages::logout))
            .route("/calls", web::get().to(pages::calls))
            .route("/calls/{call_sid}", web::get().to(pages::call))
            .route("/calls/{call_sid}/events", web::get().to(live::events))
            .route("/batches", web::get().to(batches::list))
            .route("/batches/{batch_id}", web::get().to(batches::show))
            .route(
                "/batches/{batch_id}/cancel",
                web::post().to(batches::cancel),
            )
            .route("/static/console.css", web::get().to(pages::stylesheet))
            .route("/static/live.js", web::get().to(pages::script))
            .default_service(web::to(pages::unknown_page)),
    );
}

/// Largest form body the console reads (login, logout, cancel), in bytes.
pub const FORM_BODY_LIMIT: usize = 4096;

/// Why a console page is not shown; each renders as a page, never as the JSON envelope.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("login required")]
    NeedLogin,
    #[error("{title}")]
    NotFound { title: String, detail: String },
    #[error("missing or wrong form token")]
    BadFormToken,
    #[error("database unavailable")]
    Unavailable,
    #[error("internal error")]
    Internal,
}

impl From<RepositoryError> for ConsoleError {
    fn from(e: RepositoryError) -> Self {
        match e {
            RepositoryError::Unavailable(cause) => {
                tracing::error!(error.cause_chain = ?cause, "console: database unavailable");
                Self::Unavailable
            }
            other => {
                tracing::error!(error.cause_chain = ?other, error.message = %other, "console: unexpected repository error");
                Self::Internal
            }
        }
    }
}

impl ResponseError for ConsoleError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::NeedLogin => StatusCode::SEE_OTHER,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::BadFormToken => StatusCode::FORBIDDEN,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let (title, detail) = match self {
            Self::NeedLogin => {
                return HttpResponse::SeeOther()
                    .insert_header((header::LOCATION, "/console/login"))
                    .insert_header(no_store())
                    .finish();
            }
            Self::NotFound { title, detail } => (title.as_str(), detail.as_str()),
            Self::BadFormToken => (
                "Forbidden",
                "This form was not sent from a page of your console session (its form token is missing or wrong). Nothing was changed. Reload the page and try again.",
            ),
            Self::Unavailable => (
                "Database unavailable",
                "The database cannot be reached right now. Please retry in a moment.",
            ),
            Self::Internal => (
                "Something went wrong",
                "The page could not be shown. The error was logged.",
            ),
        };
        let page = views::ErrorPage {
            layout: views::Layout::anonymous(false),
            title,
            detail,
        };
        html(HttpResponse::build(self.status_code()), &page)
    }
}

/// `Cache-Control: no-store`: console pages show live data and belong to one session.
fn no_store() -> (header::HeaderName, HeaderValue) {
    (header::CACHE_CONTROL, HeaderValue::from_static("no-store"))
}

/// Only our own stylesheet and script; no inline script, no other host, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Renders a page with the console's security headers.
fn html(mut builder: HttpResponseBuilder, page: &impl Template) -> HttpResponse {
    match page.render() {
        Ok(body) => builder
            .content_type("text/html; charset=utf-8")
            .insert_header(no_store())
            .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
            .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
            .insert_header((header::REFERRER_POLICY, "same-origin"))
            .body(body),
        Err(e) => {
            tracing::error!(error.message = %e, "console: template failed to render");
            HttpResponse::InternalServerError()
                .content_type("text/plain; charset=utf-8")
                .body("The page could not be rendered.")
        }
    }
}
