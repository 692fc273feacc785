//! Several MPPs in one deployment, and key rotation without a restart (issue 11), against the
//! real service (`Application::build`, keys from files) and simulators that know every MPP's
//! public key and record which key signed each call.
//!
//! - each event is signed with its own MPP's key and client id; an unknown `pspId` is
//!   dead-lettered as `INVALID_EVENT`;
//! - one MPP refused, another down: the third's events go on, and theirs follow once they are back;
//! - the private key and `keyVersion` are swapped while events are in flight: later calls carry the
//!   new ones, nothing is lost, no restart; broken or mismatched replacements are refused;
//! - Alipay+ rotates its answer key: answers signed with either key verify during the overlap,
//!   answers signed with the old key are not trusted after it.
//!
//! Over 600 lines: one concern, the identities of MPPs and their keys; each rotation case needs
//! its own keys, files and simulators.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Harness, RunningPipeline};
use regnotify::alipayplus::{Clients, ResultClass, SignatureCheck};
use regnotify::config::{MppClientSettings, Settings};
use regnotify::event::{NotifyOutcome, RegistrationDecided};
use regnotify::keys::PrivateSigningKey;
use regnotify::simulator::{OutageMode, Simulator, SimulatorConfig, SimulatorHandle, TrustedKey};

const WAIT: Duration = Duration::from_secs(120);
const DEFAULT_CLIENT: &str = "CLIENT-DEFAULT";
const CLIENT_A: &str = "CLIENT-A";
const CLIENT_B: &str = "CLIENT-B";

fn fixture_key(name: &str) -> PrivateSigningKey {
    PrivateSigningKey::from_file(&Path::new("tests/fixtures").join(name)).expect("fixture key")
}

/// Three MPP keys and Alipay+'s: two fixtures, one generated.
fn default_key() -> PrivateSigningKey {
    fixture_key("mpp_private_key.pem")
}
fn key_a() -> PrivateSigningKey {
    fixture_key("other_private_key.pem")
}
fn key_b() -> PrivateSigningKey {
    common::test_key(0)
}
fn alipayplus_key() -> PrivateSigningKey {
    fixture_key("alipayplus_private_key.pem")
}

/// Writes `key` (PKCS#8, mode 0600) and its public half; returns (private, public) paths.
fn write_key(dir: &Path, name: &str, key: &PrivateSigningKey) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let pem = key.to_pkcs8_pem().expect("pem");
    replace_file(&private, secrecy::ExposeSecret::expose_secret(&pem));
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    replace_file(&public, &key.public_key().to_pem().expect("public pem"));
    (private, public)
}

/// Replaces a file as an operator should: write beside it, then rename over it.
fn replace_file(path: &Path, contents: &str) {
    let staged = path.with_extension("new");
    std::fs::write(&staged, contents).expect("write");
    std::fs::rename(&staged, path).expect("rename");
}

fn trusted(name: &str, client_id: &str, key: &PrivateSigningKey) -> TrustedKey {
    TrustedKey {
        name: name.into(),
        client_id: Some(client_id.into()),
        key: key.public_key(),
    }
}

async fn simulator(trusted: Vec<TrustedKey>, latency: Duration) -> SimulatorHandle {
    let mut config = SimulatorConfig::new(alipayplus_key());
    config.trusted_keys = trusted;
    config.latency = latency;
    Simulator::start(config).await.expect("simulator")
}

/// Settings for the service: the top-level identity (`CLIENT-DEFAULT`) against `base_url`, keys
/// from files in `dir`, and quick key polling.
fn settings(harness: &Harness, base_url: &str, dir: &Path) -> Settings {
    let mut settings = harness.settings();
    let (private, _) = write_key(dir, "default", &default_key());
    let (_, alipayplus_public) = write_key(dir, "alipayplus", &alipayplus_key());
    settings.alipayplus.base_url = base_url.to_owned();
    settings.alipayplus.client_id = DEFAULT_CLIENT.into();
    settings.alipayplus.private_key_file = Some(private);
    settings.alipayplus.alipayplus_public_key_file = Some(alipayplus_public);
    settings.alipayplus.key_reload_interval = Duration::from_millis(100);
    settings
}

