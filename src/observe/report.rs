//! One function per observable event of the pipeline (an event consumed, an Alipay+ attempt, an
//! outcome, a dead letter, a rebalance, a key reload, a broken invariant, …): each logs it,
//! counts it in Prometheus metrics under a name of [`names`] and updates [`Stats`] and the
//! process's vigil of work and progress.
//!
//! Labels come from small fixed sets; ids and secrets never become labels, and nothing here ever
//! sees a key or a signature. Kafka client errors and statistics are `kafka`'s.
//!
//! Longer than 600 lines with its tests on purpose: a flat list of small independent functions,
//! one per event, is the one place to look up what an event does; split by topic, it would not be.

use std::sync::PoisonError;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[cfg(doc)]
use super::ERROR_LOG_INTERVAL;
use super::exported;
use super::health::with_vigil;
use super::log_limiter::Verdict;
use super::names;
use super::stats::Stats;
use super::stuck::Count;
use crate::event::DeadLetterReason;
use crate::event::{NotifyOutcome, RegistrationNotifyOutcome};

pub(crate) fn record_consumed(stats: &Stats, partition: i32) {
    stats.consumed.fetch_add(1, Ordering::Relaxed);
    metrics::counter!(names::EVENTS_CONSUMED, "partition" => partition.to_string()).increment(1);
}

/// Kafka acknowledged every output record of an event, `latency` after they were handed over.
pub(crate) fn outputs_acknowledged(stats: &Stats, latency: Duration) {
    stats
        .output_latency
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .record(latency);
}

/// What the metrics and logs need of one HTTP call to Alipay+, in plain values (the Alipay+
/// client builds it from its attempt).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttemptReport<'a> {
    /// The answer's class, a fixed label (`success`, `rejected`, `throttled`, `unknown`,
    /// `refused`).
    pub(crate) class: &'static str,
    pub(crate) latency: Duration,
    /// `result.resultStatus` and `result.resultCode`, when the body could be parsed.
    pub(crate) result_status: Option<&'a str>,
    pub(crate) result_code: Option<&'a str>,
    pub(crate) http_status: Option<u16>,
    /// Whether the answer's signature was verified, and what the check found (a fixed label).
    pub(crate) signature_trusted: bool,
    pub(crate) signature: &'static str,
}

/// One HTTP call to Alipay+ has ended, whatever its answer.
pub(crate) fn notify_attempt(stats: &Stats, psp: &str, attempt: &AttemptReport<'_>) {
    stats.http_calls.fetch_add(1, Ordering::Relaxed);
    stats
        .notify_latency
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .record(attempt.latency);
    metrics::counter!(
        names::NOTIFY_ATTEMPTS,
        "class" => attempt.class,
        "psp" => psp.to_owned(),
    )
    .increment(1);
    metrics::histogram!(names::NOTIFY_LATENCY).record(attempt.latency.as_secs_f64());
    let success_code = attempt.result_status == Some("S");
    if !attempt.signature_trusted {
        if success_code {
            stats.signature_failures.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(names::RESPONSE_SIGNATURE_FAILURES, "psp" => psp.to_owned())
                .increment(1);
            tracing::warn!(
                psp,
                signature = attempt.signature,
                "success answer without a valid signature, treated as unknown"
            );
        } else if attempt.result_status.is_some() {
            metrics::counter!(names::UNVERIFIED_RESPONSES, "psp" => psp.to_owned()).increment(1);
        }
    }
}

/// An attempt will be retried after `delay`.
pub(crate) fn retry_scheduled(
    stats: &Stats,
    attempt: &AttemptReport<'_>,
    attempts: u32,
    delay: Duration,
) {
    stats.retries.fetch_add(1, Ordering::Relaxed);
    metrics::counter!(names::RETRIES, "class" => attempt.class).increment(1);
    tracing::debug!(
        class = attempt.class,
        result_code = attempt.result_code,
        http_status = attempt.http_status,
        attempts,
        delay_ms = delay.as_millis() as u64,
        "retrying notify"
    );
}

