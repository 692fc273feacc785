//! The admin listener of `regnotify run` (SPEC section 8): Prometheus text at `/metrics`,
//! liveness at `/livez` (with its limit from `admin.livez_after`) and `/healthz` (SPEC's, with a
//! fixed limit), readiness at `/readyz`.
//!
//! It only reads what the pipeline publishes in [`Health`] and the metrics recorder; it never
//! changes the pipeline's behaviour and never exposes an id, a key or a secret.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::observe::{Health, names};

/// `/healthz` answers 503 once the main loop has been quieter than this (it turns at least every
/// commit interval). Fixed, as SPEC names it; `/livez` has the same rule with its limit from
/// `admin.livez_after`.
pub(crate) const HEALTHZ_QUIET_AFTER: Duration = Duration::from_secs(60);

/// Histogram buckets, in seconds: HTTP calls and end-to-end latency span milliseconds to minutes.
const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// RSA signing takes about a millisecond.
const SIGNING_BUCKETS: [f64; 10] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
];

/// Installs the process-wide Prometheus recorder once and returns its handle. Safe to call from
/// several threads at once (services started side by side in one process share the recorder):
/// the first installs it under a lock, the others wait and get its handle.
pub(crate) fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: std::sync::Mutex<Option<PrometheusHandle>> = std::sync::Mutex::new(None);
    let mut installed = HANDLE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(names::SIGNING_TIME.into()),
            &SIGNING_BUCKETS,
        )?
        .set_buckets(&LATENCY_BUCKETS)?
        .install_recorder()?;
    crate::observe::describe_metrics();
    *installed = Some(handle.clone());
    Ok(handle)
}

/// What the admin routes read.
#[derive(Clone)]
pub(crate) struct AdminState {
    pub(crate) metrics: PrometheusHandle,
    pub(crate) health: Arc<Health>,
    pub(crate) refused_streak_threshold: u64,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState").finish_non_exhaustive()
    }
}

pub(crate) fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves the admin routes on `listener` until `shutdown` fires. Also runs the recorder's upkeep.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let upkeep = tokio::spawn({
        let handle = state.metrics.clone();
        let shutdown = shutdown.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = tick.tick() => handle.run_upkeep(),
                    () = shutdown.cancelled() => break,
                }
            }
        }
    });
    let result = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    upkeep.abort();
    result
}

/// Binds the admin address; a bind failure names the setting.
pub(crate) async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|error| {
        anyhow::anyhow!("invalid setting `admin.listen`: cannot bind {addr}: {error}")
    })
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// Alive while the main loop turns within `admin.livez_after`: the probe that restarts a
/// process whose loop is wedged.
async fn livez(State(state): State<AdminState>) -> impl IntoResponse {
    livez_answer(&state.health, Instant::now())
}

fn livez_answer(health: &Health, now: Instant) -> (StatusCode, String) {
    match health.liveness(now) {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

async fn healthz(State(state): State<AdminState>) -> impl IntoResponse {
    let quiet = state.health.since_last_beat();
    if quiet > HEALTHZ_QUIET_AFTER {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("main loop has not turned for {} s\n", quiet.as_secs()),
        );
    }
    (StatusCode::OK, "ok\n".to_string())
}

/// Ready when the group is joined, Kafka answers, no consumer error persists, Alipay+ is not
/// refusing every request, and the service is not stuck (no broken invariant, no stall of
/// waiting work, no overdue probe: [`Health::stuck`]).
async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    readyz_answer(&state, Instant::now())
}