/// A `[alipayplus.clients.<psp>]` table with `key` written to `dir`.
fn client_table(
    dir: &Path,
    psp: &str,
    client_id: &str,
    key: &PrivateSigningKey,
) -> MppClientSettings {
    let (private, public) = write_key(dir, psp, key);
    MppClientSettings {
        client_id: client_id.into(),
        private_key_file: Some(private),
        mpp_public_key_file: Some(public),
        alipayplus_public_key_file: Some(dir.join("alipayplus.pub.pem")),
        ..MppClientSettings::default()
    }
}

fn events(prefix: &str, psp: Option<&str>, count: usize) -> Vec<RegistrationDecided> {
    (0..count)
        .map(|i| {
            let mut event =
                common::event(&format!("M-{prefix}-{i:02}"), &format!("R-{prefix}-{i:03}"));
            event.psp_id = psp.map(str::to_owned);
            event
        })
        .collect()
}

/// One accepted call: (client id, trusted key name, keyVersion).
type Signed = (String, Option<String>, Option<String>);

/// Who signed each request id the simulator accepted.
fn signers(simulator: &SimulatorHandle) -> HashMap<String, Vec<Signed>> {
    let mut signers: HashMap<String, Vec<_>> = HashMap::new();
    for arrival in simulator.stats().arrivals {
        signers
            .entry(arrival.registration_request_id)
            .or_default()
            .push((arrival.client_id, arrival.signed_by, arrival.key_version));
    }
    signers
}

fn notified(
    outcomes: &[regnotify::event::RegistrationNotifyOutcome],
    events: &[RegistrationDecided],
) -> usize {
    events
        .iter()
        .filter(|event| {
            outcomes.iter().any(|outcome| {
                outcome.event_id == event.event_id && outcome.outcome == NotifyOutcome::Notified
            })
        })
        .count()
}