/// A decodable event reached its terminal outcome and Kafka acknowledged its records.
pub(crate) fn outcome(stats: &Stats, outcome: &RegistrationNotifyOutcome, occurred_at_ms: i64) {
    let counter = match outcome.outcome {
        NotifyOutcome::Notified => &stats.notified,
        NotifyOutcome::Rejected => &stats.rejected,
        NotifyOutcome::DeadLettered => &stats.dead_lettered,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    with_vigil(|vigil| vigil.progressed(Instant::now()));
    let code = outcome.result_code.as_deref().unwrap_or("none");
    if let Ok(mut codes) = stats.result_codes.lock() {
        *codes.entry(code.to_string()).or_default() += 1;
    }
    metrics::counter!(
        names::OUTCOMES,
        "outcome" => outcome.outcome.as_str(),
        "result_code" => bounded_code_label(code),
    )
    .increment(1);
    let end_to_end_ms = outcome
        .completed_at_ms
        .saturating_sub(occurred_at_ms)
        .max(0);
    metrics::histogram!(names::END_TO_END_LATENCY).record(end_to_end_ms as f64 / 1000.0);
    stats
        .end_to_end_latency
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .record(Duration::from_millis(end_to_end_ms.unsigned_abs()));
    let latency_ms = outcome
        .first_attempt_at_ms
        .map(|first| outcome.completed_at_ms.saturating_sub(first).max(0));
    tracing::info!(
        event_id = %outcome.event_id,
        merchant_id = %outcome.reference_merchant_id,
        request_id = %outcome.registration_request_id,
        outcome = outcome.outcome.as_str(),
        result_code = outcome.result_code.as_deref(),
        attempts = outcome.attempts,
        latency_ms,
        source_partition = outcome.source_partition,
        source_offset = outcome.source_offset,
        error = outcome.error.as_deref(),
        "event finished"
    );
}

/// A dead letter was acknowledged by Kafka.
pub(crate) fn dead_letter(stats: &Stats, reason: DeadLetterReason, partition: i32, offset: i64) {
    stats
        .dead_letter_counter(reason)
        .fetch_add(1, Ordering::Relaxed);
    with_vigil(|vigil| vigil.progressed(Instant::now()));
    metrics::counter!(names::DEAD_LETTERS, "reason" => reason.as_str()).increment(1);
    tracing::debug!(
        reason = reason.as_str(),
        partition,
        offset,
        "dead letter written"
    );
}

/// An undecodable record was dead-lettered; it has no outcome.
pub(crate) fn poison(stats: &Stats, partition: i32, offset: i64, error: &str) {
    stats.poison.fetch_add(1, Ordering::Relaxed);
    with_vigil(|vigil| vigil.progressed(Instant::now()));
    tracing::info!(
        outcome = "POISON",
        source_partition = partition,
        source_offset = offset,
        error,
        "event finished"
    );
}

pub(crate) fn publish_failed(stats: &Stats, error: &dyn std::error::Error, retry_in: Duration) {
    stats.publish_errors.fetch_add(1, Ordering::Relaxed);
    metrics::counter!(names::PUBLISH_ERRORS).increment(1);
    tracing::warn!(error = %error, retry_in_ms = retry_in.as_millis() as u64, "output not written, retrying");
}

/// One request was RSA-signed in `took`.
pub(crate) fn signing_time(took: Duration) {
    metrics::histogram!(names::SIGNING_TIME).record(took.as_secs_f64());
}

/// An output can never be written; the service stops.
pub(crate) fn publish_fatal(stats: &Stats, error: &dyn std::error::Error) {
    stats.publish_errors.fetch_add(1, Ordering::Relaxed);
    metrics::counter!(names::PUBLISH_ERRORS).increment(1);
    tracing::error!(error = %error, "output can never be written; stopping");
}

pub(crate) fn rebalance(stats: &Stats, kind: &'static str, partitions: &[i32]) {
    stats.rebalances.fetch_add(1, Ordering::Relaxed);
    metrics::counter!(names::REBALANCES, "kind" => kind).increment(1);
    exported::export_partition_series(partitions);
    tracing::info!(kind, ?partitions, "rebalance");
}

/// Events being notified now (the dispatcher reports it after every turn): with
/// [`awaiting_commit`], the work the stall rule of `/readyz` watches.
pub(crate) fn in_flight(count: usize) {
    metrics::gauge!(names::IN_FLIGHT).set(count as f64);
    with_vigil(|vigil| vigil.count(Count::InFlight, count, Instant::now));
}

/// Events called whose outcome is not committed yet (reported after every turn).
pub(crate) fn awaiting_commit(count: usize) {
    metrics::gauge!(names::AWAITING_COMMIT).set(count as f64);
    with_vigil(|vigil| vigil.count(Count::AwaitingCommit, count, Instant::now));
}

/// One partition's ages at an instant, as the dispatcher samples them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PartitionAges {
    pub(crate) partition: i32,
    /// Now minus the timestamp of the oldest record not committed; 0 when every consumed record
    /// is committed (or the oldest has no timestamp).
    pub(crate) lag: Duration,
    /// Now minus the moment the oldest event without its terminal outcome was consumed; 0 when
    /// none.
    pub(crate) oldest_unfinished: Duration,
}

