//! `regnotify run`: builds the Alipay+ client from settings, starts the pipeline and stops it
//! cleanly on SIGTERM or SIGINT (SPEC 5, section 7).
//!
//! This is wiring only; every decision about events lives in [`crate::pipeline`].

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::alipayplus::AlipayPlusClient;
use crate::config::Settings;
use crate::observe::{Health, Stats};
use crate::pipeline;

/// Runs the service until SIGTERM or SIGINT, then shuts down within `shutdown_timeout`.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    settings.alipayplus.require_credentials()?;
    let client = Arc::new(
        AlipayPlusClient::from_settings(&settings.alipayplus)
            .context("the alipay+ client cannot be built from these settings")?,
    );
    let metrics = crate::admin::install_metrics()?;
    let listen = settings.admin.listen_addr()?;
    let listener = crate::admin::bind(listen).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    tracing::info!(
        input_topic = %settings.kafka.input_topic,
        group_id = %settings.kafka.group_id,
        endpoint = client.endpoint(),
        "regnotify starting"
    );
    let stats = Arc::new(Stats::default());
    let status = Arc::new(Health::default());
    let admin_stop = CancellationToken::new();
    let admin = tokio::spawn(crate::admin::serve(
        listener,
        crate::admin::AdminState {
            metrics,
            health: Arc::clone(&status),
            refused_streak_threshold: u64::from(settings.processing.refused_streak_threshold),
        },
        admin_stop.clone(),
    ));
    tracing::info!(%listen, "admin listener up: /metrics /healthz /readyz");
    let result = pipeline::run(&settings, client, stats, status, shutdown).await;
    admin_stop.cancel();
    if let Ok(Err(error)) = admin.await {
        tracing::warn!(%error, "admin listener failed");
    }
    result?;
    tracing::info!("regnotify stopped");
    Ok(())
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
