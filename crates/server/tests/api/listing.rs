//! GET /calls over HTTP: parameters, errors, auth, and walking the pages.

use calls_domain::{CallRepository, CallSid, CallStatus, NewCall};
use serde_json::{Value, json};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use crate::helpers::{TestApp, assert_envelope, spawn_app};

const T0: OffsetDateTime = datetime!(2025-01-01 00:00:00 UTC);

async fn add(
    app: &TestApp,
    call_sid: &str,
    driver_id: i64,
    start: OffsetDateTime,
    status: CallStatus,
) {
    let sid = CallSid::parse(call_sid).expect("sid");
    app.repository
        .create_call(&NewCall {
            call_sid: sid.clone(),
            driver_id: Some(driver_id),
            call_start_time: start,
        })
        .await
        .expect("created");
    if status != CallStatus::InProgress {
        app.repository
            .set_status(&sid, status, Some(start + Duration::minutes(2)), None)
            .await
            .expect("status");
    }
}

async fn get_page(app: &TestApp, query: &str) -> Value {
    let response = app.get_authed(&format!("/calls{query}")).await;
    assert_eq!(response.status().as_u16(), 200, "GET /calls{query}");
    response.json().await.expect("json")
}

fn sids(page: &Value) -> Vec<String> {
    page["calls"]
        .as_array()
        .expect("calls array")
        .iter()
        .map(|c| c["call_sid"].as_str().expect("call_sid").to_owned())
        .collect()
}

/// Follows next_cursor from `first_query`; later requests send `repeat` plus the cursor.
async fn walk(app: &TestApp, first_query: &str, repeat: &str) -> Vec<Value> {
    let mut pages = vec![get_page(app, &format!("?{first_query}")).await];
    while let Some(cursor) = pages
        .last()
        .and_then(|p| p["next_cursor"].as_str())
        .map(str::to_owned)
    {
        assert!(pages.len() < 100, "the walk does not end");
        let sep = if repeat.is_empty() { "" } else { "&" };
        pages.push(get_page(app, &format!("?{repeat}{sep}cursor={cursor}")).await);
    }
    pages
}

/// call_sids in listing order, straight from the table.
async fn expected(app: &TestApp, where_clause: &str) -> Vec<String> {
    app.db
        .strings(&format!(
            "SELECT call_sid AS value FROM calls {where_clause} ORDER BY call_start_time DESC, id DESC"
        ))
        .await
}

/// 12 Calls: drivers 1..3, all three statuses, start times with ties.
async fn twelve_calls(app: &TestApp) {
    let statuses = [
        CallStatus::Completed,
        CallStatus::Failed,
        CallStatus::InProgress,
    ];
    for i in 0..12_i64 {
        let status = statuses[usize::try_from(i % 3).expect("small")];
        add(
            app,
            &format!("EL_{}_{i}", 1 + i % 4 % 3),
            1 + i % 4 % 3,
            T0 + Duration::hours(i / 2),
            status,
        )
        .await;
    }
}

#[tokio::test]
async fn a_walk_through_all_pages_lists_every_call_once_newest_first_and_ends_with_null() {
    let app = spawn_app().await;
    twelve_calls(&app).await;

    let pages = walk(&app, "limit=5", "limit=5").await;

    let sizes: Vec<usize> = pages.iter().map(|p| sids(p).len()).collect();
    assert_eq!(sizes, [5, 5, 2]);
    assert_eq!(pages.last().map(|p| &p["next_cursor"]), Some(&Value::Null));
    let listed: Vec<String> = pages.iter().flat_map(sids).collect();
    assert_eq!(listed, expected(&app, "").await);
    for page in &pages {
        let keys: Vec<&String> = page.as_object().expect("object").keys().collect();
        assert_eq!(keys, ["calls", "next_cursor"]);
    }
}

#[tokio::test]
async fn a_listed_call_is_serialized_exactly_like_get_call() {
    let app = spawn_app().await;
    app.create_call("EL_555_same", Some("conv_same")).await;

    let page = get_page(&app, "").await;
    let single: Value = app
        .get_authed("/calls/EL_555_same")
        .await
        .json()
        .await
        .expect("json");

    assert_eq!(page["calls"], json!([single]));
    assert_eq!(page["next_cursor"], Value::Null);
}

#[tokio::test]
async fn an_empty_listing_is_an_empty_page_with_a_null_cursor() {
    let app = spawn_app().await;

    let page = get_page(&app, "?status=failed").await;

    assert_eq!(page, json!({"calls": [], "next_cursor": null}));
}

