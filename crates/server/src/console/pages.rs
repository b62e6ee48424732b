//! The console's pages: login and logout, the call listing, one Call.

use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use calls_domain::{CallSid, RepositoryError};
use serde::Deserialize;
use time::OffsetDateTime;

use super::session::{ConsoleSession, SessionId, removal_cookie};
use super::views::{
    BatchLink, CallDetail, CallItem, CallPage, CallsPage, FilterField, Layout, LoginPage,
    STATUS_OPTIONS, TurnItem, call_href,
};
use super::{ConsoleError, html, no_store};
use crate::routes::calls::listing;
use crate::state::AppState;

/// Without an API_TOKEN (possible only with INSECURE_DEV) any token logs in; every other
/// check (sessions, form tokens) works as in production.
fn open_console(state: &AppState) -> bool {
    state.settings.api_token.is_none()
}

/// `/console`: the calls, once logged in (like every page, the login first otherwise).
pub async fn home(_session: ConsoleSession) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/console/calls"))
        .finish()
}

fn login_page(state: &AppState, status: StatusCode, message: Option<String>) -> HttpResponse {
    html(
        HttpResponse::build(status),
        &LoginPage {
            layout: Layout::anonymous(open_console(state)),
            message,
        },
    )
}

pub async fn login_form(state: web::Data<AppState>) -> HttpResponse {
    login_page(&state, StatusCode::OK, None)
}

#[derive(Debug, Default, Deserialize)]
struct LoginForm {
    token: Option<String>,
}

/// Checks the API token; on success stores a new session and sends the browser to the
/// calls with its cookie. Failed attempts are limited per client address.
pub async fn login(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let console = &state.console;
    let client = req.peer_addr().map(|a| a.ip());
    let now = Instant::now();
    if let Some(ip) = client {
        if !console.limiter.allows(ip, now) {
            let mut page = login_page(
                &state,
                StatusCode::TOO_MANY_REQUESTS,
                Some(
                    "Too many failed attempts from your address. Wait a minute, then try again."
                        .into(),
                ),
            );
            page.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("60"));
            return Ok(page);
        }
    }
    let form: LoginForm = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let provided = form.token.unwrap_or_default();
    let accepted = match state.settings.api_token.as_ref() {
        Some(token) => crate::auth::constant_time_eq(
            provided.trim(),
            secrecy::ExposeSecret::expose_secret(token),
        ),
        None => true,
    };
    if !accepted {
        if let Some(ip) = client {
            console.limiter.failed(ip, now);
        }
        tracing::warn!("console login refused: wrong API token");
        return Ok(login_page(
            &state,
            StatusCode::UNAUTHORIZED,
            Some("Wrong API token.".into()),
        ));
    }
    let id = SessionId::generate().map_err(|e| {
        tracing::error!(error.message = %e, "console: no randomness for a session id");
        ConsoleError::Internal
    })?;
    let sessions = console.sessions()?;
    let ttl = state.settings.console.session_ttl;
    let now_utc = OffsetDateTime::now_utc();
    sessions.create(&id.hash(), now_utc + ttl).await?;
    // Housekeeping where sessions are made, so the table stays small without a timer.
    if let Err(e) = sessions.purge_expired(now_utc).await {
        tracing::warn!(error.message = %e, "console: could not purge expired sessions");
    }
    tracing::info!("console login");
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/console/calls"))
        .insert_header(no_store())
        .cookie(id.cookie(ttl, state.settings.console.secure_cookie))
        .finish())
}

/// The form token of a submitted `application/x-www-form-urlencoded` body.
pub fn form_token_of(body: &[u8]) -> Option<String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .ok()?
        .into_iter()
        .find(|(name, _)| name == super::FORM_TOKEN_FIELD)
        .map(|(_, value)| value)
}

/// Ends the session (in PostgreSQL, so on every instance) and forgets the cookie.
pub async fn logout(
    session: ConsoleSession,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    if !session.accepts_form_token(form_token_of(&body).as_deref()) {
        return Err(ConsoleError::BadFormToken);
    }
    state.console.sessions()?.delete(&session.hash()).await?;
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/console/login"))
        .insert_header(no_store())
        .cookie(removal_cookie(state.settings.console.secure_cookie))
        .finish())
}

/// The filters of `GET /calls`, in the order the form shows them.
const FILTERS: [(&str, &str, &str); 5] = [
    ("status", "Status", ""),
    ("driver_id", "Driver id", "e.g. 333"),
    ("since", "Started at or after", "e.g. 2024-11-21"),
    ("until", "Started before", "e.g. 2024-11-22"),
    ("limit", "Per page", "1–500, default 50"),
];
/// Console-only parameter: the cursors of the pages before this one (`-` for the first),
/// so "Previous page" is a plain link too.
const PREV: &str = "prev";

