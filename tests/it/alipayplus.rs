//! The real Alipay+ client against the real simulator over HTTP on 127.0.0.1: one test per class
//! of SPEC section 4, plus the configuration guards.
//!
//! Over 600 lines: one concern, the client against the simulator, a test per class of answer
//! (22 tests, each a few lines of set-up and checks).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use regnotify::alipayplus::{
    AlipayPlusClient, AttemptError, ClientBuildError, ClientOptions, NotifyAttempt, ResultClass,
    SignatureCheck,
};
use regnotify::config::{AlipayPlusSettings, ResultPolicy};
use regnotify::event::{Decision, RegistrationDecided};
use regnotify::keys::{PrivateSigningKey, PublicVerifyingKey};
use regnotify::simulator::{
    Fault, FaultRule, Simulator, SimulatorConfig, SimulatorHandle, SimulatorRules,
};

const CLIENT_ID: &str = "TEST_CLIENT_0001";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn private_key(name: &str) -> PrivateSigningKey {
    PrivateSigningKey::from_file(&fixture(name)).unwrap()
}

fn public_key(name: &str) -> PublicVerifyingKey {
    PublicVerifyingKey::from_file(&fixture(name)).unwrap()
}

async fn start_simulator(rules: Vec<FaultRule>) -> SimulatorHandle {
    let mut config = SimulatorConfig::new(private_key("alipayplus_private_key.pem"));
    config.mpp_public_key = Some(public_key("mpp_public_key.pem"));
    config.rules = rules;
    Simulator::start(config).await.unwrap()
}

fn options(simulator: &SimulatorHandle) -> ClientOptions {
    let mut settings = AlipayPlusSettings {
        base_url: simulator.base_url(),
        allow_insecure_http: true,
        client_id: CLIENT_ID.into(),
        ..AlipayPlusSettings::default()
    };
    settings.request_timeout = Duration::from_secs(5);
    ClientOptions::from_settings(&settings)
}

fn client_with(options: ClientOptions, mpp_key: &str) -> AlipayPlusClient {
    AlipayPlusClient::new(
        options,
        private_key(mpp_key),
        Some(public_key("alipayplus_public_key.pem")),
    )
    .unwrap()
}

fn client(simulator: &SimulatorHandle) -> AlipayPlusClient {
    client_with(options(simulator), "mpp_private_key.pem")
}

fn event(merchant: &str, request: &str) -> RegistrationDecided {
    RegistrationDecided {
        event_id: format!("ev-{request}"),
        occurred_at_ms: 1_764_000_000_000,
        reference_merchant_id: merchant.into(),
        registration_request_id: request.into(),
        decision: Decision::Rejected,
        rejection_reason: Some("documents expired".into()),
        psp_id: None,
    }
}

fn result_code(attempt: &NotifyAttempt) -> Option<&str> {
    attempt.result.as_ref().map(|r| r.result_code.as_str())
}

#[tokio::test]
async fn success_is_verified_and_recorded_in_arrival_order() {
    let simulator = start_simulator(vec![]).await;
    let client = client(&simulator);
    for request in ["R1", "R2"] {
        let attempt = client
            .notify_registration_status(&event("M-OK", request))
            .await;
        assert_eq!(attempt.class, ResultClass::Success, "{attempt:?}");
        assert_eq!(attempt.http_status, Some(200));
        assert_eq!(attempt.signature, SignatureCheck::Verified);
        assert_eq!(result_code(&attempt), Some("SUCCESS"));
        assert_eq!(attempt.error, None);
        assert!(attempt.latency > Duration::ZERO);
    }
    let stats = simulator.stats();
    assert_eq!(stats.total_calls, 2);
    assert_eq!(stats.answered("SUCCESS"), 2);
    assert_eq!(stats.requests_of("M-OK"), vec!["R1", "R2"]);
    assert_eq!(stats.arrivals[0].registration_status, "REJECTED");
    simulator.shutdown().await.unwrap();
}