/// An event unfinished for longer than the stall time, reported once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stalled {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key: Box<str>,
    pub(crate) trace_id: u128,
    pub(crate) unfinished_for: Duration,
}

/// Each partition's lag in seconds and the age of its oldest unfinished event.
pub(crate) fn partition_ages(ages: &[PartitionAges]) {
    for partition in ages {
        let label = partition.partition.to_string();
        metrics::gauge!(names::CONSUMER_LAG_SECONDS, "partition" => label.clone())
            .set(partition.lag.as_secs_f64());
        metrics::gauge!(names::OLDEST_UNFINISHED, "partition" => label)
            .set(partition.oldest_unfinished.as_secs_f64());
    }
}

/// The partition is no longer processed here: its ages read 0 (another member reports them).
pub(crate) fn partition_gone(partition: i32) {
    let label = partition.to_string();
    metrics::gauge!(names::CONSUMER_LAG_SECONDS, "partition" => label.clone()).set(0.0);
    metrics::gauge!(names::OLDEST_UNFINISHED, "partition" => label).set(0.0);
}

/// An event has been unfinished for longer than `admin.event_stall_after` (reported once).
pub(crate) fn event_stalled(stalled: &Stalled, after: Duration) {
    metrics::counter!(names::STALLED_EVENTS, "partition" => stalled.partition.to_string())
        .increment(1);
    tracing::warn!(
        key = %stalled.key,
        partition = stalled.partition,
        offset = stalled.offset,
        trace_id = %crate::telemetry::traces::format_trace_id(stalled.trace_id),
        unfinished_s = stalled.unfinished_for.as_secs(),
        "event unfinished for longer than admin.event_stall_after ({})",
        humantime::format_duration(after)
    );
}

pub(crate) fn pending(partition: i32, count: usize) {
    metrics::gauge!(names::PENDING, "partition" => partition.to_string()).set(count as f64);
}

/// The circuit of `psp` is in the state whose gauge value is `gauge` (0 closed, 1 open, 2
/// half-open).
pub(crate) fn circuit_state(psp: &str, gauge: f64) {
    metrics::gauge!(names::CIRCUIT_STATE, "psp" => psp.to_owned()).set(gauge);
}

/// The circuit of `psp` went to the state named `to` (a fixed label), whose gauge value is
/// `gauge`.
pub(crate) fn circuit_transition(psp: &str, to: &'static str, gauge: f64) {
    metrics::counter!(names::CIRCUIT_TRANSITIONS, "to" => to, "psp" => psp.to_owned()).increment(1);
    circuit_state(psp, gauge);
}

/// This member's share of a psp's `max_requests_per_second` (0: no limit).
pub(crate) fn send_rate_share(psp: &str, per_second: f64) {
    metrics::gauge!(names::SEND_RATE_SHARE, "psp" => psp.to_owned()).set(per_second);
}

/// The adaptive send rate of one psp after an answer (`None`: not limited).
pub(crate) fn send_rate(psp: &str, allowed_per_second: Option<f64>, throttled: bool) {
    if throttled {
        metrics::counter!(names::THROTTLED, "psp" => psp.to_owned()).increment(1);
    }
    metrics::gauge!(names::SEND_RATE_LIMIT, "psp" => psp.to_owned())
        .set(allowed_per_second.unwrap_or(0.0));
}