fn readyz_answer(state: &AdminState, now: Instant) -> (StatusCode, String) {
    let health = &state.health;
    let mut problems = Vec::new();
    if !health.joined() {
        problems.push("consumer group not joined yet".to_string());
    }
    if !health.kafka_reachable() {
        problems.push("no kafka broker reachable".to_string());
    }
    let consumer_errors = crate::observe::consumer_error_status(health);
    for error in &consumer_errors.persistent {
        let partition = match error.partition {
            Some(partition) => format!("on partition {partition}"),
            None => "(librdkafka does not say which partition)".to_string(),
        };
        problems.push(format!(
            "kafka consumer error {} {partition} for {} s ({} reports, the last {} s ago)",
            error.code,
            error.lasting.as_secs(),
            error.reports,
            error.last_report_ago.as_secs()
        ));
    }
    if !consumer_errors.not_advancing.is_empty() {
        let partitions: Vec<String> = consumer_errors
            .not_advancing
            .iter()
            .map(i32::to_string)
            .collect();
        problems.push(format!(
            "partitions {} have records waiting and a fetch position that has not moved for {} s \
             (librdkafka statistics)",
            partitions.join(", "),
            crate::observe::CONSUMER_ERROR_PERSIST_AFTER.as_secs()
        ));
    }
    if let Some(reason) = health.commits_refused() {
        problems.push(format!("offset commits failing: {reason}"));
    }
    if let Some(reason) = health.circuit() {
        problems.push(format!(
            "alipay+ circuit open, calls paused and probed: {reason}"
        ));
    }
    let streak = health.refused_streak();
    if streak >= state.refused_streak_threshold {
        problems.push(format!(
            "alipay+ refused the last {streak} events in a row (check client id, keys and key version)"
        ));
    }
    problems.extend(health.stuck(now));
    if problems.is_empty() {
        return (
            StatusCode::OK,
            format!(
                "ready: {} partitions assigned\n",
                health.assigned_partitions()
            ),
        );
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("not ready: {}\n", problems.join("; ")),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Services started side by side in one process (the tests do) install the recorder at
    /// the same moment: every one gets it, none fails.
    #[test]
    fn the_recorder_is_installed_once_however_many_ask_at_once() {
        let threads: Vec<_> = (0..8)
            .map(|_| std::thread::spawn(install_metrics))
            .collect();
        for thread in threads {
            assert!(thread.join().unwrap().is_ok());
        }
    }

    /// Before the consumer group is joined the service is alive but not ready, and `/readyz`
    /// says why.
    #[tokio::test]
    async fn readyz_is_503_until_the_group_is_joined() {
        let health = Arc::new(Health::default());
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            AdminState {
                metrics: install_metrics().unwrap(),
                health: Arc::clone(&health),
                refused_streak_threshold: 20,
            },
            stop.clone(),
        ));
        let http = reqwest::Client::new();
        let readyz = http.get(format!("{url}/readyz")).send().await.unwrap();
        assert_eq!(readyz.status().as_u16(), 503);
        let body = readyz.text().await.unwrap();
        assert!(body.contains("consumer group not joined yet"), "{body}");
        let healthz = http.get(format!("{url}/healthz")).send().await.unwrap();
        assert_eq!(healthz.status().as_u16(), 200, "alive while not ready");
        let livez = http.get(format!("{url}/livez")).send().await.unwrap();
        assert_eq!(livez.status().as_u16(), 200, "alive while not ready");
        assert_eq!(livez.text().await.unwrap(), "ok\n");
        stop.cancel();
        server.await.unwrap().unwrap();
    }

    fn state(health: Health) -> AdminState {
        AdminState {
            metrics: install_metrics().unwrap(),
            health: Arc::new(health),
            refused_streak_threshold: 20,
        }
    }

    #[test]
    fn livez_is_503_with_a_one_line_reason_once_the_loop_is_quieter_than_its_limit() {
        let health = Health::isolated().with_limits(crate::observe::HealthLimits {
            livez_after: Duration::from_secs(60),
            stall_after: Duration::from_secs(300),
        });
        health.beat();
        let now = Instant::now();
        assert_eq!(livez_answer(&health, now), (StatusCode::OK, "ok\n".into()));
        let (status, body) = livez_answer(&health, now + Duration::from_secs(61));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            "main loop has not turned for 61 s (admin.livez_after = 1m)\n"
        );
    }

    /// A joined, reachable service is ready until work stalls, a probe is overdue or an
    /// invariant breaks; `/readyz` names each.
    #[test]
    fn readyz_names_a_stall_an_overdue_probe_and_a_broken_invariant() {
        let health = Health::isolated();
        health.assigned(3);
        let state = state(health);
        let health = &state.health;
        let now = Instant::now();
        assert_eq!(
            readyz_answer(&state, now),
            (StatusCode::OK, "ready: 3 partitions assigned\n".into())
        );
        health.reporting(|| crate::observe::in_flight(4));
        let later = Instant::now() + Duration::from_secs(301);
        let (status, body) = readyz_answer(&state, later);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body.starts_with("not ready: stalled: 4 events in flight and 0 awaiting commit"),
            "{body}"
        );
        health.circuit_probe("PSP_A", Some(now));
        health.reporting(|| crate::observe::invariant_broken("slots", "freed twice"));
        let (status, body) = readyz_answer(&state, later);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body.lines().count(), 1, "{body}");
        for named in ["invariant `slots`", "stalled", "psp PSP_A"] {
            assert!(body.contains(named), "{named}: {body}");
        }
    }
}
