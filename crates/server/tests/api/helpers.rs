use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::Duration;

use calls_domain::models::BatchDefaults;
use calls_domain::{CallRepository, CallSid, ConversationId, NewCall};
use calls_server::config::{BodyLimits, DEFAULT_BODY_READ_TIMEOUT};
use calls_server::config::{ConsoleSettings, Settings, SimulationSettings, TelephonySettings};
use calls_server::startup::Application;
use calls_server::state::AppState;
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
        telephony: TelephonySettings::ElevenLabs {
            base_url: elevenlabs_uri.to_owned(),
            api_key: "xi_test_key".into(),
            agent_id: "agent_test".into(),
            agent_phone_number_id: "phnum_test".into(),
            timeout: Duration::from_secs(2),
        },
        webhook_secret: Some(WEBHOOK_SECRET.into()),
        api_token: Some(API_TOKEN.into()),
        conversation_wait: Duration::from_millis(400),
        transfer_to_number: "+18005551234".into(),
        dispatcher_name: "AGY Dispatcher".into(),
        public_base_url: "http://127.0.0.1:0".into(),
        call_concurrency: 8,
        body_limits: BodyLimits::default(),
        body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
        insecure_dev: false,
        // Tests run passes themselves; the timer has tests of its own.
        reconcile_interval: None,
        reconcile_after: Duration::from_secs(1800),
        simulation: SimulationSettings::default(),
        batch_defaults: BatchDefaults::default(),
        // Batch tests turn the dialer on (short polls); elsewhere it would only add noise.
        dialer_poll: None,
        predial: None,
        limits: calls_server::limits::LimitSettings::default(),
        console: ConsoleSettings {
            session_ttl: Duration::from_secs(43_200),
            secure_cookie: false,
            listen_url: database.url.clone(),
        },
        database,
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(customize: impl FnOnce(&mut Settings)) -> TestApp {
    LazyLock::force(&TRACING);
    let db = TestDatabase::new().await;
    let elevenlabs = MockServer::start().await;
    let (address, state) = start_instance(db.config(), &elevenlabs.uri(), customize).await;
    let pool = build_pool(db.config()).expect("pool");
    TestApp {
        address,
        // Shorter than the server's keep-alive (5 s), so a loaded machine never sends on a
        // connection the server is closing (a reset, not an answer).
        client: reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(2))
            .build()
            .expect("client"),
        elevenlabs,
        state,
        repository: PgCallRepository::new(pool, RetryPolicy::default()),
        db,
    }
}

/// One more server on an existing database and fake ElevenLabs (several instances).
pub async fn start_instance(
    database: &DbConfig,
    elevenlabs_uri: &str,
    customize: impl FnOnce(&mut Settings),
) -> (String, actix_web::web::Data<AppState>) {
    let mut settings = settings_for(database.clone(), elevenlabs_uri);
    customize(&mut settings);
    let app = Application::build(settings).await.expect("app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let state = app.state();
    tokio::spawn(app.run_until_stopped());
    (address, state)
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

/// A response read off a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// From the first byte sent to the first byte of the answer.
    pub took: Duration,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts the SPEC error envelope and returns its message.
    pub fn envelope(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{self:?}");
        let body: Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("JSON error body ({e}): {self:?}"));
        assert_eq!(body["status"], "error", "{body}");
        assert!(body["details"].is_string(), "{body}");
        body["message"].as_str().unwrap_or_default().to_owned()
    }
}

impl TestApp {
    /// Writes `parts` on one connection, pausing `pause` before each part after the first,
    /// and reads whatever comes back until the server closes the connection or `within`
    /// has passed. For what an HTTP client library would not send: malformed heads,
    /// bodies that never come, bytes that trickle.
    pub async fn raw(&self, parts: &[&[u8]], pause: Duration, within: Duration) -> RawResponse {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.address.trim_start_matches("http://").to_owned();
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut reader, mut writer) = stream.split();
        let started = std::time::Instant::now();
        let received = async {
            let mut buf = Vec::new();
            let mut first = None;
            let mut chunk = [0u8; 8192];
            // Until the server closes; a reset after the answer is fine.
            while let Ok(n @ 1..) = reader.read(&mut chunk).await {
                first.get_or_insert_with(|| started.elapsed());
                buf.extend_from_slice(&chunk[..n]);
            }
            (buf, first.unwrap_or_else(|| started.elapsed()))
        };
        let send = async {
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(pause).await;
                }
                if writer.write_all(part).await.is_err() {
                    break;
                }
            }
            // Keep the connection open: the server decides when it ends.
            std::future::pending::<()>().await;
        };
        let (buf, took) = tokio::time::timeout(within, async {
            tokio::select! {
                answer = received => answer,
                () = send => (Vec::new(), Duration::ZERO),
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no complete answer within {within:?}"));
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let head_len = match response.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!(
                "not an HTTP response ({other:?}): {:?}",
                String::from_utf8_lossy(&buf)
            ),
        };
        RawResponse {
            status: response.code.unwrap_or_default(),
            headers: response
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect(),
            body: buf[head_len..].to_vec(),
            took,
        }
    }
}