#[tokio::test]
async fn filters_combine_and_a_walk_may_send_the_cursor_alone() {
    let app = spawn_app().await;
    twelve_calls(&app).await;

    let cases = [
        ("status=failed", "WHERE status = 'failed'"),
        ("driver_id=2", "WHERE driver_id = 2"),
        (
            "since=2025-01-01T02:00:00Z&until=2025-01-01T05:00:00Z",
            "WHERE call_start_time >= '2025-01-01 02:00+00' AND call_start_time < '2025-01-01 05:00+00'",
        ),
        (
            "status=completed&driver_id=1&since=2025-01-01",
            "WHERE status = 'completed' AND driver_id = 1 AND call_start_time >= '2025-01-01'",
        ),
        (
            "status=in_progress&until=2025-01-01T03:00:00%2B00:00",
            "WHERE status = 'in_progress' AND call_start_time < '2025-01-01 03:00+00'",
        ),
    ];
    for (filters, sql) in cases {
        let want = expected(&app, sql).await;
        assert!(!want.is_empty(), "{filters} matches something");

        let cursor_alone = walk(&app, &format!("{filters}&limit=1"), "").await;
        let repeated = walk(&app, &format!("{filters}&limit=1"), filters).await;

        let alone: Vec<String> = cursor_alone.iter().flat_map(sids).collect();
        let again: Vec<String> = repeated.iter().flat_map(sids).collect();
        assert_eq!(alone, want, "{filters}, cursor alone");
        assert_eq!(again, want, "{filters}, filters repeated");
        assert_eq!(cursor_alone.len(), want.len(), "the cursor kept limit=1");
    }
}

#[tokio::test]
async fn calls_written_during_a_walk_are_not_repeated_and_shift_nothing() {
    let app = spawn_app().await;
    twelve_calls(&app).await;
    let before = expected(&app, "").await;

    let mut listed = Vec::new();
    let mut page = get_page(&app, "?limit=4").await;
    let mut n = 0;
    loop {
        listed.extend(sids(&page));
        let Some(cursor) = page["next_cursor"].as_str().map(str::to_owned) else {
            break;
        };
        // The batch endpoint writes new Calls at "now", ahead of every page.
        app.create_call(&format!("EL_555_during_{n}"), None).await;
        n += 1;
        page = get_page(&app, &format!("?cursor={cursor}")).await;
    }

    assert_eq!(listed, before);
    assert_eq!(n, 2);
}

#[tokio::test]
async fn each_invalid_parameter_is_a_400_with_the_envelope() {
    let app = spawn_app().await;
    let cursor = {
        twelve_calls(&app).await;
        get_page(&app, "?status=failed&limit=1").await["next_cursor"]
            .as_str()
            .expect("a next page")
            .to_owned()
    };

    for (query, names) in [
        ("status=unknown".to_owned(), "status"),
        ("status=".to_owned(), "status"),
        ("driver_id=abc".to_owned(), "driver_id"),
        ("driver_id=1.5".to_owned(), "driver_id"),
        ("since=not-a-date".to_owned(), "since"),
        ("until=2025-02-30T00:00:00Z".to_owned(), "until"),
        (
            "since=2025-01-02&until=2025-01-01".to_owned(),
            "since, until",
        ),
        ("limit=0".to_owned(), "limit"),
        ("limit=501".to_owned(), "limit"),
        ("limit=abc".to_owned(), "limit"),
        ("cursor=garbage".to_owned(), "cursor"),
        ("cursor=%%%".to_owned(), "cursor"),
        ("driverId=1".to_owned(), "Invalid query string"),
        (format!("status=completed&cursor={cursor}"), "status"),
        (format!("cursor={}x", &cursor[..cursor.len() - 1]), "cursor"),
    ] {
        let response = app.get_authed(&format!("/calls?{query}")).await;
        let message = assert_envelope(response, 400).await;
        assert!(message.ends_with(names), "{query}: {message}");
    }
    // The bounds themselves are fine.
    get_page(&app, "?limit=1").await;
    get_page(&app, "?limit=500").await;
}

#[tokio::test]
async fn listing_requires_the_api_token() {
    let app = spawn_app().await;

    let anonymous = app.get("/calls").await;
    let wrong = app
        .client
        .get(app.url("/calls?status=failed"))
        .bearer_auth("not-the-token")
        .send()
        .await
        .expect("sent");
    // Authentication comes first: a bad parameter without a token is still a 401.
    let bad_param = app.get("/calls?limit=0").await;

    assert_envelope(anonymous, 401).await;
    assert_envelope(wrong, 401).await;
    assert_envelope(bad_param, 401).await;
}

#[tokio::test]
async fn the_listing_is_in_the_openapi_document_with_its_parameters() {
    let app = spawn_app().await;

    let doc: Value = app.get("/openapi.json").await.json().await.expect("json");

    let op = &doc["paths"]["/calls"]["get"];
    let mut names: Vec<&str> = op["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .inspect(|p| assert_eq!(p["in"], "query", "{p}"))
        .filter_map(|p| p["name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["cursor", "driver_id", "limit", "since", "status", "until"]
    );
    for status in ["200", "400", "401", "500"] {
        assert!(op["responses"][status].is_object(), "GET /calls {status}");
    }
    assert_eq!(op["security"], json!([{"api_token": []}]));
    assert!(doc["components"]["schemas"]["CallListView"].is_object());
}

#[tokio::test]
async fn an_empty_cursor_is_the_first_page() {
    let app = spawn_app().await;
    twelve_calls(&app).await;
    let first = get_page(&app, "?limit=5").await;
    let empty = get_page(&app, "?limit=5&cursor=").await;
    assert_eq!(sids(&first), sids(&empty));
}
