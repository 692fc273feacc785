//! The `regnotify` binary as an operator meets it: `--help` everywhere, `check-config` naming the
//! bad key, `keygen` and `sign` producing what the library would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

/// The binary, with none of the test run's `REGNOTIFY_*` variables (`REGNOTIFY_CONFIG`, a
/// developer's own): what these tests check must not depend on the environment they run in.
fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_regnotify"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("REGNOTIFY_") {
            command.env_remove(name);
        }
    }
    command
}

fn regnotify(args: &[&str]) -> Output {
    binary().args(args).output().expect("regnotify runs")
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

#[test]
fn every_command_has_help() {
    for command in ["run", "demo", "simulator", "sign", "keygen", "check-config"] {
        let output = regnotify(&[command, "--help"]);
        assert!(output.status.success(), "{command}: {}", text(&output));
        assert!(text(&output).contains("Usage"), "{command}");
    }
}

fn write_config(dir: &Path, body: &str) -> String {
    let path = dir.join("regnotify.toml");
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

#[test]
fn check_config_names_the_bad_key_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[processing]\nmax_in_flight = 0\n",
            "processing.max_in_flight",
        ),
        (
            "[processing]\nbackoff_max = \"soon\"\n",
            "processing.backoff_max",
        ),
        ("[kafka]\ngroupid = \"x\"\n", "kafka.groupid"),
        (
            "[alipayplus]\nbase_url = \"http://insecure\"\n",
            "alipayplus.base_url",
        ),
        ("[kafka]\n", "alipayplus.client_id"),
    ];
    for (body, key) in cases {
        let config = write_config(dir.path(), body);
        let output = regnotify(&["check-config", "--config", &config]);
        assert!(!output.status.success(), "{body:?} accepted");
        assert!(text(&output).contains(key), "{body:?}: {}", text(&output));
    }
    let output = regnotify(&["check-config", "--config", "/nonexistent.toml"]);
    assert!(!output.status.success());
    assert!(text(&output).contains("/nonexistent.toml"));
}

