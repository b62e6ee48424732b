//! Wiring: build the adapters from settings, then the HTTP server on a bound listener
//! (port 0 in tests).

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, middleware, web};
use anyhow::Context;
use calls_domain::ports::{BatchRepository, PredialCheck};
use calls_domain::service::{
    ApplyPostCall, CallContext, CancelBatch, CreateBatch, Dialer, ReadBatches, ReconcileSettings,
    ReconcileStale, RecordTurn,
};
use calls_domain::{CallRepository, Telephony};
use calls_elevenlabs::{
    ElevenLabsConfig, ElevenLabsTelephony, SimulatedConfig, SimulatedTelephony,
};
use calls_predial::{HttpPredialCheck, PredialConfig};
use calls_store_postgres::{PgBatchRepository, PgCallRepository, RetryPolicy, build_pool};

use crate::config::{PredialSettings, Settings, TelephonySettings};
use crate::limits::{Limits, shed_load};
use crate::metrics::Metrics;
use crate::middleware::{envelope_framework_errors, request_context};
use crate::routes;
use crate::state::AppState;
use crate::telephony_metrics::{MeasuredPredial, MeasuredTelephony};
use crate::timing::{CONVERSATION_REQUEST_INTERVAL, Pace, TokioTimer};

/// The ports the application runs on.
pub struct Adapters {
    pub repository: Arc<dyn CallRepository>,
    pub batches: Arc<dyn BatchRepository>,
    pub telephony: Arc<dyn Telephony>,
    pub predial: Option<Arc<dyn PredialCheck>>,
}

pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
}

pub fn build_telephony(settings: &Settings) -> anyhow::Result<Arc<dyn Telephony>> {
    Ok(match &settings.telephony {
        TelephonySettings::ElevenLabs {
            base_url,
            api_key,
            agent_id,
            agent_phone_number_id,
            timeout,
        } => Arc::new(
            ElevenLabsTelephony::new(ElevenLabsConfig {
                base_url: base_url.clone(),
                api_key: api_key.clone(),
                agent_id: agent_id.clone(),
                agent_phone_number_id: agent_phone_number_id.clone(),
                timeout: *timeout,
            })
            .context("building the ElevenLabs client")?,
        ),
        TelephonySettings::Simulated => Arc::new(
            SimulatedTelephony::new(SimulatedConfig {
                drop_turn: settings.simulation.drop_turn,
                skip_post_call: settings.simulation.skip_post_call,
                ..SimulatedConfig::new(
                    settings.public_base_url.clone(),
                    // Without a secret (insecure dev) the deliveries are signed with an
                    // empty key, which the open webhook does not check.
                    settings.webhook_secret.clone().unwrap_or_default(),
                )
            })
            .context("building the simulated telephony")?,
        ),
    })
}

/// The pre-dial check, when `PREDIAL_URL` is set.
pub fn build_predial(settings: &Settings) -> anyhow::Result<Option<Arc<dyn PredialCheck>>> {
    let Some(PredialSettings {
        url,
        token,
        timeout,
    }) = &settings.predial
    else {
        return Ok(None);
    };
    let check = HttpPredialCheck::new(PredialConfig {
        url: url.clone(),
        token: token.clone(),
        timeout: *timeout,
    })
    .context("building the pre-dial check")?;
    Ok(Some(Arc::new(check)))
}