fn encode(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

fn listing_href(filters: &[(&str, &str)], cursor: Option<&str>, prev: &[&str]) -> String {
    let mut pairs: Vec<(&str, &str)> = filters.to_vec();
    if let Some(cursor) = cursor {
        pairs.push(("cursor", cursor));
    }
    pairs.extend(prev.iter().map(|p| (PREV, *p)));
    let query = encode(&pairs);
    if query.is_empty() {
        "/console/calls".to_owned()
    } else {
        format!("/console/calls?{query}")
    }
}

/// The call listing: `GET /calls`'s parameters, parsed by the same code, read by the same
/// repository call. A bad filter shows the page with the error next to it (400).
pub async fn calls(
    session: ConsoleSession,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let layout = Layout::logged_in(session.form_token(), "calls", open_console(&state));
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(req.query_string()).unwrap_or_default();
    let value_of = |name: &str| {
        pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut fields: Vec<FilterField> = FILTERS
        .iter()
        .map(|(name, label, hint)| FilterField {
            name,
            label,
            hint,
            value: value_of(name),
            error: None,
        })
        .collect();
    // Empty form fields mean "no filter"; the console's own parameter is not the API's.
    let api_pairs: Vec<(&str, &str)> = pairs
        .iter()
        .filter(|(name, value)| !value.is_empty() && name != PREV)
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let filters: Vec<(&str, &str)> = api_pairs
        .iter()
        .copied()
        .filter(|(name, _)| *name != "cursor")
        .collect();
    let prev: Vec<&str> = pairs
        .iter()
        .filter(|(n, _)| n == PREV)
        .map(|(_, v)| v.as_str())
        .collect();
    let cursor = api_pairs
        .iter()
        .find(|(n, _)| *n == "cursor")
        .map(|(_, v)| *v);

    let mut page = CallsPage {
        layout,
        fields: Vec::new(),
        general_error: None,
        filter_invalid: false,
        status_options: STATUS_OPTIONS,
        calls: Vec::new(),
        previous_href: None,
        next_href: None,
    };
    let query = match listing::parse(&encode(&api_pairs)) {
        Ok(query) => query,
        Err(e) => {
            let name = e
                .message()
                .strip_prefix("Invalid query parameter: ")
                .map(str::to_owned)
                .or_else(|| {
                    e.message()
                        .starts_with("Invalid query parameters: since, until")
                        .then(|| "until".to_owned())
                });
            match fields.iter_mut().find(|f| name.as_deref() == Some(f.name)) {
                Some(field) => field.error = Some(e.details().to_owned()),
                None => page.general_error = Some(e.details().to_owned()),
            }
            page.fields = fields;
            page.filter_invalid = true;
            return Ok(html(HttpResponse::BadRequest(), &page));
        }
    };
    let result = state.repository.list_calls(&query).await?;
    page.calls = result.calls.iter().map(CallItem::from_call).collect();
    page.next_href = result.next.map(|next| {
        let next_cursor = listing::cursor_after(&query, next);
        let mut trail = prev.clone();
        trail.push(cursor.unwrap_or("-"));
        listing_href(&filters, Some(&next_cursor), &trail)
    });
    if let Some((last, earlier)) = prev.split_last() {
        let back = (*last != "-").then_some(*last);
        page.previous_href = Some(listing_href(&filters, back, earlier));
    }
    page.fields = fields;
    Ok(html(HttpResponse::Ok(), &page))
}

fn unknown_call(raw: &str) -> ConsoleError {
    ConsoleError::NotFound {
        title: "Call not found".to_owned(),
        detail: format!("No call has call_sid {raw}."),
    }
}

/// One Call: its facts, outcome and transcript; live while it is in progress.
pub async fn call(
    session: ConsoleSession,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let raw = path.into_inner();
    let call_sid = CallSid::parse(&raw).map_err(|_| unknown_call(&raw))?;
    let call = state
        .repository
        .get_by_call_sid(&call_sid)
        .await?
        .ok_or_else(|| unknown_call(&raw))?;
    let turns = match state.repository.list_turns(&call_sid).await {
        Ok(turns) => turns,
        Err(RepositoryError::NotFound) => return Err(unknown_call(&raw)),
        Err(e) => return Err(e.into()),
    };
    let live = !call.status.is_terminal();
    let mut detail = CallDetail::from_call(&call);
    detail.batch = state
        .read_batches
        .attempt_of(&call_sid)
        .await?
        .map(|(batch_id, attempt)| BatchLink::new(&batch_id, attempt));
    let page = CallPage {
        layout: Layout::logged_in(session.form_token(), "calls", open_console(&state)),
        call: detail,
        last_seq: turns.last().map_or(0, |t| t.sequence_number),
        turns: turns.iter().map(TurnItem::from_turn).collect(),
        live,
        events_href: format!("{}/events", call_href(call_sid.as_str())),
    };
    Ok(html(HttpResponse::Ok(), &page))
}

/// Any other path under `/console`.
pub async fn unknown_page(
    _session: ConsoleSession,
    req: HttpRequest,
) -> Result<HttpResponse, ConsoleError> {
    Err(ConsoleError::NotFound {
        title: "Page not found".to_owned(),
        detail: format!("There is no console page at {}.", req.path()),
    })
}

pub async fn stylesheet() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(include_str!("../../static/console.css"))
}

pub async fn script() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(include_str!("../../static/live.js"))
}