#[test]
fn check_config_loads_the_keys_and_prints_redacted_settings() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let output = regnotify(&["keygen", "--out", keys.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    for name in ["mpp_private_key.pem", "alipayplus_private_key.pem"] {
        let mode = std::fs::metadata(keys.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    let again = regnotify(&["keygen", "--out", keys.to_str().unwrap()]);
    assert!(!again.status.success(), "keygen never overwrites keys");

    let config = write_config(
        dir.path(),
        &format!(
            r#"
[schema_registry]
url = "https://registry.example"
username = "svc"
password = "registry-password-123"
[alipayplus]
client_id = "2022123456789012"
private_key_file = "{keys}/mpp_private_key.pem"
alipayplus_public_key_file = "{keys}/alipayplus_public_key.pem"
"#,
            keys = keys.display()
        ),
    );
    let output = regnotify(&[
        "check-config",
        "--config",
        &config,
        "--set",
        "processing.max_in_flight=64",
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let printed = text(&output);
    assert!(
        printed.contains("max_in_flight = 64"),
        "flags override the file: {printed}"
    );
    assert!(printed.contains("client_id = \"2022123456789012\""));
    assert!(!printed.contains("registry-password-123"), "{printed}");
    assert!(printed.contains("[redacted]"));

    // A key file that is not a key is refused, naming the setting.
    std::fs::write(keys.join("mpp_private_key.pem"), "not a key").unwrap();
    let output = regnotify(&["check-config", "--config", &config]);
    assert!(!output.status.success());
    assert!(
        text(&output).contains("private_key_file"),
        "{}",
        text(&output)
    );
}

/// `check-config` lists every MPP with its client id and key version and says whether its keys
/// load and pair, without printing key material; a private key that is not the pair of its
/// configured public key is refused, naming the MPP and the setting.
#[test]
fn check_config_lists_each_mpp_and_whether_its_keys_load_and_pair() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let other = dir.path().join("other");
    for out in [&keys, &other] {
        let output = regnotify(&["keygen", "--out", out.to_str().unwrap()]);
        assert!(output.status.success(), "{}", text(&output));
    }
    std::fs::write(dir.path().join("psp_b.version"), "4\n").unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            r#"
[alipayplus]
client_id = "2022000000000001"
key_version = 2
private_key_file = "{keys}/mpp_private_key.pem"
mpp_public_key_file = "{keys}/mpp_public_key.pem"
alipayplus_public_key_file = "{keys}/alipayplus_public_key.pem"
[alipayplus.clients.PSP_B]
client_id = "2022000000000002"
key_version_file = "{dir}/psp_b.version"
private_key_file = "{other}/mpp_private_key.pem"
alipayplus_public_key_file = "{other}/alipayplus_public_key.pem"
"#,
            keys = keys.display(),
            other = other.display(),
            dir = dir.path().display(),
        ),
    );
    let output = regnotify(&["check-config", "--config", &config]);
    let printed = text(&output);
    assert!(output.status.success(), "{printed}");
    assert!(
        printed.contains(
            "mpp default: client_id 2022000000000001, key_version 2; private key loads and pairs \
             with mpp_public_key_file; alipay+ public key loads"
        ),
        "{printed}"
    );
    assert!(
        printed.contains("mpp PSP_B: client_id 2022000000000002, key_version 4; private key loads"),
        "{printed}"
    );
    assert!(!printed.contains("BEGIN"), "no key material: {printed}");

    // The top-level private key replaced by another: it no longer pairs with its public key.
    std::fs::copy(
        other.join("mpp_private_key.pem"),
        keys.join("mpp_private_key.pem"),
    )
    .unwrap();
    let output = regnotify(&["check-config", "--config", &config]);
    let printed = text(&output);
    assert!(!output.status.success(), "{printed}");
    assert!(
        printed.contains(
            "mpp default: client_id 2022000000000001, key_version 2; private key REFUSED"
        ),
        "{printed}"
    );
    assert!(
        printed.contains("alipayplus.mpp_public_key_file"),
        "{printed}"
    );
    assert!(printed.contains("not the pair"), "{printed}");
    assert!(!printed.contains("BEGIN"), "no key material: {printed}");
}

/// Settings that weaken security are said at start: a private key others can read, plain http to
/// Alipay+, unverified answers. A `REGNOTIFY_` variable that is no setting stops start-up.
#[test]
fn check_config_warns_about_exposed_keys_and_insecure_settings() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("mpp_private_key.pem");
    std::fs::copy("tests/fixtures/mpp_private_key.pem", &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[alipayplus]\nbase_url = \"http://127.0.0.1:9\"\nallow_insecure_http = true\n\
             verify_response_signature = false\nclient_id = \"C\"\nprivate_key_file = \"{}\"\n",
            key.display()
        ),
    );
    let output = regnotify(&["check-config", "--config", &config]);
    assert!(output.status.success(), "{}", text(&output));
    let printed = text(&output);
    for warning in [
        "private key file is readable by group or others",
        "0644",
        "allow_insecure_http is on",
        "verify_response_signature is off",
    ] {
        assert!(printed.contains(warning), "{warning}: {printed}");
    }

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let output = regnotify(&["check-config", "--config", &config]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(!text(&output).contains("readable by group or others"));

    let output = binary()
        .args(["check-config", "--config", &config])
        .env("REGNOTIFY_MAX_IN_FLIGHT", "5")
        .output()
        .unwrap();
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("REGNOTIFY_PROCESSING__MAX_IN_FLIGHT"),
        "{}",
        text(&output)
    );
    // A tool's variable that resembles no setting is only warned about.
    let output = binary()
        .args(["check-config", "--config", &config])
        .env("REGNOTIFY_BIN", "target/release/regnotify")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("REGNOTIFY_BIN is not a setting and is ignored"),
        "{}",
        text(&output)
    );
}