/// The keyVersion a psp's requests are signed with (at start and after each reload).
pub(crate) fn key_version(psp: &str, version: u32) {
    metrics::gauge!(names::KEY_VERSION, "psp" => psp.to_owned()).set(f64::from(version));
}

/// A new private key (and its version) signs this psp's requests from now on.
pub(crate) fn signing_key_reloaded(psp: &str, key_version: u32) {
    metrics::counter!(
        names::KEY_RELOADS,
        "psp" => psp.to_owned(),
        "key" => "mpp_private_key",
        "result" => "applied",
    )
    .increment(1);
    self::key_version(psp, key_version);
    tracing::info!(
        psp,
        key_version,
        "private key reloaded: new requests are signed with it"
    );
}

/// A new Alipay+ public key verifies answers; the previous one still does for `overlap`.
pub(crate) fn answer_key_reloaded(psp: &str, overlap: Duration) {
    metrics::counter!(
        names::KEY_RELOADS,
        "psp" => psp.to_owned(),
        "key" => "alipayplus_public_key",
        "result" => "applied",
    )
    .increment(1);
    tracing::info!(
        psp,
        overlap_s = overlap.as_secs(),
        "alipay+ public key reloaded: answers signed with the previous key are accepted until \
         the overlap ends"
    );
}

/// The previous Alipay+ public key's overlap ended: answers signed with it no longer verify.
pub(crate) fn answer_key_overlap_ended(psp: &str) {
    tracing::info!(psp, "previous alipay+ public key no longer accepted");
}

/// A changed key file was refused; the keys in use stay.
pub(crate) fn key_reload_refused(psp: &str, key: &'static str, error: &dyn std::error::Error) {
    metrics::counter!(
        names::KEY_RELOADS,
        "psp" => psp.to_owned(),
        "key" => key,
        "result" => "refused",
    )
    .increment(1);
    tracing::error!(
        psp,
        key,
        %error,
        "changed key file refused; the key in use stays until a valid replacement is written"
    );
}

pub(crate) fn skipped_finished(partition: i32) {
    metrics::counter!(names::SKIPPED_FINISHED, "partition" => partition.to_string()).increment(1);
}

pub(crate) fn finished_note(partition: i32, bytes: usize) {
    metrics::gauge!(names::FINISHED_NOTE_BYTES, "partition" => partition.to_string())
        .set(bytes as f64);
}

pub(crate) fn partition_restarted(partition: i32) {
    metrics::counter!(names::PARTITION_RESTARTS, "partition" => partition.to_string()).increment(1);
}

/// A commit of `partition` up to `offset` landed: progress.
pub(crate) fn committed(partition: i32, offset: i64) {
    metrics::gauge!(names::COMMITTED_OFFSET, "partition" => partition.to_string())
        .set(offset as f64);
    with_vigil(|vigil| vigil.progressed(Instant::now()));
}

/// The pipeline found one of its own invariants broken (`check`: a fixed name, the metric's
/// label; `detail`: what it saw, for the log). Release builds report instead of panicking, but
/// the service's state can no longer be trusted to make progress: counted in
/// `regnotify_invariant_violations_total{check}`, logged at ERROR (at most once per
/// [`ERROR_LOG_INTERVAL`] per check, the next line saying how many were left out), and `/readyz`
/// answers 503 naming the check from now on, until a restart.
pub(crate) fn invariant_broken(check: &'static str, detail: &str) {
    metrics::counter!(names::INVARIANT_VIOLATIONS, "check" => check).increment(1);
    let verdict = with_vigil(|vigil| vigil.invariant_broken(check, Instant::now()));
    if let Verdict::Log { suppressed } = verdict {
        tracing::error!(
            check,
            detail,
            suppressed,
            "internal invariant broken; /readyz answers 503 from now on: restart the service"
        );
    }
}

pub(crate) fn commit_failed(error: &dyn std::error::Error) {
    metrics::counter!(names::COMMIT_ERRORS).increment(1);
    tracing::warn!(error = %error, "offset commit failed");
}

