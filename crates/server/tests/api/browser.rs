//! The console in a real headless Chromium (Debian's `chromium` + `chromium-driver`),
//! driven over WebDriver with fantoccini. Built with the `browser-tests` feature, which
//! `cargo xtask test` turns on (it runs the workspace with `--all-features` and installs
//! the two packages first when it runs as root).
//!
//! Each test saves a screenshot of the pages it visits into `CONSOLE_SCREENSHOT_DIR`
//! (default `target/console-screenshots`; `docs/console` refreshes the docs' pictures).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

use crate::console::{post_call_event_for, post_event, post_turn, second_instance};
use crate::helpers::{API_TOKEN, TestApp, spawn_app};

const WIDTH: u32 = 1280;
const HEIGHT: u32 = 900;

fn program(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// A chromedriver of its own (killed on drop) and a Chromium session with a fresh profile.
struct Browser {
    client: Client,
    driver: Child,
    profile: PathBuf,
}

impl Browser {
    async fn start() -> Self {
        let chromium = program("CHROMIUM", "/usr/bin/chromium");
        let chromedriver = program("CHROMEDRIVER", "/usr/bin/chromedriver");
        for path in [&chromium, &chromedriver] {
            assert!(
                std::path::Path::new(path).exists(),
                "{path} is missing: install Debian's chromium and chromium-driver \
                 (apt-get install chromium chromium-driver), or run `cargo xtask test` as root"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile =
            std::env::temp_dir().join(format!("console-browser-{}-{port}", std::process::id()));
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    format!("--user-data-dir={}", profile.display()),
                    format!("--window-size={WIDTH},{HEIGHT}"),
                ]
            }),
        );
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session");
        Self {
            client,
            driver,
            profile,
        }
    }

    async fn screenshot(&self, name: &str) {
        let dir = std::env::var("CONSOLE_SCREENSHOT_DIR").map_or_else(
            |_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/console-screenshots"),
            |dir| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../..")
                    .join(dir)
            },
        );
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("screenshot saved");
    }

    async fn login(&self, app: &TestApp) {
        let c = &self.client;
        c.goto(&app.url("/console/login"))
            .await
            .expect("login page");
        self.screenshot("login").await;
        c.find(Locator::Css("#token"))
            .await
            .expect("token field")
            .send_keys(API_TOKEN)
            .await
            .expect("typed");
        c.find(Locator::Css("form.login button"))
            .await
            .expect("button")
            .click()
            .await
            .expect("submitted");
        self.wait_for("table.calls, form.filters").await;
        assert_eq!(self.path().await, "/console/calls");
    }

    async fn path(&self) -> String {
        self.client
            .current_url()
            .await
            .expect("url")
            .path()
            .to_owned()
    }

    async fn query(&self) -> String {
        self.client
            .current_url()
            .await
            .expect("url")
            .query()
            .unwrap_or_default()
            .to_owned()
    }

    async fn wait_for(&self, css: &str) -> fantoccini::elements::Element {
        self.wait_for_within(css, Duration::from_secs(5)).await
    }

    async fn wait_for_within(&self, css: &str, within: Duration) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(within)
            .every(Duration::from_millis(20))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css} did not appear within {within:?}: {e}"))
    }

    async fn sids(&self) -> Vec<String> {
        let mut out = Vec::new();
        for row in self
            .client
            .find_all(Locator::Css("[data-call-sid]"))
            .await
            .expect("rows")
        {
            out.push(
                row.attr("data-call-sid")
                    .await
                    .expect("attr")
                    .unwrap_or_default(),
            );
        }
        out
    }

    /// At 200 % zoom a 1280 px window is 640 CSS px wide: nothing may need a sideways scroll.
    async fn fits_at_200_percent(&self) -> bool {
        self.client
            .set_window_size(WIDTH / 2, HEIGHT)
            .await
            .expect("resized");
        let fits = self
            .client
            .execute(
                "return document.documentElement.scrollWidth <= document.documentElement.clientWidth;",
                vec![],
            )
            .await
            .expect("script");
        self.client
            .set_window_size(WIDTH, HEIGHT)
            .await
            .expect("resized");
        fits == json!(true)
    }

    /// The tag and text of each element the Tab key reaches, in order (up to `n`).
    async fn tab_order(&self, n: usize) -> Vec<String> {
        let mut seen = Vec::new();
        for _ in 0..n {
            self.client
                .active_element()
                .await
                .expect("active element")
                .send_keys("\u{e004}")
                .await
                .expect("tab");
            let described = self
                .client
                .execute(
                    "const e = document.activeElement; return e.tagName + ':' + (e.getAttribute('name') || e.textContent.trim());",
                    vec![],
                )
                .await
                .expect("script");
            seen.push(described.as_str().unwrap_or_default().to_owned());
        }
        seen
    }

    async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

