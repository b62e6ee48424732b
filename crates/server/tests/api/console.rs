//! The dispatcher console at the HTTP level: login, sessions, cookies, form tokens, the
//! pages' markup hooks, bad input, and the live event stream (also across instances).

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use serde_json::{Value, json};

use crate::helpers::{API_TOKEN, TestApp, now, sign, spawn_app, spawn_app_with, turn_body};

/// A browser without JavaScript: no redirects followed, one cookie kept by hand.
pub struct Browser {
    pub base: String,
    pub client: reqwest::Client,
    pub cookie: Option<String>,
}

impl Browser {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.to_owned(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            cookie: None,
        }
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(cookie) = &self.cookie {
            req = req.header("Cookie", cookie);
        }
        req.send().await.expect("sent")
    }

    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(form).expect("form"));
        if let Some(cookie) = &self.cookie {
            req = req.header("Cookie", cookie);
        }
        req.send().await.expect("sent")
    }

    /// Logs in with `token`; keeps the session cookie on success.
    pub async fn login(&mut self, token: &str) -> reqwest::Response {
        let response = self.post_form("/console/login", &[("token", token)]).await;
        if let Some(set) = set_cookie(response.headers()) {
            self.cookie = set.split(';').next().map(str::to_owned);
        }
        response
    }

    pub async fn page(&self, path: &str) -> (StatusCode, String) {
        let response = self.get(path).await;
        let status = response.status();
        (status, response.text().await.expect("body"))
    }

    /// The form token of the logout form on the calls page.
    pub async fn form_token(&self) -> String {
        let (_, body) = self.page("/console/calls").await;
        let marker = "name=\"form_token\" value=\"";
        let start = body.find(marker).expect("a form token on the page") + marker.len();
        body[start..].split('"').next().expect("token").to_owned()
    }
}

