//! The service, built once: [`Application::build`] makes the Alipay+ client, installs the
//! metrics recorder and binds the admin listener (port 0 works; the bound address is reported),
//! and [`Application::run_until_stopped`] serves the admin routes and runs the pipeline until a
//! shutdown. `regnotify run`, `regnotify demo` and the tests all start the service this way.
//!
//! This is wiring only; every decision about events lives in [`crate::pipeline`].

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::alipayplus::ResultClass;
use crate::alipayplus::{AlipayPlusClient, Clients, KeyWatcher};
use crate::config::Settings;
use crate::observe::{Health, HealthLimits, Stats};
use crate::pipeline;
use crate::pipeline::breaker::CircuitState;

/// The service, built and bound, not running yet.
pub struct Application {
    settings: Settings,
    clients: Clients,
    watcher: KeyWatcher,
    metrics: PrometheusHandle,
    listener: tokio::net::TcpListener,
    admin_addr: SocketAddr,
    stats: Arc<Stats>,
    health: Arc<Health>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("admin_addr", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Builds the service from its settings: every MPP's Alipay+ client from the configured keys.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        settings.alipayplus.require_credentials()?;
        let (clients, watcher) = Clients::from_settings(&settings.alipayplus)?;
        Self::build_with_clients(settings, clients, watcher).await
    }

    /// Builds the service around a top-level client made elsewhere (the demo and the tests hold
    /// its keys in memory); `[alipayplus.clients]` tables are built from their files.
    pub async fn build_with_client(
        settings: Settings,
        client: Arc<AlipayPlusClient>,
    ) -> anyhow::Result<Application> {
        let (clients, watcher) = Clients::with_default(&settings.alipayplus, client)?;
        Self::build_with_clients(settings, clients, watcher).await
    }

    async fn build_with_clients(
        settings: Settings,
        clients: Clients,
        watcher: KeyWatcher,
    ) -> anyhow::Result<Application> {
        let metrics = crate::admin::install_metrics()?;
        crate::observe::exported::export_known_series(
            std::iter::once(crate::config::DEFAULT_PSP_LABEL)
                .chain(clients.named.keys().map(String::as_str)),
            &crate::observe::exported::KnownLabels {
                result_classes: &ResultClass::ALL.map(ResultClass::as_str),
                retried_classes: &ResultClass::ALL
                    .into_iter()
                    .filter(|class| class.is_retryable())
                    .map(ResultClass::as_str)
                    .collect::<Vec<_>>(),
                circuit_states: &CircuitState::ALL.map(CircuitState::as_str),
            },
        );
        let listener = crate::admin::bind(settings.admin.listen_addr()?).await?;
        let admin_addr = listener
            .local_addr()
            .context("cannot read the admin listener's address")?;
        let health = Health::default().with_limits(HealthLimits {
            livez_after: settings.admin.livez_after,
            stall_after: settings.admin.stall_after,
        });
        Ok(Application {
            settings,
            clients,
            watcher,
            metrics,
            listener,
            admin_addr,
            stats: Arc::new(Stats::default()),
            health: Arc::new(health),
        })
    }

    /// Where `/metrics`, `/livez`, `/healthz` and `/readyz` are served.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    pub fn health(&self) -> Arc<Health> {
        Arc::clone(&self.health)
    }

    /// Serves the admin routes and runs the pipeline until `shutdown` fires, then stops within
    /// `shutdown_timeout` (SPEC 5).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let settings = self.settings;
        tracing::info!(
            input_topic = %settings.kafka.input_topic,
            group_id = %settings.kafka.group_id,
            endpoint = self.clients.default.endpoint(),
            mpp_tables = self.clients.named.len(),
            "regnotify starting"
        );
        let admin_stop = CancellationToken::new();
        let admin = tokio::spawn(crate::admin::serve(
            self.listener,
            crate::admin::AdminState {
                metrics: self.metrics,
                health: Arc::clone(&self.health),
                // With the circuit breaker on, a refused streak opens the circuit, and /readyz
                // reports the open circuit instead.
                refused_streak_threshold: if settings.alipayplus.circuit_breaker.enabled {
                    u64::MAX
                } else {
                    u64::from(settings.processing.refused_streak_threshold)
                },
            },
            admin_stop.clone(),
        ));
        tracing::info!(listen = %self.admin_addr, "admin listener up: /metrics /livez /healthz /readyz");
        // Key files are reloaded while the pipeline runs (SIGHUP or a change seen by polling).
        let watcher_stop = CancellationToken::new();
        let watcher = tokio::spawn(self.watcher.run(
            settings.alipayplus.key_reload_interval,
            watcher_stop.clone(),
        ));
        let result =
            pipeline::run(&settings, self.clients, self.stats, self.health, shutdown).await;
        watcher_stop.cancel();
        let _ = watcher.await;
        admin_stop.cancel();
        if let Ok(Err(error)) = admin.await {
            tracing::warn!(%error, "admin listener failed");
        }
        result?;
        tracing::info!("regnotify stopped");
        Ok(())
    }
}

/// `regnotify run`: the service until SIGTERM or SIGINT, then a clean stop within
/// `shutdown_timeout`.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let application = Application::build(settings).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    application.run_until_stopped(shutdown).await
}

/// Fires `shutdown` on the first SIGTERM or SIGINT.
pub async fn stop_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, stopping"),
        () = terminate => tracing::info!("SIGTERM received, stopping"),
    }
    shutdown.cancel();
    // A second Ctrl-C means the operator will not wait: leave now. Nothing is lost, since only
    // acknowledged work was ever committed.
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::warn!("second SIGINT, exiting without finishing work in flight");
            std::process::exit(130);
        }
    });
}
