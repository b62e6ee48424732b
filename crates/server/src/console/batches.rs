//! Batch pages: the listing with counts, one batch with each driver's state, attempts
//! (linked to their Calls) and next attempt time in the driver's own time zone, and the
//! Cancel form. Read and cancelled through the batch use cases (`ReadBatches`,
//! `CancelBatch`), as the JSON API does.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use calls_domain::models::{
    BatchId, BatchListQuery, BatchPosition, BatchView, CheckResult, PageLimit, RecipientState,
    StateCounts, TimeZone,
};
use calls_domain::service::StoreFailure;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::pages::form_token_of;
use super::session::ConsoleSession;
use super::views::{Layout, call_href, iso, path_segment, show_time, status_label};
use super::{ConsoleError, html, no_store};
use crate::state::AppState;

impl From<StoreFailure> for ConsoleError {
    fn from(e: StoreFailure) -> Self {
        match e {
            StoreFailure::Unavailable(cause) => {
                tracing::error!(error.cause_chain = ?cause, "console: database unavailable");
                Self::Unavailable
            }
            StoreFailure::Unexpected(cause) => {
                tracing::error!(error.cause_chain = ?cause, "console: unexpected store error");
                Self::Internal
            }
        }
    }
}

pub const STATE_LABELS: [&str; 6] = [
    "Scheduled",
    "Dialing",
    "In call",
    "Completed",
    "Failed",
    "Cancelled",
];

fn state_label(state: RecipientState) -> &'static str {
    match state {
        RecipientState::Scheduled => STATE_LABELS[0],
        RecipientState::Dialing => STATE_LABELS[1],
        RecipientState::InCall => STATE_LABELS[2],
        RecipientState::Completed => STATE_LABELS[3],
        RecipientState::Failed => STATE_LABELS[4],
        RecipientState::Cancelled => STATE_LABELS[5],
    }
}

fn counts(c: &StateCounts) -> [u64; 6] {
    RecipientState::ALL.map(|s| c.get(s))
}

fn batch_status_label(status: &str) -> &'static str {
    match status {
        "active" => "Active",
        "done" => "Done",
        _ => "Cancelled",
    }
}

fn batch_href(id: &BatchId) -> String {
    format!("/console/batches/{id}")
}

/// An instant on a driver's own clock: `2024-06-01 10:00 (UTC−05:00)`.
pub struct LocalTime {
    pub local: String,
    pub iso: String,
}

pub fn local_time(at: OffsetDateTime, zone: Option<&TimeZone>) -> LocalTime {
    let Some(zone) = zone else {
        return LocalTime {
            local: format!("{} UTC", show_time(at)),
            iso: iso(at),
        };
    };
    let civil = zone.local(at);
    let local = civil.strftime("%Y-%m-%d %H:%M").to_string();
    // The offset in force then: local wall time minus UTC.
    let utc = at.to_offset(time::UtcOffset::UTC);
    let minutes = time::Date::from_calendar_date(
        i32::from(civil.year()),
        time::Month::try_from(u8::try_from(civil.month()).unwrap_or(1))
            .unwrap_or(time::Month::January),
        u8::try_from(civil.day()).unwrap_or(1),
    )
    .ok()
    .and_then(|d| {
        d.with_hms(
            u8::try_from(civil.hour()).unwrap_or(0),
            u8::try_from(civil.minute()).unwrap_or(0),
            u8::try_from(civil.second()).unwrap_or(0),
        )
        .ok()
    })
    .map(|local| {
        let utc_wall = time::PrimitiveDateTime::new(utc.date(), utc.time());
        (local - utc_wall).whole_minutes()
    });
    let offset = match minutes {
        Some(m) => {
            let sign = if m < 0 { '−' } else { '+' };
            format!(" (UTC{sign}{:02}:{:02})", m.abs() / 60, m.abs() % 60)
        }
        None => String::new(),
    };
    LocalTime {
        local: format!("{local}{offset}"),
        iso: iso(at),
    }
}

pub struct BatchItem {
    pub id: String,
    pub href: String,
    pub created: String,
    pub created_iso: String,
    pub status: &'static str,
    pub status_label: &'static str,
    pub counts: [u64; 6],
}

