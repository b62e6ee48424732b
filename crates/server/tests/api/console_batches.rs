//! The console's batch pages at the HTTP level: counts, each driver's state, attempts
//! linked to their Calls, next attempt time on the driver's own clock, and the Cancel form.

use std::sync::Arc;

use calls_domain::models::{
    Batch, BatchDefaults, BatchId, Driver, PhoneNumber, Schedule, TimeZone, Violation,
};
use calls_domain::ports::{BatchRepository, ClaimRequest};
use calls_domain::service::CreateBatch;
use reqwest::StatusCode;
use time::OffsetDateTime;
use time::macros::datetime;

use crate::console::{Browser, logged_in};
use crate::helpers::{TestApp, spawn_app};

/// The next 15 January, 16:30 UTC: 10:30 in Chicago (CST), less than 400 days ahead.
pub fn next_mid_january() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    let this_year = datetime!(2000-01-15 16:30 UTC)
        .replace_year(now.year())
        .expect("valid");
    if this_year > now {
        this_year
    } else {
        this_year.replace_year(now.year() + 1).expect("valid")
    }
}

/// Driver 1 waits for its rest to end ([`next_mid_january`]); driver 2 is due now and gets
/// its first attempt's Call.
pub async fn batch_with_a_waiting_and_a_dialed_driver(app: &TestApp) -> BatchId {
    let driver = |id: i64| Driver {
        driver_id: id,
        driver_name: format!("Driver {id}"),
        phone_number: PhoneNumber::parse("+15551234567").expect("phone"),
        custom_rules: String::new(),
        trip_id: format!("trip_{id}"),
        violations: vec![Violation {
            kind: "temperature".into(),
            description: "Reefer at 45F".into(),
        }],
        time_zone: Some(TimeZone::parse("America/Chicago").expect("zone")),
        not_before: None,
    };
    let mut waiting = driver(1);
    waiting.not_before = Some(next_mid_january());
    let batch = Batch::new(
        "violation".into(),
        format!(
            "console_{}",
            OffsetDateTime::now_utc().unix_timestamp_nanos()
        ),
        vec![waiting, driver(2)],
        Schedule::default(),
    )
    .expect("batch");
    let repo = app.db.batch_repository();
    let now = OffsetDateTime::now_utc();
    let view = CreateBatch::new(Arc::new(repo.clone()), BatchDefaults::default())
        .execute(&batch, now)
        .await
        .expect("created");
    let claimed = repo
        .claim_due(&ClaimRequest {
            // A moment later, as the dialer's next poll would.
            now: now + time::Duration::seconds(1),
            limit: 10,
            batch_id: Some(view.batch_id),
            write_calls: true,
        })
        .await
        .expect("claimed");
    assert_eq!(claimed.len(), 1, "driver 2 is due now");
    view.batch_id
}

#[tokio::test]
async fn the_batch_list_marks_each_batch_with_its_counts() {
    let app = spawn_app().await;
    let id = batch_with_a_waiting_and_a_dialed_driver(&app).await;
    let (status, body) = logged_in(&app).await.page("/console/batches").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains(&format!(r#"data-batch-id="{id}""#)), "{body}");
    assert!(body.contains(&format!(r#"href="/console/batches/{id}""#)));
    assert!(body.contains("Active"), "{body}");
    assert!(body.contains("<th scope=\"col\">Scheduled</th>"), "{body}");
}

#[tokio::test]
async fn the_batch_page_shows_each_driver_state_attempts_and_local_next_attempt() {
    let app = spawn_app().await;
    let id = batch_with_a_waiting_and_a_dialed_driver(&app).await;
    let browser = logged_in(&app).await;

    let (status, body) = browser.page(&format!("/console/batches/{id}")).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains(r#"data-driver-id="1" data-state="scheduled""#),
        "{body}"
    );
    assert!(
        body.contains(r#"data-driver-id="2" data-state="dialing""#),
        "{body}"
    );
    // On the driver's clock: 16:30 UTC in January is 10:30 in Chicago.
    let year = next_mid_january().year();
    assert!(
        body.contains(&format!("{year}-01-15 10:30 (UTC−06:00)")),
        "{body}"
    );
    assert!(
        body.contains(&format!(r#"datetime="{year}-01-15T16:30:00Z""#)),
        "{body}"
    );
    assert!(body.contains("America/Chicago"));
    let attempt_href = "/console/calls/EL_2_console_";
    assert!(
        body.contains(attempt_href),
        "attempt linked to its Call: {body}"
    );
    assert!(body.contains("Attempt 1</a>: In progress"), "{body}");
    assert!(
        body.contains("Cancel batch"),
        "an active batch can be cancelled"
    );

    // The attempt's Call page names its batch and attempt.
    let start = body.find(attempt_href).expect("link");
    let href: String = body[start..].split('"').next().expect("href").to_owned();
    let (status, call) = browser.page(&href).await;
    assert_eq!(status, StatusCode::OK, "{call}");
    assert!(
        call.contains(&format!(
            r#"<a href="/console/batches/{id}">{id}</a>, attempt 1"#
        )),
        "{call}"
    );
}

#[tokio::test]
async fn cancel_needs_the_form_token_and_then_cancels_the_waiting_drivers() {
    let app = spawn_app().await;
    let id = batch_with_a_waiting_and_a_dialed_driver(&app).await;
    let browser = logged_in(&app).await;
    let path = format!("/console/batches/{id}/cancel");

    for form in [vec![], vec![("form_token", "f".repeat(64))]] {
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let response = browser.post_form(&path, &form).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
    let (_, body) = browser.page(&format!("/console/batches/{id}")).await;
    assert!(
        body.contains(r#"data-driver-id="1" data-state="scheduled""#),
        "nothing changed"
    );

    let token = browser.form_token().await;
    let response = browser.post_form(&path, &[("form_token", &token)]).await;

    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        response.headers()["location"].to_str().expect("ascii"),
        format!("/console/batches/{id}")
    );
    let (_, body) = browser.page(&format!("/console/batches/{id}")).await;
    assert!(
        body.contains(r#"data-driver-id="1" data-state="cancelled""#),
        "{body}"
    );
    assert!(
        body.contains(r#"data-driver-id="2" data-state="dialing""#),
        "its call finishes"
    );
    assert!(!body.contains("Cancel batch"), "no button once cancelled");
    assert!(body.contains("Cancelled"));
}

#[tokio::test]
async fn unknown_batches_are_404_pages_and_batch_pages_need_a_session() {
    let app = spawn_app().await;
    let id = batch_with_a_waiting_and_a_dialed_driver(&app).await;
    let browser = logged_in(&app).await;
    for path in [
        format!("/console/batches/{}", BatchId::generate()),
        "/console/batches/not-a-uuid".to_owned(),
    ] {
        let (status, body) = browser.page(&path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(body.contains("Batch not found"), "{body}");
    }
    let anonymous = Browser::new(&app.address);
    for path in [
        "/console/batches".to_owned(),
        format!("/console/batches/{id}"),
    ] {
        let response = anonymous.get(&path).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "{path}");
    }
    let response = anonymous
        .post_form(&format!("/console/batches/{id}/cancel"), &[])
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()["location"], "/console/login");
}
