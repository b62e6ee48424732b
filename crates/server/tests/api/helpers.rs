use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::Duration;

use calls_domain::{CallRepository, CallSid, ConversationId, NewCall};
use calls_server::config::{Secret, Settings, SimulationSettings, TelephonySettings};
use calls_server::startup::{AppState, Application};
use calls_store_postgres::testing::TestDatabase;
use calls_store_postgres::{DbConfig, PgCallRepository, RetryPolicy, build_pool};
use serde_json::{Value, json};
use time::OffsetDateTime;
use wiremock::MockServer;

pub const WEBHOOK_SECRET: &str = "wsec_test_secret";
pub const API_TOKEN: &str = "test-api-token";

static TRACING: LazyLock<()> = LazyLock::new(|| {
    if std::env::var_os("TEST_LOG").is_some() {
        calls_server::telemetry::init(calls_server::cli::LogFormat::Pretty, std::io::stdout);
    }
});

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub elevenlabs: MockServer,
    pub state: actix_web::web::Data<AppState>,
    pub repository: PgCallRepository,
    /// Last, so the schema outlives the server's use of it.
    pub db: TestDatabase,
}

pub fn settings_for(database: DbConfig, elevenlabs_uri: &str) -> Settings {
    Settings {
        bind_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        database,
        telephony: TelephonySettings::ElevenLabs {
            base_url: elevenlabs_uri.to_owned(),
            api_key: Secret::new("xi_test_key"),
            agent_id: "agent_test".into(),
            agent_phone_number_id: "phnum_test".into(),
            timeout: Duration::from_secs(2),
        },
        webhook_secret: Some(Secret::new(WEBHOOK_SECRET)),
        api_token: Some(Secret::new(API_TOKEN)),
        conversation_wait: Duration::from_millis(400),
        transfer_to_number: "+18005551234".into(),
        dispatcher_name: "AGY Dispatcher".into(),
        public_base_url: "http://127.0.0.1:0".into(),
        call_concurrency: 8,
        max_body_bytes: 16 * 1024,
        insecure_dev: false,
        // Tests run passes themselves; the timer has tests of its own.
        reconcile_interval: None,
        reconcile_after: Duration::from_secs(1800),
        simulation: SimulationSettings::default(),
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(customize: impl FnOnce(&mut Settings)) -> TestApp {
    LazyLock::force(&TRACING);
    let db = TestDatabase::new().await;
    let elevenlabs = MockServer::start().await;
    let mut settings = settings_for(db.config().clone(), &elevenlabs.uri());
    customize(&mut settings);
    let app = Application::build(settings).await.expect("app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let state = app.state();
    tokio::spawn(app.run_until_stopped());
    let pool = build_pool(db.config()).expect("pool");
    TestApp {
        address,
        client: reqwest::Client::new(),
        elevenlabs,
        state,
        repository: PgCallRepository::new(pool, RetryPolicy::default()),
        db,
    }
}

pub fn sign(body: &[u8], timestamp: i64) -> String {
    calls_elevenlabs::signature::sign(WEBHOOK_SECRET, timestamp, body)
}

pub fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

pub fn turn_body(call_sid: &str, speaker: &str, message: &str, timestamp: &str) -> Value {
    json!({"call_sid": call_sid, "speaker": speaker, "message": message, "timestamp": timestamp})
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// A Call as the batch endpoint writes it, optionally already linked to ElevenLabs.
    pub async fn create_call(&self, call_sid: &str, conversation_id: Option<&str>) {
        let sid = CallSid::parse(call_sid).expect("sid");
        self.repository
            .create_call(&NewCall {
                call_sid: sid.clone(),
                driver_id: Some(555),
                call_start_time: OffsetDateTime::now_utc(),
            })
            .await
            .expect("call created");
        if let Some(conv) = conversation_id {
            self.repository
                .set_conversation_id(&sid, &ConversationId::parse(conv).expect("conv"))
                .await
                .expect("linked");
        }
    }

    pub async fn post_transcription(&self, body: &Value) -> reqwest::Response {
        let raw = serde_json::to_vec(body).expect("json");
        let signature = sign_now(&raw);
        self.post_transcription_raw(raw, Some(&signature), "application/json")
            .await
    }

    pub async fn post_transcription_raw(
        &self,
        body: Vec<u8>,
        signature: Option<&str>,
        content_type: &str,
    ) -> reqwest::Response {
        let mut req = self
            .client
            .post(self.url("/webhooks/elevenlabs/transcription"))
            .header("Content-Type", content_type)
            .body(body);
        if let Some(sig) = signature {
            req = req.header("ElevenLabs-Signature", sig);
        }
        req.send().await.expect("request sent")
    }

    /// A GET without credentials.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get_authed(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn turn_count(&self) -> i64 {
        self.db
            .strings("SELECT count(*)::text AS value FROM call_transcriptions")
            .await
            .first()
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1)
    }
}

pub fn sign_now(body: &[u8]) -> String {
    sign(body, now())
}

/// Asserts the SPEC error envelope and returns its message.
pub async fn assert_envelope(response: reqwest::Response, status: u16) -> String {
    assert_eq!(response.status().as_u16(), status, "unexpected status");
    let body: Value = response.json().await.expect("JSON error body");
    assert_eq!(body["status"], "error", "{body}");
    assert!(body["message"].is_string(), "{body}");
    assert!(body["details"].is_string(), "{body}");
    body["message"].as_str().unwrap_or_default().to_owned()
}