#[derive(Template)]
#[template(path = "console/batches.html")]
pub struct BatchesPage {
    pub layout: Layout,
    pub error: Option<String>,
    pub state_labels: [&'static str; 6],
    pub batches: Vec<BatchItem>,
    pub next_href: Option<String>,
}

pub struct AttemptItem {
    pub attempt: u32,
    pub href: String,
    pub status_label: &'static str,
    pub failure_reason: Option<String>,
    pub started: LocalTime,
}

pub struct RecipientItem {
    pub driver_id: i64,
    pub driver_name: String,
    pub phone: String,
    pub time_zone: String,
    pub state: &'static str,
    pub state_label: &'static str,
    pub next_attempt: Option<LocalTime>,
    pub failure_reason: Option<String>,
    pub last_check: Option<String>,
    pub attempts: Vec<AttemptItem>,
}

pub struct BatchDetail {
    pub id: String,
    pub cancel_href: String,
    pub created: String,
    pub created_iso: String,
    pub call_type: String,
    pub timestamp: String,
    pub status: &'static str,
    pub status_label: &'static str,
    pub counts: [u64; 6],
    pub recipients: Vec<RecipientItem>,
}

#[derive(Template)]
#[template(path = "console/batch.html")]
pub struct BatchPage {
    pub layout: Layout,
    pub form_token: String,
    pub state_labels: [&'static str; 6],
    pub batch: BatchDetail,
}

impl BatchDetail {
    fn from_view(view: &BatchView) -> Self {
        let recipients = view
            .drivers
            .iter()
            .map(|r| {
                let zone = TimeZone::parse(&r.time_zone).ok();
                RecipientItem {
                    driver_id: r.driver_id,
                    driver_name: r.driver_name.clone(),
                    phone: r.phone_number.clone(),
                    time_zone: r.time_zone.clone(),
                    state: r.state.as_str(),
                    state_label: state_label(r.state),
                    next_attempt: r.next_attempt_at.map(|at| local_time(at, zone.as_ref())),
                    failure_reason: r.failure_reason.clone(),
                    last_check: r.last_check.as_ref().map(|c| {
                        let result = match c.result {
                            CheckResult::Eligible => "eligible",
                            CheckResult::NotEligible => "not eligible",
                            CheckResult::Failed => "failed",
                        };
                        let at = local_time(c.at, zone.as_ref()).local;
                        match &c.detail {
                            Some(detail) => format!("{result} at {at} ({detail})"),
                            None => format!("{result} at {at}"),
                        }
                    }),
                    attempts: r
                        .attempts
                        .iter()
                        .map(|a| AttemptItem {
                            attempt: a.attempt,
                            href: call_href(a.call_sid.as_str()),
                            status_label: status_label(a.status),
                            failure_reason: a.failure_reason.clone(),
                            started: local_time(a.call_start_time, zone.as_ref()),
                        })
                        .collect(),
                }
            })
            .collect();
        Self {
            id: view.batch_id.to_string(),
            cancel_href: format!("{}/cancel", batch_href(&view.batch_id)),
            created: show_time(view.created_at),
            created_iso: iso(view.created_at),
            call_type: view.call_type.clone(),
            timestamp: view.timestamp.clone(),
            status: view.status.as_str(),
            status_label: batch_status_label(view.status.as_str()),
            counts: counts(&view.counts),
            recipients,
        }
    }
}

/// The console's own page cursor: where the page ended, `created_at` and the batch id.
fn encode_cursor(p: &BatchPosition) -> String {
    let t = p
        .created_at
        .format(&Rfc3339)
        .unwrap_or_else(|_| p.created_at.to_string());
    format!("{t}_{}", p.batch_id)
}

fn decode_cursor(raw: &str) -> Option<BatchPosition> {
    let (t, id) = raw.rsplit_once('_')?;
    Some(BatchPosition {
        created_at: OffsetDateTime::parse(t, &Rfc3339).ok()?,
        batch_id: BatchId::parse(id).ok()?,
    })
}

pub async fn list(
    session: ConsoleSession,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let read = &state.read_batches;
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(req.query_string()).unwrap_or_default();
    let cursor = pairs
        .iter()
        .find(|(n, v)| n == "cursor" && !v.is_empty())
        .map(|(_, v)| v.as_str());
    let mut page = BatchesPage {
        layout: Layout::logged_in(
            session.form_token(),
            "batches",
            state.settings.api_token.is_none(),
        ),
        error: None,
        state_labels: STATE_LABELS,
        batches: Vec::new(),
        next_href: None,
    };
    let after = match cursor.map(decode_cursor) {
        None => None,
        Some(Some(position)) => Some(position),
        Some(None) => {
            page.error =
                Some("This page link is not valid; start again from the first page.".to_owned());
            return Ok(html(HttpResponse::BadRequest(), &page));
        }
    };
    let result = read
        .list(&BatchListQuery {
            limit: PageLimit::default(),
            after,
        })
        .await?;
    page.batches = result
        .batches
        .iter()
        .map(|b| BatchItem {
            id: b.batch_id.to_string(),
            href: batch_href(&b.batch_id),
            created: show_time(b.created_at),
            created_iso: iso(b.created_at),
            status: b.status.as_str(),
            status_label: batch_status_label(b.status.as_str()),
            counts: counts(&b.counts),
        })
        .collect();
    page.next_href = result.next.map(|next| {
        format!(
            "/console/batches?cursor={}",
            path_segment(&encode_cursor(&next))
        )
    });
    Ok(html(HttpResponse::Ok(), &page))
}

fn unknown_batch(raw: &str) -> ConsoleError {
    ConsoleError::NotFound {
        title: "Batch not found".to_owned(),
        detail: format!("No batch has batch_id {raw}."),
    }
}

pub async fn show(
    session: ConsoleSession,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let read = &state.read_batches;
    let raw = path.into_inner();
    let batch_id = BatchId::parse(&raw).map_err(|_| unknown_batch(&raw))?;
    let view = read
        .get(&batch_id)
        .await?
        .ok_or_else(|| unknown_batch(&raw))?;
    let token = session.form_token();
    let page = BatchPage {
        layout: Layout::logged_in(token.clone(), "batches", state.settings.api_token.is_none()),
        form_token: token,
        state_labels: STATE_LABELS,
        batch: BatchDetail::from_view(&view),
    };
    Ok(html(HttpResponse::Ok(), &page))
}

/// The Cancel button: needs the session's form token (else 403, nothing changes), then
/// cancels like `POST /batches/{id}/cancel` and shows the batch again (303).
pub async fn cancel(
    session: ConsoleSession,
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    if !session.accepts_form_token(form_token_of(&body).as_deref()) {
        return Err(ConsoleError::BadFormToken);
    }
    let cancel = &state.cancel_batch;
    let raw = path.into_inner();
    let batch_id = BatchId::parse(&raw).map_err(|_| unknown_batch(&raw))?;
    cancel
        .execute(&batch_id, OffsetDateTime::now_utc())
        .await?
        .ok_or_else(|| unknown_batch(&raw))?;
    tracing::info!(%batch_id, "batch cancelled from the console");
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, batch_href(&batch_id)))
        .insert_header(no_store())
        .finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn times_show_on_the_drivers_clock_with_the_offset_in_force() {
        let chicago = TimeZone::parse("America/Chicago").expect("zone");
        let winter = local_time(datetime!(2024-01-15 16:30 UTC), Some(&chicago));
        assert_eq!(winter.local, "2024-01-15 10:30 (UTC−06:00)");
        let summer = local_time(datetime!(2024-07-15 16:30 UTC), Some(&chicago));
        assert_eq!(summer.local, "2024-07-15 11:30 (UTC−05:00)");
        assert_eq!(summer.iso, "2024-07-15T16:30:00Z");
        let kolkata = TimeZone::parse("Asia/Kolkata").expect("zone");
        assert_eq!(
            local_time(datetime!(2024-07-15 16:30 UTC), Some(&kolkata)).local,
            "2024-07-15 22:00 (UTC+05:30)"
        );
    }

    #[test]
    fn page_cursors_round_trip() {
        let p = BatchPosition {
            created_at: datetime!(2024-07-15 16:30:00.123456 UTC),
            batch_id: BatchId::generate(),
        };
        assert_eq!(decode_cursor(&encode_cursor(&p)), Some(p));
        assert_eq!(decode_cursor("nonsense"), None);
    }
}