#[test]
fn sign_prints_the_signed_content_and_header() {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body.json");
    std::fs::write(&body, r#"{"referenceMerchantId":"M1"}"#).unwrap();
    let output = regnotify(&[
        "sign",
        "--client-id",
        "TEST_CLIENT",
        "--private-key-file",
        "tests/fixtures/mpp_private_key.pem",
        "--request-time",
        "2026-11-25T21:40:05+08:00",
        "--body-file",
        body.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let printed = text(&output);
    let expected_content = "POST /aps/api/v1/merchants/notifyRegistrationStatus\nTEST_CLIENT.2026-11-25T21:40:05+08:00.{\"referenceMerchantId\":\"M1\"}";
    assert!(printed.contains(expected_content), "{printed}");
    let key = regnotify::keys::PrivateSigningKey::from_file(Path::new(
        "tests/fixtures/mpp_private_key.pem",
    ))
    .unwrap();
    let signed = regnotify::alipayplus::sign_request(
        &key,
        "/aps/api/v1/merchants/notifyRegistrationStatus",
        "TEST_CLIENT",
        "2026-11-25T21:40:05+08:00",
        br#"{"referenceMerchantId":"M1"}"#,
        1,
    )
    .unwrap();
    assert!(
        printed.contains(&format!("Signature: {}", signed.signature_header)),
        "{printed}"
    );
    assert!(
        signed
            .signature_header
            .starts_with("algorithm=RSA256,keyVersion=1,signature=")
    );
}

/// Every key of the settings type appears in the README's reference block, and the block names no
/// key the type lacks.
#[test]
fn readme_documents_every_setting() {
    use regnotify::config::{SchemaRegistrySettings, Secret, Settings};
    let mut settings = Settings {
        schema_registry: Some(SchemaRegistrySettings {
            username: Some("svc".into()),
            password: Some(Secret::new("x")),
            ..SchemaRegistrySettings::default()
        }),
        ..Settings::default()
    };
    settings.alipayplus.private_key = Some(Secret::new("x"));
    settings.alipayplus.private_key_file = Some("k.pem".into());
    settings.alipayplus.alipayplus_public_key_file = Some("p.pem".into());
    settings.alipayplus.ca_bundle_file = Some("ca.pem".into());
    settings.alipayplus.key_version_file = Some("v".into());
    settings.alipayplus.mpp_public_key_file = Some("m.pem".into());
    settings.telemetry.endpoint = Some("http://collector:4318".into());
    settings.telemetry.protocol = Some(regnotify::config::OtlpProtocol::HttpProtobuf);
    settings.telemetry.service_name = Some("regnotify".into());
    settings.alipayplus.clients.insert(
        "PSP_A".into(),
        regnotify::config::MppClientSettings {
            client_id: "a".into(),
            key_version_file: Some("v".into()),
            private_key_file: Some("k.pem".into()),
            private_key: Some(Secret::new("x")),
            mpp_public_key_file: Some("m.pem".into()),
            alipayplus_public_key_file: Some("p.pem".into()),
            base_url: Some("https://x".into()),
            max_requests_per_second: Some(1),
            ..Default::default()
        },
    );
    let rendered = settings.to_redacted_toml();
    let keys_of = |toml: &str| -> std::collections::BTreeSet<String> {
        let mut table = String::new();
        let mut keys = std::collections::BTreeSet::new();
        for line in toml.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
                table = name.to_string();
                keys.insert(table.clone());
            } else if let Some((key, _)) = line.split_once(" = ")
                && !line.starts_with('#')
            {
                keys.insert(format!("{table}.{}", key.trim()));
            }
        }
        keys
    };
    let readme = std::fs::read_to_string("README.md").unwrap();
    let block = readme
        .split("<!-- settings-reference:start -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- settings-reference:end -->").next())
        .expect("settings reference block in README.md");
    assert_eq!(
        keys_of(block),
        keys_of(&rendered),
        "README.md settings reference"
    );
}

/// `regnotify simulator` as an integration environment runs it: the real client is answered,
/// a rules file injects faults, and SIGTERM stops it cleanly.
#[test]
fn the_simulator_command_serves_signed_answers_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rules]]\nmerchant_prefix = \"M-FAIL-\"\nfault = { kind = \"result\", status = \"F\", code = \"PROCESS_FAIL\" }\n",
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = binary()
        .args([
            "simulator",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--private-key-file",
            "tests/fixtures/alipayplus_private_key.pem",
            "--mpp-public-key-file",
            "tests/fixtures/mpp_public_key.pem",
            "--client-id",
            "TEST_CLIENT",
            "--rules",
            rules.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("simulator listening on") {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "simulator ended early"
        );
    }
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let classes = runtime.block_on(async {
        let mut settings = regnotify::config::AlipayPlusSettings {
            base_url: format!("http://127.0.0.1:{port}"),
            allow_insecure_http: true,
            client_id: "TEST_CLIENT".into(),
            private_key_file: Some("tests/fixtures/mpp_private_key.pem".into()),
            alipayplus_public_key_file: Some("tests/fixtures/alipayplus_public_key.pem".into()),
            ..Default::default()
        };
        settings.request_timeout = std::time::Duration::from_secs(5);
        let client = regnotify::alipayplus::AlipayPlusClient::from_settings(&settings).unwrap();
        let mut classes = Vec::new();
        for merchant in ["M-OK-1", "M-FAIL-1"] {
            let event = regnotify::event::RegistrationDecided {
                event_id: "0b5f7c1e-6c8a-4a57-9d62-4a1d1f0e9a11".into(),
                occurred_at_ms: 0,
                reference_merchant_id: merchant.into(),
                registration_request_id: "R-1".into(),
                decision: regnotify::event::Decision::Approved,
                rejection_reason: None,
                psp_id: None,
            };
            let attempt = client.notify_registration_status(&event).await;
            classes.push((attempt.class, attempt.signature));
        }
        classes
    });
    use regnotify::alipayplus::{ResultClass, SignatureCheck};
    assert_eq!(classes[0], (ResultClass::Success, SignatureCheck::Verified));
    assert_eq!(classes[1].0, ResultClass::Rejected);

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the simulator did not stop within 10 s of SIGTERM");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "exit 0 on SIGTERM: {status}");
}