/// The simulator's gate and concurrency counts, which the pipeline tests build on: held calls
/// count as open, `release` lets them through one by one in arrival order, `open` lets all go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_calls_count_as_concurrent_and_pass_when_released() {
    let simulator = start_simulator(vec![]).await;
    let client = std::sync::Arc::new(client(&simulator));
    simulator.hold();
    let mut calls = Vec::new();
    for (merchant, request) in [("M-A", "R1"), ("M-A", "R2"), ("M-B", "R3")] {
        let client = std::sync::Arc::clone(&client);
        calls.push(tokio::spawn(async move {
            client
                .notify_registration_status(&event(merchant, request))
                .await
        }));
        // In this order at the gate.
        let waiting = calls.len() as u64;
        let deadline = Instant::now() + Duration::from_secs(10);
        while simulator.stats().held_calls < waiting {
            assert!(Instant::now() < deadline, "{waiting} calls held");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let stats = simulator.stats();
    assert_eq!(stats.total_calls, 3);
    assert!(stats.answers.is_empty(), "nothing answered while held");
    assert_eq!(stats.max_concurrent_calls, 3);
    assert_eq!(stats.max_concurrency_of("M-A"), 2);
    assert_eq!(stats.max_concurrency_of("M-B"), 1);
    assert_eq!(
        stats.merchants_with_overlapping_calls(),
        [("M-A", 2)].into_iter().collect()
    );

    simulator.release(1);
    let first = calls.remove(0).await.unwrap();
    assert_eq!(first.class, ResultClass::Success, "{first:?}");
    assert_eq!(simulator.stats().held_calls, 2);
    simulator.open();
    for call in calls {
        assert_eq!(call.await.unwrap().class, ResultClass::Success);
    }
    let stats = simulator.stats();
    assert_eq!(stats.held_calls, 0);
    assert_eq!(stats.requests_of("M-A"), vec!["R1", "R2"]);
    // Later calls no longer wait.
    let after = client.notify_registration_status(&event("M-C", "R4")).await;
    assert_eq!(after.class, ResultClass::Success);
    simulator.shutdown().await.unwrap();
}

#[tokio::test]
async fn f_codes_are_rejected_throttled_or_refused() {
    let simulator = start_simulator(vec![
        FaultRule::for_prefix("M-REJ", Fault::result("F", "PROCESS_FAIL")),
        FaultRule::for_prefix("M-ABN", Fault::result("F", "ABNORMAL_REGISTRATION_STATUS")),
        FaultRule::for_prefix("M-THR", Fault::result("F", "REQUEST_TRAFFIC_EXCEED_LIMIT")),
        FaultRule::for_prefix("M-KEY", Fault::result("F", "KEY_NOT_FOUND")),
    ])
    .await;
    let client = client(&simulator);
    for (merchant, class, code) in [
        ("M-REJ", ResultClass::Rejected, "PROCESS_FAIL"),
        (
            "M-ABN",
            ResultClass::Rejected,
            "ABNORMAL_REGISTRATION_STATUS",
        ),
        (
            "M-THR",
            ResultClass::Throttled,
            "REQUEST_TRAFFIC_EXCEED_LIMIT",
        ),
        ("M-KEY", ResultClass::Refused, "KEY_NOT_FOUND"),
    ] {
        let attempt = client
            .notify_registration_status(&event(merchant, "R"))
            .await;
        assert_eq!(attempt.class, class, "{merchant}: {attempt:?}");
        assert_eq!(result_code(&attempt), Some(code));
        assert_eq!(attempt.signature, SignatureCheck::Verified);
    }
}

#[tokio::test]
async fn u_is_unknown_then_the_same_request_succeeds() {
    let simulator = start_simulator(vec![
        FaultRule::for_prefix("M-U", Fault::result("U", "UNKNOWN_EXCEPTION")).times(1),
    ])
    .await;
    let client = client(&simulator);
    let e = event("M-U-1", "R-U");
    let first = client.notify_registration_status(&e).await;
    assert_eq!(first.class, ResultClass::Unknown, "{first:?}");
    assert_eq!(result_code(&first), Some("UNKNOWN_EXCEPTION"));
    let second = client.notify_registration_status(&e).await;
    assert_eq!(second.class, ResultClass::Success, "{second:?}");
    assert_eq!(simulator.stats().requests_of("M-U-1"), vec!["R-U", "R-U"]);
}

#[tokio::test]
async fn http_5xx_408_and_429_are_unknown_other_4xx_refused() {
    let simulator = start_simulator(
        [500u16, 503, 408, 429, 400, 403, 404]
            .into_iter()
            .map(|status| {
                FaultRule::for_prefix(format!("M-{status}"), Fault::HttpStatus { status })
            })
            .collect(),
    )
    .await;
    let client = client(&simulator);
    for (status, class) in [
        (500, ResultClass::Unknown),
        (503, ResultClass::Unknown),
        (408, ResultClass::Unknown),
        (429, ResultClass::Unknown),
        (400, ResultClass::Refused),
        (403, ResultClass::Refused),
        (404, ResultClass::Refused),
    ] {
        let attempt = client
            .notify_registration_status(&event(&format!("M-{status}"), "R"))
            .await;
        assert_eq!(attempt.class, class, "{status}: {attempt:?}");
        assert_eq!(attempt.http_status, Some(status));
        assert_eq!(attempt.result, None);
        assert_eq!(attempt.signature, SignatureCheck::Missing);
    }
    assert_eq!(simulator.stats().answered("HTTP_503"), 1);
}

#[tokio::test]
async fn a_timeout_is_unknown() {
    let simulator = start_simulator(vec![FaultRule::for_prefix(
        "M-HANG",
        Fault::Hang {
            duration: Duration::from_secs(30),
        },
    )])
    .await;
    let mut options = options(&simulator);
    options.request_timeout = Duration::from_millis(300);
    let client = client_with(options, "mpp_private_key.pem");
    let started = Instant::now();
    let attempt = client
        .notify_registration_status(&event("M-HANG", "R"))
        .await;
    assert_eq!(attempt.class, ResultClass::Unknown, "{attempt:?}");
    assert!(
        matches!(attempt.error, Some(AttemptError::Timeout(_))),
        "{attempt:?}"
    );
    assert_eq!(attempt.http_status, None);
    assert!(started.elapsed() < Duration::from_secs(5));
    // Shutting down ends the hanging answer instead of waiting 30 s.
    tokio::time::timeout(Duration::from_secs(5), simulator.shutdown())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn connection_refused_is_unknown() {
    let simulator = start_simulator(vec![]).await;
    let options = options(&simulator);
    simulator.shutdown().await.unwrap();
    let client = client_with(options, "mpp_private_key.pem");
    let attempt = client.notify_registration_status(&event("M", "R")).await;
    assert_eq!(attempt.class, ResultClass::Unknown, "{attempt:?}");
    assert!(
        matches!(attempt.error, Some(AttemptError::Connect(_))),
        "{attempt:?}"
    );
}

#[tokio::test]
async fn a_garbled_body_is_unknown() {
    let simulator = start_simulator(vec![FaultRule::for_prefix("M-G", Fault::Garbled)]).await;
    let attempt = client(&simulator)
        .notify_registration_status(&event("M-G", "R"))
        .await;
    assert_eq!(attempt.class, ResultClass::Unknown, "{attempt:?}");
    assert_eq!(attempt.http_status, Some(200));
    assert_eq!(attempt.error, Some(AttemptError::UnparseableBody));
}

#[tokio::test]
async fn a_success_with_a_bad_or_missing_signature_is_unknown() {
    let simulator = start_simulator(vec![
        FaultRule::for_prefix("M-BAD", Fault::BadSignature),
        FaultRule::for_prefix("M-NOSIG", Fault::UnsignedSuccess),
    ])
    .await;
    let client = client(&simulator);
    let bad = client
        .notify_registration_status(&event("M-BAD", "R"))
        .await;
    assert_eq!(bad.class, ResultClass::Unknown, "{bad:?}");
    assert_eq!(bad.signature, SignatureCheck::Invalid);
    assert_eq!(result_code(&bad), Some("SUCCESS"));
    let missing = client
        .notify_registration_status(&event("M-NOSIG", "R"))
        .await;
    assert_eq!(missing.class, ResultClass::Unknown, "{missing:?}");
    assert_eq!(missing.signature, SignatureCheck::Missing);

    // A client verifying with the wrong Alipay+ key trusts nothing either.
    let wrong_key = AlipayPlusClient::new(
        options(&simulator),
        private_key("mpp_private_key.pem"),
        Some(public_key("other_public_key.pem")),
    )
    .unwrap();
    let attempt = wrong_key
        .notify_registration_status(&event("M-OK", "R"))
        .await;
    assert_eq!(attempt.class, ResultClass::Unknown);
    assert_eq!(attempt.signature, SignatureCheck::Invalid);
}

#[tokio::test]
async fn verification_can_be_switched_off_explicitly() {
    let simulator =
        start_simulator(vec![FaultRule::for_prefix("M-BAD", Fault::BadSignature)]).await;
    let mut options = options(&simulator);
    options.verify_response_signature = false;
    let client = AlipayPlusClient::new(options, private_key("mpp_private_key.pem"), None).unwrap();
    let attempt = client
        .notify_registration_status(&event("M-BAD", "R"))
        .await;
    assert_eq!(attempt.class, ResultClass::Success, "{attempt:?}");
    assert_eq!(attempt.signature, SignatureCheck::NotChecked);
}

#[tokio::test]
async fn a_refused_client_is_refused_until_accepted_again() {
    let simulator = start_simulator(vec![]).await;
    let client = client(&simulator);
    let admin = reqwest::Client::new();
    let refuse = format!("{}/admin/clients/{CLIENT_ID}/refuse", simulator.base_url());
    assert_eq!(admin.post(&refuse).send().await.unwrap().status(), 204);
    let attempt = client.notify_registration_status(&event("M", "R")).await;
    assert_eq!(attempt.class, ResultClass::Refused, "{attempt:?}");
    assert_eq!(result_code(&attempt), Some("INVALID_CLIENT"));

    let accept = format!("{}/admin/clients/{CLIENT_ID}/accept", simulator.base_url());
    assert_eq!(admin.post(&accept).send().await.unwrap().status(), 204);
    let attempt = client.notify_registration_status(&event("M", "R")).await;
    assert_eq!(attempt.class, ResultClass::Success, "{attempt:?}");

    simulator.refuse_client(CLIENT_ID);
    let attempt = client.notify_registration_status(&event("M", "R")).await;
    assert_eq!(attempt.class, ResultClass::Refused);
    simulator.accept_client(CLIENT_ID);
    let attempt = client.notify_registration_status(&event("M", "R")).await;
    assert_eq!(attempt.class, ResultClass::Success);
}

/// The outages the circuit breaker is tested with, scripted over the simulator's admin API as a
/// user trying the behaviour locally would: for a while, then service is back by itself.
#[tokio::test]
async fn scripted_outages_and_refusals_end_by_themselves() {
    let simulator = start_simulator(vec![]).await;
    let client = client(&simulator);
    let admin = reqwest::Client::new();
    let base = simulator.base_url();
    let post = |path: String| {
        let admin = admin.clone();
        async move { admin.post(path).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(
        post(format!("{base}/admin/outage?seconds=1&mode=bogus")).await,
        400
    );
    assert_eq!(post(format!("{base}/admin/outage")).await, 400);

    assert_eq!(
        post(format!("{base}/admin/outage?seconds=1&mode=503")).await,
        204
    );
    let attempt = client.notify_registration_status(&event("M", "R")).await;
    assert_eq!(attempt.class, ResultClass::Unknown, "{attempt:?}");
    assert_eq!(attempt.http_status, Some(503));
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let attempt = client.notify_registration_status(&event("M", "R")).await;
    assert_eq!(attempt.class, ResultClass::Success, "{attempt:?}");

    assert_eq!(
        post(format!("{base}/admin/outage?seconds=1&mode=drop")).await,
        204
    );
    let attempt = client.notify_registration_status(&event("M", "R")).await;
    assert_eq!(attempt.class, ResultClass::Unknown, "{attempt:?}");
    assert!(
        attempt.result.is_none(),
        "a dropped connection has no answer: {attempt:?}"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    let refuse = format!("{base}/admin/clients/{CLIENT_ID}/refuse?seconds=1");
    assert_eq!(post(refuse).await, 204);
    let attempt = client.notify_registration_status(&event("M", "R")).await;
    assert_eq!(result_code(&attempt), Some("INVALID_CLIENT"));
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let attempt = client.notify_registration_status(&event("M", "R")).await;
    assert_eq!(attempt.class, ResultClass::Success, "{attempt:?}");
    let answers = simulator.stats().answers;
    assert_eq!(answers.get("OUTAGE_503"), Some(&1));
    assert_eq!(answers.get("OUTAGE_DROPPED"), Some(&1));
}

#[tokio::test]
async fn signing_with_the_wrong_key_is_refused_as_invalid_signature() {
    let simulator = start_simulator(vec![]).await;
    let client = client_with(options(&simulator), "other_private_key.pem");
    let attempt = client.notify_registration_status(&event("M", "R")).await;
    assert_eq!(attempt.class, ResultClass::Refused, "{attempt:?}");
    assert_eq!(result_code(&attempt), Some("INVALID_SIGNATURE"));
    // Alipay+ leaves this failure unsigned; it is acted on by its code all the same.
    assert_eq!(attempt.signature, SignatureCheck::Missing);
    let stats = simulator.stats();
    assert_eq!(stats.signature_failures, 1);
    assert!(stats.arrivals.is_empty());
}

#[tokio::test]
async fn a_body_breaking_the_spec_is_param_illegal_and_rejected() {
    let simulator = start_simulator(vec![]).await;
    let attempt = client(&simulator)
        .post_signed(Bytes::from_static(
            br#"{"referenceMerchantId":"M","registrationRequestId":"","registrationResult":{"registrationStatus":"APPROVED"}}"#,
        ))
        .await;
    assert_eq!(attempt.class, ResultClass::Rejected, "{attempt:?}");
    assert_eq!(result_code(&attempt), Some("PARAM_ILLEGAL"));
    assert_eq!(attempt.signature, SignatureCheck::Verified);
}

#[tokio::test]
async fn result_policy_overrides_a_code() {
    let simulator = start_simulator(vec![FaultRule::for_prefix(
        "M",
        Fault::result("F", "PROCESS_FAIL"),
    )])
    .await;
    let mut settings = AlipayPlusSettings {
        base_url: simulator.base_url(),
        allow_insecure_http: true,
        client_id: CLIENT_ID.into(),
        private_key_file: Some(fixture("mpp_private_key_pkcs1.pem")),
        alipayplus_public_key_file: Some(fixture("alipayplus_public_key.pem")),
        ..AlipayPlusSettings::default()
    };
    settings
        .result_policy
        .insert("PROCESS_FAIL".into(), ResultPolicy::Retry);
    let client = AlipayPlusClient::from_settings(&settings).unwrap();
    let attempt = client.notify_registration_status(&event("M", "R")).await;
    assert_eq!(attempt.class, ResultClass::Unknown, "{attempt:?}");
    assert_eq!(result_code(&attempt), Some("PROCESS_FAIL"));
}

#[tokio::test]
async fn http_base_urls_are_refused_unless_allowed() {
    let mut options = ClientOptions::from_settings(&AlipayPlusSettings {
        base_url: "http://127.0.0.1:9".into(),
        client_id: CLIENT_ID.into(),
        ..AlipayPlusSettings::default()
    });
    let build = |options: ClientOptions| {
        AlipayPlusClient::new(
            options,
            private_key("mpp_private_key.pem"),
            Some(public_key("alipayplus_public_key.pem")),
        )
    };
    let err = build(options.clone()).unwrap_err();
    assert!(matches!(err, ClientBuildError::InsecureHttp), "{err}");
    assert!(err.to_string().contains("allow_insecure_http"));
    options.allow_insecure_http = true;
    assert!(build(options).is_ok());
}

#[tokio::test]
async fn a_ca_bundle_must_hold_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "no certificate here").unwrap();
    let settings = |ca_bundle_file: Option<std::path::PathBuf>| AlipayPlusSettings {
        client_id: CLIENT_ID.into(),
        private_key_file: Some(fixture("mpp_private_key.pem")),
        alipayplus_public_key_file: Some(fixture("alipayplus_public_key.pem")),
        ca_bundle_file,
        ..AlipayPlusSettings::default()
    };
    for bad in [not_pem, dir.path().join("absent.pem")] {
        let err = AlipayPlusClient::from_settings(&settings(Some(bad.clone()))).unwrap_err();
        assert!(matches!(err, ClientBuildError::CaBundle(_)), "{err}");
        assert!(
            err.to_string().contains("alipayplus.ca_bundle_file"),
            "{err}"
        );
    }
    assert!(AlipayPlusClient::from_settings(&settings(Some(fixture("test_ca.pem")))).is_ok());
}

#[tokio::test]
async fn missing_keys_are_named_errors() {
    let settings = AlipayPlusSettings {
        client_id: CLIENT_ID.into(),
        ..AlipayPlusSettings::default()
    };
    let err = AlipayPlusClient::from_settings(&settings).unwrap_err();
    assert!(matches!(err, ClientBuildError::MissingPrivateKey), "{err}");
    let settings = AlipayPlusSettings {
        private_key_file: Some(fixture("mpp_private_key.pem")),
        ..settings
    };
    let err = AlipayPlusClient::from_settings(&settings).unwrap_err();
    assert!(matches!(err, ClientBuildError::MissingPublicKey), "{err}");
}

#[tokio::test]
async fn the_rate_ceiling_spaces_out_calls() {
    let simulator = start_simulator(vec![]).await;
    let mut options = options(&simulator);
    options.max_requests_per_second = 5;
    let client = client_with(options, "mpp_private_key.pem");
    let started = Instant::now();
    for i in 0..7 {
        let attempt = client
            .notify_registration_status(&event("M", &format!("R{i}")))
            .await;
        assert_eq!(attempt.class, ResultClass::Success);
    }
    // A burst of 5, then one call per 200 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn stats_and_rules_are_reachable_over_http() {
    let simulator = start_simulator(vec![]).await;
    let http = reqwest::Client::new();
    let rules = r#"
        [[rules]]
        merchant_prefix = "M-FLAKY"
        times = 1
        fault = { kind = "http_status", status = 502 }
    "#;
    let put = http
        .put(format!("{}/admin/rules", simulator.base_url()))
        .body(rules)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 204);
    let bad = http
        .put(format!("{}/admin/rules", simulator.base_url()))
        .body("[[rules]]\nfault = 1")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    let client = client(&simulator);
    let e = event("M-FLAKY-1", "R");
    assert_eq!(
        client.notify_registration_status(&e).await.class,
        ResultClass::Unknown
    );
    assert_eq!(
        client.notify_registration_status(&e).await.class,
        ResultClass::Success
    );

    let stats: regnotify::simulator::SimulatorStats = http
        .get(format!("{}/stats", simulator.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats, simulator.stats());
    assert_eq!(stats.total_calls, 2);
    assert_eq!(stats.answered("HTTP_502"), 1);
    assert_eq!(stats.answered("SUCCESS"), 1);

    simulator.set_rules(SimulatorRules::default());
    assert_eq!(
        client
            .notify_registration_status(&event("M-FLAKY-2", "R"))
            .await
            .class,
        ResultClass::Success
    );
}

#[tokio::test]
async fn keygen_writes_private_keys_0600_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let files = regnotify::keys::keygen(dir.path()).unwrap();
    let key = PrivateSigningKey::from_file(&files.mpp_private_key).unwrap();
    let public = PublicVerifyingKey::from_file(&files.mpp_public_key).unwrap();
    assert!(public.verify(b"x", &key.sign(b"x").unwrap()));
    PrivateSigningKey::from_file(&files.alipayplus_private_key).unwrap();
    PublicVerifyingKey::from_file(&files.alipayplus_public_key).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for path in [&files.mpp_private_key, &files.alipayplus_private_key] {
            let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
    }
    assert!(regnotify::keys::keygen(dir.path()).is_err());
}

#[test]
fn the_sign_command_matches_the_client_signature() {
    let signed = regnotify::alipayplus::sign_command(
        &fixture("mpp_private_key.pem"),
        "SANDBOX_5YBZ1N2YDS8C07394",
        None,
        Some("2026-11-25T21:40:05+08:00"),
        br#"{"referenceMerchantId":"M-1","registrationRequestId":"R-1","registrationResult":{"registrationStatus":"APPROVED"}}"#,
        1,
    )
    .unwrap();
    assert!(signed.signed_content.starts_with(
        b"POST /aps/api/v1/merchants/notifyRegistrationStatus\nSANDBOX_5YBZ1N2YDS8C07394.2026-11-25T21:40:05+08:00.{"
    ));
    assert!(
        signed
            .signature_header
            .starts_with("algorithm=RSA256,keyVersion=1,signature=Aqg%2BM8%2F")
    );
    let err = regnotify::alipayplus::sign_command(
        &fixture("mpp_private_key.pem"),
        "C",
        None,
        Some("yesterday"),
        b"{}",
        1,
    )
    .unwrap_err();
    assert!(err.to_string().contains("RFC 3339"), "{err}");
}