fn set_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn location(response: &reqwest::Response) -> &str {
    response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

pub async fn logged_in(app: &TestApp) -> Browser {
    let mut browser = Browser::new(&app.address);
    let response = browser.login(API_TOKEN).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    browser
}

fn is_html(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"))
}

#[tokio::test]
async fn the_login_page_is_a_post_form_with_a_token_field() {
    let app = spawn_app().await;
    let response = Browser::new(&app.address).get("/console/login").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(is_html(&response));
    let body = response.text().await.expect("body");
    assert!(
        body.contains(r#"<form method="post" action="/console/login""#),
        "{body}"
    );
    assert!(body.contains(r#"name="token""#), "{body}");
    assert!(
        body.contains(r#"<label for="token">"#),
        "a labelled field: {body}"
    );
    assert!(!body.contains("<script"), "no script on the login page");
}

#[tokio::test]
async fn the_right_token_sets_an_http_only_strict_session_cookie_and_redirects_to_the_calls() {
    let app = spawn_app().await;
    let mut browser = Browser::new(&app.address);

    let response = browser.login(API_TOKEN).await;

    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/console/calls");
    let cookie = set_cookie(response.headers()).expect("a cookie");
    assert!(cookie.starts_with("console_session="), "{cookie}");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(cookie.contains("Max-Age=43200"), "{cookie}");
    assert!(
        !cookie.contains("Secure"),
        "not Secure while PUBLIC_BASE_URL is http: {cookie}"
    );
    let (status, body) = browser.page("/console/calls").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Only the hash of the session id is stored.
    let id = browser.cookie.as_deref().unwrap_or_default();
    let id = id.trim_start_matches("console_session=");
    let stored = app
        .db
        .strings("SELECT encode(id_hash, 'hex') AS value FROM console_sessions")
        .await;
    assert_eq!(stored.len(), 1);
    assert!(
        !stored[0].contains(id) && stored[0].len() == 64,
        "{stored:?}"
    );
}

#[tokio::test]
async fn the_cookie_is_secure_when_the_public_base_url_is_https() {
    let app = spawn_app_with(|s| s.console.secure_cookie = true).await;
    let response = Browser::new(&app.address).login(API_TOKEN).await;
    let cookie = set_cookie(response.headers()).expect("a cookie");
    assert!(cookie.contains("Secure"), "{cookie}");
}

#[tokio::test]
async fn a_wrong_token_gets_the_form_again_with_a_message_and_401() {
    let app = spawn_app().await;
    let mut browser = Browser::new(&app.address);

    let response = browser.login("not-the-token").await;

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(set_cookie(response.headers()).is_none());
    assert!(is_html(&response));
    let body = response.text().await.expect("body");
    assert!(body.contains("Wrong API token"), "{body}");
    assert!(body.contains(r#"name="token""#), "{body}");
    let missing = browser.post_form("/console/login", &[]).await;
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.db
            .strings("SELECT count(*)::text AS value FROM console_sessions")
            .await,
        ["0"]
    );
}

#[tokio::test]
async fn repeated_failed_logins_from_one_address_are_answered_429() {
    let app = spawn_app().await;
    let mut browser = Browser::new(&app.address);
    for _ in 0..10 {
        assert_eq!(
            browser.login("guess").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }

    let response = browser.login(API_TOKEN).await;

    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().get("retry-after").is_some());
    assert!(
        set_cookie(response.headers()).is_none(),
        "no session while limited"
    );
    let body = response.text().await.expect("body");
    assert!(body.contains("Too many failed attempts"), "{body}");
}

#[tokio::test]
async fn every_console_page_without_a_valid_session_redirects_to_the_login() {
    let app = spawn_app().await;
    app.create_call("EL_1_console", Some("conv_console")).await;
    let forged = Browser {
        cookie: Some(format!("console_session={}", "A".repeat(43))),
        ..Browser::new(&app.address)
    };
    let garbage = Browser {
        cookie: Some("console_session=<script>".into()),
        ..Browser::new(&app.address)
    };
    // An expired session: stored, but past its expiry.
    let mut expired = logged_in(&app).await;
    app.db
        .execute("UPDATE console_sessions SET expires_at = now() - interval '1 second'")
        .await;
    expired.cookie = expired.cookie.clone();

    for browser in [&Browser::new(&app.address), &forged, &garbage, &expired] {
        for path in [
            "/console",
            "/console/calls",
            "/console/calls?status=failed",
            "/console/calls/EL_1_console",
            "/console/calls/EL_1_console/events",
            "/console/calls/unknown",
            "/console/elsewhere",
        ] {
            let response = browser.get(path).await;
            assert_eq!(response.status(), StatusCode::SEE_OTHER, "{path}");
            assert_eq!(location(&response), "/console/login", "{path}");
        }
        let response = browser.post_form("/console/logout", &[]).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(location(&response), "/console/login");
    }
}

/// A second instance of the service on the same schema.
pub async fn second_instance(app: &TestApp) -> String {
    let settings = crate::helpers::settings_for(app.db.config().clone(), &app.elevenlabs.uri());
    let second = calls_server::startup::Application::build(settings)
        .await
        .expect("second instance builds");
    let address = format!("http://127.0.0.1:{}", second.port());
    tokio::spawn(second.run_until_stopped());
    address
}

#[tokio::test]
async fn logout_needs_the_form_token_and_then_ends_the_session_on_every_instance() {
    let app = spawn_app().await;
    let mut browser = logged_in(&app).await;
    let token = browser.form_token().await;
    let other = Browser {
        cookie: browser.cookie.clone(),
        ..Browser::new(&second_instance(&app).await)
    };
    assert_eq!(other.get("/console/calls").await.status(), StatusCode::OK);

    // Without the form token, or with another: 403, and the session lives on.
    for form in [vec![], vec![("form_token", "0".repeat(64))]] {
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let response = browser.post_form("/console/logout", &form).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(is_html(&response));
        assert_eq!(browser.get("/console/calls").await.status(), StatusCode::OK);
    }

    let response = browser
        .post_form("/console/logout", &[("form_token", &token)])
        .await;

    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/console/login");
    let removal = set_cookie(response.headers()).expect("cookie removed");
    assert!(removal.contains("Max-Age=0"), "{removal}");
    for b in [&browser, &other] {
        let after = b.get("/console/calls").await;
        assert_eq!(after.status(), StatusCode::SEE_OTHER);
        assert_eq!(location(&after), "/console/login");
    }
    browser.cookie = None;
}

#[tokio::test]
async fn the_listing_marks_each_call_and_shows_status_and_outcome_as_text() {
    let app = spawn_app().await;
    app.create_call("EL_1_list", Some("conv_list_1")).await;
    app.create_call("EL_2_list", None).await;
    let sid = calls_domain::CallSid::parse("EL_2_list").expect("sid");
    calls_domain::CallRepository::set_status(
        &app.repository,
        &sid,
        calls_domain::CallStatus::Failed,
        Some(time::OffsetDateTime::now_utc()),
        Some("busy".into()),
    )
    .await
    .expect("failed");
    let browser = logged_in(&app).await;

    let (status, body) = browser.page("/console/calls").await;

    assert_eq!(status, StatusCode::OK);
    assert!(body.contains(r#"data-call-sid="EL_1_list""#), "{body}");
    assert!(body.contains(r#"data-call-sid="EL_2_list""#), "{body}");
    assert!(body.contains("In progress"), "{body}");
    assert!(body.contains("Failed: busy"), "{body}");
    assert!(
        body.contains(r#"href="/console/calls/EL_1_list""#),
        "{body}"
    );
    // Filtering goes through GET /calls's parameters; empty form fields are no filter.
    let (status, body) = browser
        .page("/console/calls?status=failed&driver_id=&since=&until=&limit=")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains(r#"data-call-sid="EL_2_list""#), "{body}");
    assert!(!body.contains(r#"data-call-sid="EL_1_list""#), "{body}");
    assert!(
        body.contains(r#"<option value="failed" selected>"#),
        "{body}"
    );
}

#[tokio::test]
async fn a_bad_filter_shows_the_page_with_the_error_next_to_the_filter() {
    let app = spawn_app().await;
    let browser = logged_in(&app).await;
    for (query, field) in [
        ("driver_id=abc", "driver_id"),
        ("status=maybe", "status"),
        ("since=yesterday", "since"),
        ("limit=0", "limit"),
        ("since=2024-11-22&until=2024-11-21", "until"),
    ] {
        let (status, body) = browser.page(&format!("/console/calls?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert!(
            body.contains(&format!(r#"<p class="error" id="e-{field}">"#)),
            "{query}: {body}"
        );
        assert!(body.contains(r#"aria-invalid="true""#), "{query}");
        assert!(
            body.contains("<form method=\"get\""),
            "the form stays: {query}"
        );
    }
    let (status, body) = browser.page("/console/calls?cursor=nonsense").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("cursor is not a next_cursor"), "{body}");
    let (status, _) = browser.page("/console/calls?driverId=1").await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "unknown parameters are refused as by GET /calls"
    );
}

fn href_of(body: &str, rel: &str) -> Option<String> {
    let marker = format!(r#"<a rel="{rel}" href=""#);
    let start = body.find(&marker)? + marker.len();
    let raw = body[start..].split('"').next()?;
    Some(unescape(raw))
}

/// Undoes the HTML escaping of an attribute value (askama writes `&#38;`, `&#61;`, …).
fn unescape(raw: &str) -> String {
    let mut out = String::new();
    let mut rest = raw;
    while let Some(start) = rest.find('&') {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let end = tail.find(';').unwrap_or(0);
        let entity = &tail[1..end.max(1)];
        let decoded = match entity {
            "amp" => Some('&'),
            "quot" => Some('"'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            e if e.starts_with('#') => e[1..].parse::<u32>().ok().and_then(char::from_u32),
            _ => None,
        };
        match decoded {
            Some(c) if end > 0 => {
                out.push(c);
                rest = &tail[end + 1..];
            }
            _ => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[tokio::test]
async fn pages_are_walked_forward_and_back_by_cursor_links() {
    let app = spawn_app().await;
    for n in 1..=3 {
        app.create_call(&format!("EL_{n}_page"), None).await;
    }
    let browser = logged_in(&app).await;

    let (_, first) = browser.page("/console/calls?limit=2").await;
    assert!(first.contains("EL_3_page") && first.contains("EL_2_page"));
    assert!(!first.contains("EL_1_page"));
    assert!(
        href_of(&first, "prev").is_none(),
        "no previous page on the first"
    );
    let next = href_of(&first, "next").expect("a next link");
    assert!(
        next.contains("limit=2") && next.contains("cursor="),
        "{next}"
    );

    let (status, second) = browser.page(&next).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert!(
        second.contains(r#"data-call-sid="EL_1_page""#),
        "{next}: {second}"
    );
    assert!(!second.contains(r#"data-call-sid="EL_3_page""#));
    assert!(href_of(&second, "next").is_none(), "last page");

    let back = href_of(&second, "prev").expect("a previous link");
    let (_, again) = browser.page(&back).await;
    assert!(again.contains(r#"data-call-sid="EL_3_page""#), "{again}");
    assert!(again.contains(r#"data-call-sid="EL_2_page""#));
}

pub fn post_call_event_for(conversation_id: &str) -> Value {
    json!({"type": "post_call_transcription", "event_timestamp": 1_732_183_300, "data": {
        "agent_id": "agent_test",
        "conversation_id": conversation_id,
        "status": "done",
        "transcript": [
            {"role": "agent", "message": "Hello, this is dispatch.", "time_in_call_secs": 0},
            {"role": "user", "message": "Hi, reefer is fixed.", "time_in_call_secs": 4}
        ],
        "metadata": {"start_time_unix_secs": 1_732_183_200, "call_duration_secs": 95,
                     "termination_reason": "end_call tool was called."},
        "analysis": {
            "call_successful": "success",
            "transcript_summary": "The driver will fix the reefer by noon.",
            "data_collection_results": {
                "violation_acknowledged": {"value": true, "rationale": "Driver said yes."},
                "fix_eta": {"value": "noon", "rationale": "…"}
            }
        }
    }})
}

pub async fn post_event(app: &TestApp, event: &Value) {
    let body = serde_json::to_vec(event).expect("json");
    let response = app
        .client
        .post(app.url("/webhooks/elevenlabs/post-call"))
        .header("Content-Type", "application/json")
        .header("ElevenLabs-Signature", sign(&body, now()))
        .body(body)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test]
async fn the_call_page_shows_the_outcome_the_data_collection_and_the_transcript_in_order() {
    let app = spawn_app().await;
    app.create_call("EL_7_2024-11-21 10:00:00#2", Some("conv_page"))
        .await;
    post_event(&app, &post_call_event_for("conv_page")).await;
    let browser = logged_in(&app).await;

    let (status, body) = browser
        .page("/console/calls/EL_7_2024-11-21%2010%3A00%3A00%232")
        .await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("Completed"), "{body}");
    assert!(body.contains("Successful"));
    assert!(body.contains("The driver will fix the reefer by noon."));
    assert!(body.contains("end_call tool was called."));
    assert!(body.contains("1 min 35 s"));
    assert!(
        body.contains(r#"<th scope="row">fix_eta</th><td>noon</td>"#),
        "{body}"
    );
    assert!(body.contains(r#"<th scope="row">violation_acknowledged</th><td>true</td>"#));
    let first = body.find(r#"data-seq="1""#).expect("turn 1");
    let second = body.find(r#"data-seq="2""#).expect("turn 2");
    assert!(first < second, "in order");
    assert!(body[first..second].contains("Hello, this is dispatch."));
    assert!(!body.contains("live.js"), "an ended call is not live");
    assert!(
        !body.contains("<dt>Batch</dt>"),
        "no batch: a call of the batch-call API"
    );
}

#[tokio::test]
async fn a_failed_call_shows_its_failure_reason() {
    let app = spawn_app().await;
    app.create_call("EL_8_failed", None).await;
    let sid = calls_domain::CallSid::parse("EL_8_failed").expect("sid");
    calls_domain::CallRepository::set_status(
        &app.repository,
        &sid,
        calls_domain::CallStatus::Failed,
        Some(time::OffsetDateTime::now_utc()),
        Some("no-answer".into()),
    )
    .await
    .expect("failed");
    let (status, body) = logged_in(&app)
        .await
        .page("/console/calls/EL_8_failed")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("<dt>Failure reason</dt><dd>no-answer</dd>"),
        "{body}"
    );
}

#[tokio::test]
async fn an_unknown_call_or_page_is_a_404_page() {
    let app = spawn_app().await;
    let browser = logged_in(&app).await;
    for path in [
        "/console/calls/EL_404_nobody",
        "/console/calls/EL_404_nobody/events",
        "/console/nothing-here",
    ] {
        let response = browser.get(path).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert!(is_html(&response), "{path}");
        let body = response.text().await.expect("body");
        assert!(body.contains("not found"), "{path}: {body}");
    }
}

#[tokio::test]
async fn pages_are_html_with_our_own_assets_only() {
    let app = spawn_app().await;
    app.create_call("EL_9_assets", Some("conv_assets")).await;
    let browser = logged_in(&app).await;
    let response = browser.get("/console/calls/EL_9_assets").await;
    let csp = response
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    let body = response.text().await.expect("body");
    assert!(
        !body.contains("http://") && !body.contains("https://"),
        "no outside host: {body}"
    );
    assert!(
        body.contains(r#"<script src="/console/static/live.js" defer>"#),
        "in progress: live"
    );
    for (path, kind) in [
        ("/console/static/console.css", "text/css"),
        ("/console/static/live.js", "text/javascript"),
    ] {
        let response = Browser::new(&app.address).get(path).await;
        assert_eq!(response.status(), StatusCode::OK);
        let ct = response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert!(ct.starts_with(kind), "{ct}");
    }
}

// ---- live updates ----

/// Reads an event stream until `wanted` shows up or `within` passes; returns what came.
pub async fn read_until(
    response: &mut reqwest::Response,
    wanted: &str,
    within: Duration,
) -> String {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + within;
    while !seen.contains(wanted) {
        match tokio::time::timeout_at(deadline, response.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            _ => break,
        }
    }
    seen
}

pub async fn post_turn(base: &str, client: &reqwest::Client, sid: &str, message: &str) {
    let body =
        serde_json::to_vec(&turn_body(sid, "user", message, "2024-11-21T10:00:05Z")).expect("json");
    let response = client
        .post(format!("{base}/webhooks/elevenlabs/transcription"))
        .header("Content-Type", "application/json")
        .header("ElevenLabs-Signature", sign(&body, now()))
        .body(body)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 201);
}

#[tokio::test]
async fn turns_stored_by_this_or_another_instance_reach_an_open_page_within_2_s() {
    let app = spawn_app().await;
    app.create_call("EL_10_live", Some("conv_live")).await;
    let other = second_instance(&app).await;
    let browser = logged_in(&app).await;
    let mut stream = browser
        .get("/console/calls/EL_10_live/events?after=0")
        .await;
    assert_eq!(stream.status(), StatusCode::OK);
    let ct = stream.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(ct, "text/event-stream");
    let opening = read_until(&mut stream, "event: call", Duration::from_secs(2)).await;
    assert!(opening.contains("In progress"), "{opening}");

    post_turn(
        &app.address,
        &app.client,
        "EL_10_live",
        "Here on this instance",
    )
    .await;
    let seen = read_until(&mut stream, "Here on this instance", Duration::from_secs(2)).await;
    assert!(seen.contains("event: turn\nid: 1\n"), "{seen}");
    assert!(seen.contains(r#"data-seq="1""#), "{seen}");

    post_turn(
        &other,
        &app.client,
        "EL_10_live",
        "Stored by the other instance",
    )
    .await;
    let seen = read_until(
        &mut stream,
        "Stored by the other instance",
        Duration::from_secs(2),
    )
    .await;
    assert!(seen.contains("id: 2"), "{seen}");

    // The status change too: the call ends, the page gets the final state and stops.
    post_event(&app, &post_call_event_for("conv_live")).await;
    let seen = read_until(&mut stream, "event: end", Duration::from_secs(2)).await;
    assert!(seen.contains("event: call"), "{seen}");
    assert!(seen.contains("Completed"), "{seen}");
    assert!(seen.contains("event: transcript"), "{seen}");
}

#[tokio::test]
async fn a_reconnecting_page_catches_up_from_its_last_event_id() {
    let app = spawn_app().await;
    app.create_call("EL_11_catchup", Some("conv_catchup")).await;
    for text in ["one", "two", "three"] {
        post_turn(&app.address, &app.client, "EL_11_catchup", text).await;
    }
    let browser = logged_in(&app).await;
    let mut req = browser
        .client
        .get(format!(
            "{}/console/calls/EL_11_catchup/events?after=0",
            app.address
        ))
        .header("Last-Event-ID", "1");
    if let Some(cookie) = &browser.cookie {
        req = req.header("Cookie", cookie);
    }
    let mut stream = req.send().await.expect("sent");

    let seen = read_until(&mut stream, "three", Duration::from_secs(2)).await;

    assert!(
        !seen.contains("id: 1\n"),
        "turn 1 was shown already: {seen}"
    );
    assert!(
        seen.contains("id: 2\n") && seen.contains("id: 3\n"),
        "{seen}"
    );
    assert!(seen.find("two") < seen.find("three"), "{seen}");
}

#[tokio::test]
async fn the_live_page_catches_up_after_the_database_connection_is_lost() {
    let app = spawn_app().await;
    app.create_call("EL_12_restart", Some("conv_restart")).await;
    let browser = logged_in(&app).await;
    let mut stream = browser.get("/console/calls/EL_12_restart/events").await;
    read_until(&mut stream, "event: call", Duration::from_secs(2)).await;

    // Like a database restart: every connection, the LISTEN one included, is cut.
    app.db.terminate_connections().await;
    post_turn(
        &app.address,
        &app.client,
        "EL_12_restart",
        "after the restart",
    )
    .await;

    let seen = read_until(&mut stream, "after the restart", Duration::from_secs(5)).await;
    assert!(seen.contains(r#"data-seq="1""#), "{seen}");
}

#[tokio::test]
async fn without_an_api_token_in_insecure_dev_any_token_logs_in_and_the_rest_still_applies() {
    let app = spawn_app_with(|s| {
        s.api_token = None;
        s.insecure_dev = true;
    })
    .await;
    let anonymous = Browser::new(&app.address);
    let response = anonymous.get("/console/calls").await;
    assert_eq!(
        response.status(),
        StatusCode::SEE_OTHER,
        "still a session first"
    );
    let (_, login) = anonymous.page("/console/login").await;
    assert!(login.contains("Development mode"), "{login}");

    let mut browser = Browser::new(&app.address);
    let response = browser.login("anything").await;

    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/console/calls");
    let (status, body) = browser.page("/console/calls").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("Development mode"), "{body}");
    let response = browser.post_form("/console/logout", &[]).await;
    assert_eq!(
        response.status(),
        StatusCode::FORBIDDEN,
        "form tokens still apply"
    );
}

#[tokio::test]
async fn the_console_root_leads_to_the_calls() {
    let app = spawn_app().await;
    let response = logged_in(&app).await.get("/console").await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/console/calls");
}

#[tokio::test]
async fn open_live_pages_hold_no_database_connection_and_all_get_the_turn() {
    let app = spawn_app().await;
    app.create_call("EL_13_many", Some("conv_many")).await;
    let browser = logged_in(&app).await;
    let mut streams = Vec::new();
    for _ in 0..100 {
        let mut stream = browser.get("/console/calls/EL_13_many/events").await;
        assert_eq!(stream.status(), StatusCode::OK);
        read_until(&mut stream, "event: call", Duration::from_secs(5)).await;
        streams.push(stream);
    }
    let pool = app.state.pool.as_ref().expect("a pool").stats();
    assert_eq!(
        pool.in_use, 0,
        "open pages hold no pooled connection: {pool:?}"
    );

    let started = std::time::Instant::now();
    post_turn(&app.address, &app.client, "EL_13_many", "to every page").await;
    let answered = started.elapsed();

    assert!(
        answered < Duration::from_secs(1),
        "the webhook answered in {answered:?}"
    );
    for stream in &mut streams {
        let seen = read_until(stream, "to every page", Duration::from_secs(2)).await;
        assert!(seen.contains(r#"data-seq="1""#), "{seen}");
    }
}

#[tokio::test]
async fn a_large_form_body_is_refused() {
    let app = spawn_app().await;
    let big = "x".repeat(64 * 1024);
    let response = Browser::new(&app.address)
        .post_form("/console/login", &[("token", &big)])
        .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn live_streams_end_when_the_instance_stops() {
    let app = spawn_app().await;
    app.create_call("EL_14_stop", Some("conv_stop")).await;
    let browser = logged_in(&app).await;
    let mut stream = browser.get("/console/calls/EL_14_stop/events").await;
    read_until(&mut stream, "event: call", Duration::from_secs(2)).await;

    app.state.console.close_streams();

    let ended = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the stream ended, so it cannot hold the graceful shutdown"
    );
}