impl Application {
    /// Builds the PostgreSQL repositories and the configured telephony, binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = build_pool(&settings.database).context("building the database pool")?;
        let pg = PgCallRepository::new(pool.clone(), RetryPolicy::default());
        let batches = Arc::new(PgBatchRepository::new(pool, RetryPolicy::default()));
        let telephony = build_telephony(&settings)?;
        let predial = build_predial(&settings)?;
        Self::build_with(
            settings,
            Adapters {
                repository: Arc::new(pg.clone()),
                batches,
                telephony,
                predial,
            },
            Some(&pg),
        )
    }

    /// Builds on given adapters (tests).
    pub fn build_with(
        settings: Settings,
        adapters: Adapters,
        pg: Option<&PgCallRepository>,
    ) -> anyhow::Result<Self> {
        let Adapters {
            repository,
            batches,
            telephony,
            predial,
        } = adapters;
        let listener = TcpListener::bind(settings.bind_addr)
            .with_context(|| format!("binding {}", settings.bind_addr))?;
        let port = listener.local_addr()?.port();
        let settings = Arc::new(settings);
        if settings.insecure_dev {
            tracing::warn!(
                "INSECURE DEVELOPMENT MODE: endpoints without a configured secret accept unauthenticated requests. Never run this in production."
            );
        }
        let metrics = Arc::new(Metrics::new());
        let telephony: Arc<dyn Telephony> =
            Arc::new(MeasuredTelephony::new(telephony, metrics.clone()));
        let context = CallContext {
            dispatcher_name: settings.dispatcher_name.clone(),
            transfer_to_number: settings.transfer_to_number.clone(),
        };
        let predial: Option<Arc<dyn PredialCheck>> = predial
            .map(|p| Arc::new(MeasuredPredial::new(p, metrics.clone())) as Arc<dyn PredialCheck>);
        let state = web::Data::new(AppState {
            record_turn: RecordTurn::new(
                repository.clone(),
                Arc::new(TokioTimer),
                settings.conversation_wait,
            ),
            post_call: ApplyPostCall::new(repository.clone()).with_batches(batches.clone()),
            reconcile_stale: Arc::new(
                ReconcileStale::new(
                    repository.clone(),
                    telephony.clone(),
                    Arc::new(Pace::new(CONVERSATION_REQUEST_INTERVAL)),
                    ReconcileSettings::default(),
                )
                .with_batches(batches.clone()),
            ),
            create_batch: CreateBatch::new(batches.clone(), settings.batch_defaults.clone()),
            read_batches: ReadBatches::new(batches.clone()),
            cancel_batch: CancelBatch::new(batches.clone()),
            dialer: Arc::new(Dialer::new(
                batches.clone(),
                telephony.clone(),
                predial,
                context,
            )),
            dial_permits: Arc::new(tokio::sync::Semaphore::new(settings.call_concurrency)),
            batches,
            settings: settings.clone(),
            repository,
            telephony,
            metrics,
            console: crate::console::ConsoleState::new(&settings, pg.map(PgCallRepository::pool)),
            pool: pg.map(|pg| pg.pool().clone()),
            db_retries: pg.map(PgCallRepository::retries),
            limits: web::Data::new(Limits::new(settings.limits)),
        });
        let server = run(listener, state.clone())?;
        Ok(Self {
            port,
            server,
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// Serves until SIGTERM/SIGINT, then finishes in-flight requests (up to 30 s). The
    /// stale-call timer (when configured) runs meanwhile and stops with the server; a pass
    /// cut short leaves nothing half-done (each Call is finished in one transaction, and
    /// the lock goes with its connection). The dialer (unless `DIALER_POLL_MS=0`) stops
    /// claiming with the server and lets the dials in flight finish (up to 30 s).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let dialer = self.state.settings.dialer_poll.map(|poll| {
            crate::dialer::spawn(
                self.state.dialer.clone(),
                self.state.dial_permits.clone(),
                poll,
                self.state.metrics.clone(),
            )
        });
        let timer = self.state.settings.reconcile_interval.map(|interval| {
            crate::reconcile::spawn_timer(
                self.state.reconcile_stale.clone(),
                self.state.metrics.clone(),
                interval,
                self.state.settings.reconcile_after,
            )
        });
        let result = self.server.await;
        if let Some(timer) = timer {
            timer.abort();
        }
        if let Some(dialer) = dialer {
            dialer.stop().await;
        }
        result
    }
}

/// How long a client may take to send a request head (then a bare 408 from actix-http);
/// a slow body is cut by the body read timeout in `body.rs` (408 with the envelope).
pub const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an idle keep-alive connection stays open.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// How long a closing connection may take to shut down before it is dropped.
pub const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long in-flight requests may take to finish after SIGTERM/SIGINT.
pub const SHUTDOWN_TIMEOUT_SECS: u64 = 30;

/// The actix-web application on `HttpServer`. Requests that never reach it (not HTTP, a
/// head over the size limit, a head that never completes) get actix-http's bare
/// 400/431/408; every answer of the application carries the envelope.
fn run(listener: TcpListener, state: web::Data<AppState>) -> std::io::Result<Server> {
    let limits = state.limits.clone();
    // actix-web bounds connections per worker thread.
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    let per_worker = limits.settings().max_connections.div_ceil(workers).max(1);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(limits.clone())
            .wrap(middleware::from_fn(shed_load))
            .wrap(middleware::from_fn(request_context))
            .wrap(middleware::ErrorHandlers::new().default_handler(envelope_framework_errors))
            .configure(routes::configure)
            .configure(crate::console::configure)
            .default_service(web::to(routes::not_found))
    })
    .workers(workers)
    .max_connections(per_worker)
    .keep_alive(KEEP_ALIVE)
    .client_request_timeout(CLIENT_REQUEST_TIMEOUT)
    .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
    .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS)
    .listen(listener)?
    .run();
    Ok(server)
}