/// A private key file that others can read (see [`crate::keys::private_key_exposure`]).
pub(crate) fn private_key_file_exposed(setting: &str, path: &std::path::Path, mode: u32) {
    tracing::warn!(
        setting,
        path = %path.display(),
        mode = %format_args!("{mode:04o}"),
        "private key file is readable by group or others: restrict it (chmod 600, or 0440 with a \
         group of this process only)"
    );
}

/// `alipayplus.allow_insecure_http` is on: said at every start, whatever the base URL.
pub(crate) fn insecure_http_allowed(base_url: &str) {
    tracing::warn!(
        base_url,
        "INSECURE: alipayplus.allow_insecure_http is on; signed notifications may travel without \
         tls; meant for simulators only, never for a real alipay+ gateway"
    );
}

/// `alipayplus.verify_response_signature` is off: answers are trusted unverified.
pub(crate) fn response_verification_off() {
    tracing::warn!(
        "INSECURE: alipayplus.verify_response_signature is off; any answer, even forged, is taken \
         at its word"
    );
}

/// Result codes as labels: the documented set, or `other` for anything Alipay+ might invent, so a
/// misbehaving peer cannot grow the label set without bound.
fn bounded_code_label(code: &str) -> &'static str {
    const KNOWN: [&str; 14] = [
        "none",
        "SUCCESS",
        "ABNORMAL_REGISTRATION_STATUS",
        "ACCESS_DENIED",
        "INVALID_CLIENT",
        "INVALID_SIGNATURE",
        "KEY_NOT_FOUND",
        "MEDIA_TYPE_NOT_ACCEPTABLE",
        "METHOD_NOT_SUPPORTED",
        "NO_INTERFACE_DEF",
        "PARAM_ILLEGAL",
        "PROCESS_FAIL",
        "REQUEST_TRAFFIC_EXCEED_LIMIT",
        "UNKNOWN_EXCEPTION",
    ];
    KNOWN
        .into_iter()
        .find(|known| *known == code)
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::observe::Health;
    use std::sync::{Arc, Mutex};

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// A result code Alipay+ does not document is counted under `other`, so a peer inventing
    /// codes cannot grow the label set; documented codes keep their names.
    fn finished(code: Option<&str>, outcome: NotifyOutcome) -> RegistrationNotifyOutcome {
        RegistrationNotifyOutcome {
            event_id: "e".into(),
            reference_merchant_id: "m".into(),
            registration_request_id: "r".into(),
            decision: crate::event::Decision::Approved,
            outcome,
            result_status: code.map(|_| "F".into()),
            result_code: code.map(Into::into),
            result_message: None,
            http_status: code.map(|_| 200),
            attempts: 1,
            first_attempt_at_ms: Some(0),
            completed_at_ms: 1,
            source_topic: "t".into(),
            source_partition: 0,
            source_offset: 0,
            error: None,
        }
    }

    #[test]
    fn undocumented_result_codes_are_counted_as_other() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let stats = Stats::default();
        metrics::with_local_recorder(&recorder, || {
            for code in ["BRAND_NEW_CODE_1", "brand-new-2", "A\"B{C}", "PROCESS_FAIL"] {
                outcome(&stats, &finished(Some(code), NotifyOutcome::Rejected), 0);
            }
            outcome(&stats, &finished(None, NotifyOutcome::DeadLettered), 0);
        });
        let rendered = handle.render();
        let lines: Vec<&str> = rendered
            .lines()
            .filter(|line| line.starts_with(names::OUTCOMES))
            .collect();
        assert_eq!(lines.len(), 3, "{rendered}");
        assert!(
            lines.contains(
                &"regnotify_outcomes_total{outcome=\"REJECTED\",result_code=\"other\"} 3"
            ),
            "{rendered}"
        );
        assert!(
            lines.contains(
                &"regnotify_outcomes_total{outcome=\"REJECTED\",result_code=\"PROCESS_FAIL\"} 1"
            ),
            "{rendered}"
        );
        assert!(
            lines.contains(
                &"regnotify_outcomes_total{outcome=\"DEAD_LETTERED\",result_code=\"none\"} 1"
            ),
            "{rendered}"
        );
        assert!(!rendered.contains("BRAND_NEW"), "{rendered}");
    }

    /// The dispatcher's reports of its counts are what "work waits" means; nothing else is
    /// needed for a stall to show.
    #[test]
    fn waiting_work_reported_by_the_dispatcher_stalls_readiness_after_stall_after() {
        let health = Health::isolated();
        assert!(health.stuck(Instant::now() + secs(3_600)).is_empty());
        health.reporting(|| {
            in_flight(2);
            awaiting_commit(1);
        });
        let now = Instant::now();
        assert!(health.stuck(now + secs(299)).is_empty());
        let problems = health.stuck(now + secs(301));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("stalled: 2 events in flight and 1 awaiting commit"),
            "{problems:?}"
        );
        assert!(
            problems[0].contains("admin.stall_after = 5m"),
            "{problems:?}"
        );
        // All work done: no stall, however long nothing happens.
        health.reporting(|| {
            in_flight(0);
            awaiting_commit(0);
        });
        assert!(health.stuck(now + secs(3_600)).is_empty());
    }

    /// Each kind of progress (an outcome, a dead letter, a poison record, an Alipay+ answer, a
    /// commit) is recorded, and the stall time counts from it (the rule itself is tested in
    /// `stuck` with injected time).
    #[test]
    fn every_kind_of_progress_is_recorded_and_the_stall_time_counts_from_it() {
        let stats = Stats::default();
        type Kind<'a> = (&'a str, &'a dyn Fn(&Health));
        let kinds: [Kind<'_>; 5] = [
            ("outcome", &|health| {
                health.reporting(|| {
                    outcome(&stats, &finished(None, NotifyOutcome::Notified), 0);
                });
            }),
            ("dead letter", &|health| {
                health.reporting(|| dead_letter(&stats, DeadLetterReason::DecodeError, 0, 1));
            }),
            ("poison", &|health| {
                health.reporting(|| poison(&stats, 0, 1, "undecodable"));
            }),
            ("answer", &|health| health.answered(false, false)),
            ("commit", &|health| health.reporting(|| committed(0, 2))),
        ];
        for (kind, progress) in kinds {
            let health = Health::isolated();
            health.reporting(|| in_flight(1));
            assert_eq!(health.vigil.work().last_progress, None, "{kind}");
            let before = Instant::now();
            progress(&health);
            let at = health.vigil.work().last_progress;
            assert!(at.is_some_and(|at| at >= before), "{kind} is progress");
            let at = at.unwrap_or(before);
            assert!(health.stuck(at + secs(299)).is_empty(), "{kind}");
            assert_eq!(health.stuck(at + secs(301)).len(), 1, "{kind}");
        }
    }

    /// A writer for a test's log lines.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_broken_invariant_is_counted_logged_and_keeps_readiness_off_for_good() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let log = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer({
                let log = log.clone();
                move || log.clone()
            })
            .with_ansi(false)
            .finish();
        let health = Health::isolated();
        let bystander = Health::isolated();
        let now = Instant::now();
        tracing::subscriber::with_default(subscriber, || {
            metrics::with_local_recorder(&recorder, || {
                health.reporting(|| {
                    invariant_broken("window_order", "offset 7 finished before 5 was taken");
                    invariant_broken("window_order", "offset 8 finished before 5 was taken");
                });
            });
        });
        let rendered = handle.render();
        assert!(
            rendered.lines().any(
                |line| line == "regnotify_invariant_violations_total{check=\"window_order\"} 2"
            ),
            "{rendered}"
        );
        let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 1, "the repeat is held back: {log}");
        assert!(lines[0].contains("ERROR"), "{log}");
        assert!(lines[0].contains("check=\"window_order\""), "{log}");
        assert!(lines[0].contains("offset 7 finished before 5"), "{log}");
        for later in [now, now + secs(86_400)] {
            let problems = health.stuck(later);
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(
                problems[0].starts_with("internal invariant `window_order` broken (2 times"),
                "{problems:?}"
            );
        }
        assert!(bystander.stuck(now).is_empty(), "another vigil saw nothing");
    }
}