/// A counter or gauge of `/metrics` whose line contains every one of `labels`; 0 when absent.
async fn metric(pipeline: &RunningPipeline, name: &str, labels: &[&str]) -> f64 {
    let text = reqwest::get(format!("{}/metrics", pipeline.admin_url))
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metric_reaches(pipeline: &RunningPipeline, name: &str, labels: &[&str], at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let value = metric(pipeline, name, labels).await;
        if value >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} {labels:?} stayed at {value}, expected at least {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_mpp_signs_with_its_own_key_and_an_unknown_psp_is_dead_lettered() {
    let harness = Harness::new(2, Vec::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let alipayplus = simulator(
        vec![
            trusted("default", DEFAULT_CLIENT, &default_key()),
            trusted("A", CLIENT_A, &key_a()),
            trusted("B", CLIENT_B, &key_b()),
        ],
        Duration::ZERO,
    )
    .await;
    let mut settings = settings(&harness, &alipayplus.base_url(), dir.path());
    settings.alipayplus.clients.insert(
        "PSP_A".into(),
        client_table(dir.path(), "PSP_A", CLIENT_A, &key_a()),
    );
    settings.alipayplus.clients.insert(
        "PSP_B".into(),
        client_table(dir.path(), "PSP_B", CLIENT_B, &key_b()),
    );
    let of_default = events("D", None, 10);
    let of_a = events("A", Some("PSP_A"), 10);
    let of_b = events("B", Some("PSP_B"), 10);
    let unknown = events("X", Some("PSP_X"), 3);
    let all: Vec<_> = [&of_default, &of_a, &of_b, &unknown]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    harness.produce(&all).await;
    let pipeline = harness.start_service(settings).await;
    let outcomes = harness.wait_outcomes_of(&all, WAIT).await;
    common::assert_nothing_lost(&all, &outcomes);

    let signers = signers(&alipayplus);
    for (events, client, key) in [
        (&of_default, DEFAULT_CLIENT, "default"),
        (&of_a, CLIENT_A, "A"),
        (&of_b, CLIENT_B, "B"),
    ] {
        assert_eq!(notified(&outcomes, events), events.len(), "{client}");
        for event in events.iter() {
            let calls = &signers[&event.registration_request_id];
            for (client_id, signed_by, version) in calls {
                assert_eq!(client_id, client, "{}", event.registration_request_id);
                assert_eq!(
                    signed_by.as_deref(),
                    Some(key),
                    "{}",
                    event.registration_request_id
                );
                assert_eq!(version.as_deref(), Some("1"));
            }
        }
    }
    assert_eq!(alipayplus.stats().signature_failures, 0);
    for event in &unknown {
        assert!(
            !signers.contains_key(&event.registration_request_id),
            "no call for an unknown psp"
        );
        let outcome = outcomes
            .iter()
            .find(|o| o.event_id == event.event_id)
            .unwrap();
        assert_eq!(outcome.outcome, NotifyOutcome::DeadLettered);
        let error = outcome.error.as_deref().unwrap_or_default();
        assert!(
            error.contains("\"PSP_X\"") && error.contains("[alipayplus.clients]"),
            "{error}"
        );
    }
    let letters = harness.wait_dead_letters(unknown.len(), WAIT).await;
    assert_eq!(letters.len(), unknown.len());
    for letter in &letters {
        assert_eq!(letter.header("dlq.reason"), Some("INVALID_EVENT"));
        assert!(
            letter
                .header("dlq.error")
                .unwrap_or_default()
                .contains("PSP_X")
        );
    }
    // The psp label takes configured names only, never the unknown pspId.
    assert!(
        metric(
            &pipeline,
            "regnotify_notify_attempts_total",
            &["psp=\"PSP_A\""]
        )
        .await
            >= 10.0
    );
    assert_eq!(
        metric(
            &pipeline,
            "regnotify_notify_attempts_total",
            &["psp=\"PSP_X\""]
        )
        .await,
        0.0
    );
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mpp_refused_and_another_down_do_not_stop_the_third() {
    let harness = Harness::new(2, Vec::new()).await;
    let dir = tempfile::tempdir().unwrap();
    // The top-level identity and REF_A share one gateway; DOWN_B has its own.
    let shared = simulator(
        vec![
            trusted("default", DEFAULT_CLIENT, &default_key()),
            trusted("A", CLIENT_A, &key_a()),
        ],
        Duration::ZERO,
    )
    .await;
    let gateway_b = simulator(vec![trusted("B", CLIENT_B, &key_b())], Duration::ZERO).await;
    let mut settings = settings(&harness, &shared.base_url(), dir.path());
    // Fewer slots than the held MPPs have events: their waiting events must not keep the slots.
    settings.processing.max_in_flight = 8;
    settings.processing.max_attempts = 8;
    settings.processing.max_retry_elapsed = Duration::from_secs(5);
    settings.processing.refused_streak_threshold = 5;
    let breaker = &mut settings.alipayplus.circuit_breaker;
    breaker.window_calls = 10;
    breaker.min_calls = 5;
    breaker.probe_interval_max = Duration::from_secs(2);
    settings.alipayplus.clients.insert(
        "REF_A".into(),
        client_table(dir.path(), "REF_A", CLIENT_A, &key_a()),
    );
    let mut table_b = client_table(dir.path(), "DOWN_B", CLIENT_B, &key_b());
    table_b.base_url = Some(gateway_b.base_url());
    settings.alipayplus.clients.insert("DOWN_B".into(), table_b);

    shared.refuse_client(CLIENT_A);
    gateway_b.outage(Duration::from_secs(3600), OutageMode::Unavailable);
    let of_a = events("A", Some("REF_A"), 20);
    let of_b = events("B", Some("DOWN_B"), 20);
    let of_default = events("D", None, 20);
    // The refused and the failing MPPs' events come first in every partition.
    let all: Vec<_> = [&of_a, &of_b, &of_default]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    harness.produce(&all).await;
    let mut pipeline = harness.start_service(settings).await;

    let outcomes = harness.wait_outcomes_of(&of_default, WAIT).await;
    assert_eq!(notified(&outcomes, &of_default), of_default.len());
    assert_eq!(notified(&outcomes, &of_a) + notified(&outcomes, &of_b), 0);
    metric_reaches(
        &pipeline,
        "regnotify_circuit_state",
        &["psp=\"REF_A\""],
        1.0,
    )
    .await;
    metric_reaches(
        &pipeline,
        "regnotify_circuit_state",
        &["psp=\"DOWN_B\""],
        1.0,
    )
    .await;
    assert_eq!(
        metric(&pipeline, "regnotify_circuit_state", &["psp=\"default\""]).await,
        0.0
    );
    // More of the top-level identity's events, while the other two are still held.
    let later = events("L", None, 10);
    harness.produce(&later).await;
    let outcomes = harness.wait_outcomes_of(&later, WAIT).await;
    assert_eq!(notified(&outcomes, &later), later.len());
    assert_eq!(notified(&outcomes, &of_a) + notified(&outcomes, &of_b), 0);

    // Both come back: their held events are notified, none dead-lettered.
    shared.accept_client(CLIENT_A);
    gateway_b.outage(Duration::ZERO, OutageMode::Unavailable);
    let stats = pipeline.stats.clone();
    pipeline
        .wait_for("every event terminal", WAIT, || {
            stats.terminal() >= all.len() as u64 + later.len() as u64
        })
        .await;
    let outcomes = harness.wait_outcomes_of(&all, WAIT).await;
    assert_eq!(notified(&outcomes, &of_a), of_a.len());
    assert_eq!(notified(&outcomes, &of_b), of_b.len());
    assert!(harness.dead_letters().await.is_empty(), "dead letters");
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_private_key_and_key_version_rotate_while_events_are_in_flight() {
    let harness = Harness::new(2, Vec::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let old_key = key_a();
    let new_key = key_b();
    // Alipay+ trusts both keys of CLIENT-A for the overlap.
    let alipayplus = simulator(
        vec![
            trusted("default", DEFAULT_CLIENT, &default_key()),
            trusted("A-old", CLIENT_A, &old_key),
            trusted("A-new", CLIENT_A, &new_key),
        ],
        Duration::from_millis(50),
    )
    .await;
    let mut settings = settings(&harness, &alipayplus.base_url(), dir.path());
    settings.processing.max_in_flight = 4;
    let mut table = client_table(dir.path(), "PSP_ROT", CLIENT_A, &old_key);
    let version_file = dir.path().join("PSP_ROT.key_version");
    replace_file(&version_file, "1\n");
    table.key_version_file = Some(version_file.clone());
    let (private_file, public_file) = (
        table.private_key_file.clone().unwrap(),
        table.mpp_public_key_file.clone().unwrap(),
    );
    settings.alipayplus.clients.insert("PSP_ROT".into(), table);
    let mut pipeline = harness.start_service(settings).await;
    let refused = [
        "psp=\"PSP_ROT\"",
        "key=\"mpp_private_key\"",
        "result=\"refused\"",
    ];

    let before = events("before", Some("PSP_ROT"), 10);
    harness.produce(&before).await;
    harness.wait_outcomes_of(&before, WAIT).await;

    // A replacement that is no key, then a valid key that does not pair with the public key
    // file: both refused, the old key keeps signing.
    replace_file(
        &private_file,
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    );
    metric_reaches(&pipeline, "regnotify_key_reloads_total", &refused, 1.0).await;
    let pem = new_key.to_pkcs8_pem().unwrap();
    replace_file(&private_file, secrecy::ExposeSecret::expose_secret(&pem));
    metric_reaches(&pipeline, "regnotify_key_reloads_total", &refused, 2.0).await;
    let refused_phase = events("refused", Some("PSP_ROT"), 10);
    harness.produce(&refused_phase).await;
    harness.wait_outcomes_of(&refused_phase, WAIT).await;

    // The rotation, while events are in flight: key, public key and version written one after
    // the other, as an operator would.
    let during = events("during", Some("PSP_ROT"), 60);
    harness.produce(&during).await;
    pipeline
        .wait_for("some events of the rotation notified", WAIT, || {
            alipayplus
                .stats()
                .arrivals
                .iter()
                .any(|a| a.registration_request_id.starts_with("R-during"))
        })
        .await;
    replace_file(&public_file, &new_key.public_key().to_pem().unwrap());
    replace_file(&version_file, "2\n");
    let applied = [
        "psp=\"PSP_ROT\"",
        "key=\"mpp_private_key\"",
        "result=\"applied\"",
    ];
    metric_reaches(&pipeline, "regnotify_key_reloads_total", &applied, 1.0).await;
    metric_reaches(
        &pipeline,
        "regnotify_key_version",
        &["psp=\"PSP_ROT\""],
        2.0,
    )
    .await;
    let after = events("after", Some("PSP_ROT"), 10);
    harness.produce(&after).await;
    let everything: Vec<_> = [&before, &refused_phase, &during, &after]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let outcomes = harness.wait_outcomes_of(&everything, WAIT).await;
    pipeline.assert_running();
    assert_eq!(
        notified(&outcomes, &everything),
        everything.len(),
        "nothing lost"
    );
    assert!(harness.dead_letters().await.is_empty());
    assert_eq!(
        alipayplus.stats().signature_failures,
        0,
        "no call signed with a half-rotated pair"
    );

    let signers = signers(&alipayplus);
    let signed_with = |events: &[RegistrationDecided]| -> Vec<(Option<String>, Option<String>)> {
        events
            .iter()
            .flat_map(|e| signers[&e.registration_request_id].iter())
            .map(|(client, key, version)| {
                assert_eq!(client, CLIENT_A);
                (key.clone(), version.clone())
            })
            .collect()
    };
    let old = (Some("A-old".to_owned()), Some("1".to_owned()));
    let new = (Some("A-new".to_owned()), Some("2".to_owned()));
    for (phase, events) in [("before", &before), ("refused", &refused_phase)] {
        assert!(
            signed_with(events).iter().all(|s| *s == old),
            "{phase}: {:?}",
            signed_with(events)
        );
    }
    let during_signers = signed_with(&during);
    assert!(
        during_signers.iter().all(|s| *s == old || *s == new),
        "{during_signers:?}"
    );
    assert!(
        during_signers.contains(&old),
        "some calls of the rotation went out before it"
    );
    assert!(
        signed_with(&after).iter().all(|s| *s == new),
        "{:?}",
        signed_with(&after)
    );
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_signed_with_either_alipayplus_key_verify_during_the_overlap_only() {
    let dir = tempfile::tempdir().unwrap();
    let old_answer_key = alipayplus_key();
    let new_answer_key = common::test_key(1);
    let alipayplus = simulator(
        vec![trusted("default", DEFAULT_CLIENT, &default_key())],
        Duration::ZERO,
    )
    .await;
    let (private, _) = write_key(dir.path(), "default", &default_key());
    let (_, answer_public) = write_key(dir.path(), "alipayplus", &old_answer_key);
    let settings = regnotify::config::AlipayPlusSettings {
        base_url: alipayplus.base_url(),
        allow_insecure_http: true,
        client_id: DEFAULT_CLIENT.into(),
        private_key_file: Some(private),
        alipayplus_public_key_file: Some(answer_public.clone()),
        alipayplus_public_key_overlap: Duration::from_secs(2),
        ..Default::default()
    };
    let (clients, mut watcher) = Clients::from_settings(&settings).unwrap();
    let client = clients.default;
    let notify = |request: &'static str| {
        let client = client.clone();
        async move {
            client
                .notify_registration_status(&common::event("M-1", request))
                .await
        }
    };
    let trusted_success = |attempt: &regnotify::alipayplus::NotifyAttempt| {
        assert_eq!(attempt.signature, SignatureCheck::Verified, "{attempt:?}");
        assert_eq!(attempt.class, ResultClass::Success, "{attempt:?}");
    };
    trusted_success(&notify("R-1").await);

    // Our side learns the new key first; Alipay+ still signs with the old one.
    replace_file(
        &answer_public,
        &new_answer_key.public_key().to_pem().unwrap(),
    );
    watcher.check(true);
    let rotated_at = Instant::now();
    trusted_success(&notify("R-2").await);
    // Alipay+ switches: the new key verifies.
    alipayplus.set_answer_key(new_answer_key.clone(), 2);
    trusted_success(&notify("R-3").await);
    // An answer signed with the old key, still within the overlap.
    alipayplus.set_answer_key(old_answer_key.clone(), 1);
    trusted_success(&notify("R-4").await);
    assert!(
        rotated_at.elapsed() < Duration::from_secs(2),
        "the overlap passed too soon to tell"
    );

    // After the overlap the old key is not accepted: a success signed with it is not trusted.
    tokio::time::sleep(
        Duration::from_secs(2).saturating_sub(rotated_at.elapsed()) + Duration::from_millis(100),
    )
    .await;
    let stale = notify("R-5").await;
    assert_eq!(stale.signature, SignatureCheck::Invalid, "{stale:?}");
    assert_eq!(stale.class, ResultClass::Unknown, "{stale:?}");
    watcher.check(false);
    let stale = notify("R-6").await;
    assert_eq!(stale.signature, SignatureCheck::Invalid, "{stale:?}");
    alipayplus.set_answer_key(new_answer_key, 2);
    trusted_success(&notify("R-7").await);

    // A broken replacement of Alipay+'s key is refused; the current key stays.
    replace_file(&answer_public, "not a key");
    watcher.check(true);
    trusted_success(&notify("R-8").await);
}

/// `regnotify run` as a process: a new private key and key version written while it runs are
/// taken on SIGHUP (polling is set to an hour, so only the signal can explain it), the process
/// keeps running, and later calls carry the new key and version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_private_key_of_a_running_service() {
    use common::service::Service;
    let harness = Harness::new(1, Vec::new()).await;
    let service = Service::new(&harness, Duration::ZERO, "").await;
    let keys = service.dir.path().join("keys");
    let version_file = service.dir.path().join("key_version");
    replace_file(&version_file, "1\n");
    let config = std::fs::read_to_string(&service.config).unwrap().replace(
        "[alipayplus]\n",
        &format!(
            "[alipayplus]\nkey_reload_interval = \"1h\"\nkey_version_file = \"{}\"\n",
            version_file.display()
        ),
    );
    std::fs::write(&service.config, config).unwrap();
    let mut running = service.spawn("sighup");
    let signed_by = |events: &[RegistrationDecided]| -> Vec<(Option<String>, Option<String>)> {
        let signers = signers(&service.simulator);
        events
            .iter()
            .flat_map(|e| signers[&e.registration_request_id].clone())
            .map(|(_, key, version)| (key, version))
            .collect()
    };
    let old = (Some("mpp".to_owned()), Some("1".to_owned()));
    let new = (Some("new".to_owned()), Some("2".to_owned()));

    let first = events("first", None, 5);
    harness.produce(&first).await;
    harness.wait_outcomes_of(&first, WAIT).await;
    assert!(
        signed_by(&first).iter().all(|s| *s == old),
        "{:?}",
        signed_by(&first)
    );

    // Alipay+ is given the new public key; the files are replaced, no signal yet.
    let new_key = common::test_key(0);
    service.simulator.trust(TrustedKey {
        name: "new".into(),
        client_id: None,
        key: new_key.public_key(),
    });
    let pem = new_key.to_pkcs8_pem().unwrap();
    replace_file(
        &keys.join("mpp_private_key.pem"),
        secrecy::ExposeSecret::expose_secret(&pem),
    );
    replace_file(&version_file, "2\n");
    let unsignalled = events("unsignalled", None, 5);
    harness.produce(&unsignalled).await;
    harness.wait_outcomes_of(&unsignalled, WAIT).await;
    assert!(
        signed_by(&unsignalled).iter().all(|s| *s == old),
        "{:?}",
        signed_by(&unsignalled)
    );

    running.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&running.log)
        .unwrap_or_default()
        .contains("private key reloaded")
    {
        running.assert_alive();
        assert!(Instant::now() < deadline, "no reload logged after SIGHUP");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = events("after", None, 5);
    harness.produce(&after).await;
    harness.wait_outcomes_of(&after, WAIT).await;
    running.assert_alive();
    assert!(
        signed_by(&after).iter().all(|s| *s == new),
        "{:?}",
        signed_by(&after)
    );
    let log = std::fs::read_to_string(&running.log).unwrap();
    assert!(!log.contains("BEGIN"), "no key material in the log");
    running.stop_cleanly(Duration::from_secs(20));
}