#[tokio::test]
async fn log_in_filter_the_list_and_the_url_carries_the_filters() {
    let app = spawn_app().await;
    app.create_call("EL_21_browser", Some("conv_browser_21"))
        .await;
    app.create_call("EL_22_browser", None).await;
    calls_domain::CallRepository::set_status(
        &app.repository,
        &calls_domain::CallSid::parse("EL_22_browser").expect("sid"),
        calls_domain::CallStatus::Failed,
        Some(time::OffsetDateTime::now_utc()),
        Some("busy".into()),
    )
    .await
    .expect("failed");
    let browser = Browser::start().await;

    browser.login(&app).await;
    let mut all = browser.sids().await;
    all.sort();
    assert_eq!(all, ["EL_21_browser", "EL_22_browser"]);
    assert!(browser.fits_at_200_percent().await, "calls page at 200 %");
    let reached = browser.tab_order(12).await;
    assert!(reached.iter().any(|e| e == "SELECT:status"), "{reached:?}");
    assert!(reached.iter().any(|e| e == "BUTTON:Filter"), "{reached:?}");

    browser
        .client
        .find(Locator::Css("#f-status"))
        .await
        .expect("status filter")
        .select_by_value("failed")
        .await
        .expect("selected");
    browser
        .client
        .find(Locator::Css("form.filters button[type=submit]"))
        .await
        .expect("filter button")
        .click()
        .await
        .expect("submitted");
    browser.wait_for("option[value=failed][selected]").await;

    assert_eq!(browser.path().await, "/console/calls");
    assert!(
        browser.query().await.contains("status=failed"),
        "{}",
        browser.query().await
    );
    assert_eq!(browser.sids().await, ["EL_22_browser"]);
    browser.screenshot("calls").await;

    // The filtered view is a link: opened afresh, it shows the same.
    let shared = browser.client.current_url().await.expect("url");
    browser
        .client
        .goto(shared.as_str())
        .await
        .expect("reopened");
    assert_eq!(browser.sids().await, ["EL_22_browser"]);

    // A bad filter: the page, with the error next to the field.
    browser
        .client
        .goto(&app.url("/console/calls?driver_id=abc"))
        .await
        .expect("bad filter");
    let error = browser.wait_for("#e-driver_id").await;
    assert!(error.text().await.expect("text").contains("integer"));
    browser.screenshot("calls-bad-filter").await;
    browser.close().await;
}

#[tokio::test]
async fn an_open_call_page_shows_turns_from_either_instance_within_2_s() {
    let app = spawn_app().await;
    app.create_call("EL_23_live", Some("conv_browser_live"))
        .await;
    let other = second_instance(&app).await;
    let browser = Browser::start().await;
    browser.login(&app).await;
    browser
        .client
        .goto(&app.url("/console/calls/EL_23_live"))
        .await
        .expect("call page");
    browser.wait_for("#transcript[data-events]").await;
    browser
        .wait_for_within("#live-status", Duration::from_secs(2))
        .await;

    post_turn(
        &app.address,
        &app.client,
        "EL_23_live",
        "Hello, this is dispatch about trip 42.",
    )
    .await;
    let answered = Instant::now();
    let turn = browser
        .wait_for_within(r#"[data-seq="1"]"#, Duration::from_secs(2))
        .await;
    assert!(answered.elapsed() < Duration::from_secs(2));
    assert!(turn.text().await.expect("text").contains("trip 42"));

    post_turn(
        &other,
        &app.client,
        "EL_23_live",
        "Yes, the reefer is fixed now.",
    )
    .await;
    let turn = browser
        .wait_for_within(r#"[data-seq="2"]"#, Duration::from_secs(2))
        .await;
    assert!(turn.text().await.expect("text").contains("reefer is fixed"));
    assert!(browser.fits_at_200_percent().await, "call page at 200 %");
    browser.screenshot("call-live").await;

    // The status change appears too, without a reload.
    post_event(&app, &post_call_event_for("conv_browser_live")).await;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        // Read by script: the element is replaced as the update arrives.
        let status = browser
            .client
            .execute(
                "const e = document.getElementById('call-status'); return e ? e.textContent : '';",
                vec![],
            )
            .await
            .expect("script");
        if status == json!("Completed") {
            break;
        }
        assert!(Instant::now() < deadline, "status still {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    browser.wait_for("table.data").await;
    browser.screenshot("call-completed").await;
    browser.close().await;
}

#[tokio::test]
async fn cancel_a_batch_from_its_page() {
    let app = spawn_app().await;
    let id = crate::console_batches::batch_with_a_waiting_and_a_dialed_driver(&app).await;
    let browser = Browser::start().await;
    browser.login(&app).await;
    browser
        .client
        .find(Locator::LinkText("Batches"))
        .await
        .expect("navigation")
        .click()
        .await
        .expect("followed");
    browser
        .wait_for(&format!(r#"[data-batch-id="{id}"]"#))
        .await;
    assert!(browser.fits_at_200_percent().await, "batches page at 200 %");
    browser.screenshot("batches").await;
    browser
        .client
        .find(Locator::LinkText(&id.to_string()))
        .await
        .expect("batch link")
        .click()
        .await
        .expect("followed");
    browser
        .wait_for(r#"[data-driver-id="1"][data-state="scheduled"]"#)
        .await;
    assert!(browser.fits_at_200_percent().await, "batch page at 200 %");
    browser.screenshot("batch").await;

    browser
        .client
        .find(Locator::Css("form.cancel button"))
        .await
        .expect("cancel button")
        .click()
        .await
        .expect("submitted");

    browser
        .wait_for(r#"[data-driver-id="1"][data-state="cancelled"]"#)
        .await;
    assert_eq!(browser.path().await, format!("/console/batches/{id}"));
    let status = browser
        .client
        .find(Locator::Css("#batch-status"))
        .await
        .expect("status")
        .text()
        .await
        .expect("text");
    assert_eq!(status, "Cancelled");
    assert!(
        browser
            .client
            .find(Locator::Css("form.cancel"))
            .await
            .is_err(),
        "no Cancel button once cancelled"
    );
    browser.screenshot("batch-cancelled").await;
    browser.close().await;
}
