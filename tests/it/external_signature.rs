//! Cross-checks our RSA256 signatures against Alipay's official global open SDK for Python (an
//! implementation we did not write): same signature bytes both ways, and each side verifies the
//! other's. See `tests/external_signature/README.md` for the install command.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use regnotify::alipayplus::NOTIFY_REGISTRATION_STATUS_PATH;
use regnotify::alipayplus::signature::{SignatureCheck, sign_request, verify_signature};
use regnotify::keys::{PrivateSigningKey, PublicVerifyingKey};
use serde_json::{Value, json};

fn here(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(name)
}

/// A small deterministic generator, so failures reproduce without a seed to report.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn text(&mut self, max_len: u64) -> String {
        const ALPHABET: &[&str] = &[
            "a", "Z", "0", "-", "_", " ", "\"", "\\", "é", "中", "😀", "+", "/", "=", "%", ".",
        ];
        let len = 1 + self.next() % max_len;
        (0..len)
            .map(|_| ALPHABET[(self.next() % ALPHABET.len() as u64) as usize])
            .collect()
    }
}

fn cases() -> Vec<(String, String, String, String)> {
    let mut cases = vec![(
        NOTIFY_REGISTRATION_STATUS_PATH.to_owned(),
        "SANDBOX_5YBZ1N2YDS8C07394".to_owned(),
        "2026-11-25T21:40:05+08:00".to_owned(),
        r#"{"referenceMerchantId":"M-1","registrationRequestId":"R-1","registrationResult":{"registrationStatus":"APPROVED"}}"#.to_owned(),
    )];
    let mut rng = Lcg(20_261_125);
    for i in 0..24 {
        let body = json!({
            "referenceMerchantId": rng.text(64),
            "registrationRequestId": rng.text(64),
            "registrationResult": {"registrationStatus": "REJECTED", "rejectionReason": rng.text(256)},
        })
        .to_string();
        let time = if i % 2 == 0 {
            "2026-01-02T03:04:05Z"
        } else {
            "2026-01-02T03:04:05-05:30"
        };
        cases.push((
            NOTIFY_REGISTRATION_STATUS_PATH.to_owned(),
            format!("CLIENT_{i:04}"),
            time.to_owned(),
            body,
        ));
    }
    cases
}

#[test]
fn alipay_sdk_and_regnotify_agree_on_signatures() {
    let required = std::env::var("REGNOTIFY_REQUIRE_EXTERNAL").is_ok_and(|v| v == "1");
    let python = std::env::var("REGNOTIFY_EXTERNAL_PYTHON").unwrap_or_else(|_| "python3".into());
    let key = PrivateSigningKey::from_file(&here("fixtures/mpp_private_key.pem")).unwrap();
    let public = PublicVerifyingKey::from_file(&here("fixtures/mpp_public_key.pem")).unwrap();

    let cases = cases();
    let mut ours = Vec::new();
    let mut input = Vec::new();
    for (path, client_id, time, body) in &cases {
        let signed = sign_request(&key, path, client_id, time, body.as_bytes(), 1).unwrap();
        input.push(json!({
            "path": path, "client_id": client_id, "time": time, "body": body,
            "our_header": signed.signature_header,
        }));
        ours.push(signed.signature_header);
    }
    let request = json!({
        // The SDK wraps bare keys as PKCS#1 and SPKI, so it is given those forms.
        "private_key_file": here("fixtures/mpp_private_key_pkcs1.pem"),
        "public_key_file": here("fixtures/mpp_public_key.pem"),
        "cases": input,
    });

    let child = Command::new(&python)
        .arg(here("external_signature/check_signature.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            assert!(
                !required,
                "REGNOTIFY_REQUIRE_EXTERNAL=1 but {python} cannot run: {e}"
            );
            eprintln!("SKIPPED external signature check: {python} cannot run ({e})");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(3) {
        assert!(
            !required,
            "REGNOTIFY_REQUIRE_EXTERNAL=1 but the Alipay SDK is missing: {stderr}\n\
             install: python3 -m pip install -r tests/external_signature/requirements.txt"
        );
        eprintln!(
            "SKIPPED external signature check: {stderr}\
             install: python3 -m pip install -r tests/external_signature/requirements.txt"
        );
        return;
    }
    assert!(
        output.status.success(),
        "check_signature.py failed: {stderr}"
    );
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), cases.len());

    for ((case, our_header), result) in cases.iter().zip(&ours).zip(results) {
        let (path, client_id, time, body) = case;
        let sdk_signature = result["sdk_signature"].as_str().unwrap();
        assert_eq!(
            our_header
                .strip_prefix("algorithm=RSA256,keyVersion=1,signature=")
                .unwrap(),
            sdk_signature,
            "signature differs from the SDK's for {case:?}"
        );
        assert_eq!(
            result["sdk_verifies_ours"],
            Value::Bool(true),
            "SDK rejects ours for {case:?}"
        );
        let sdk_header = format!("algorithm=RSA256, keyVersion=1, signature={sdk_signature}");
        assert_eq!(
            verify_signature(
                &public,
                path,
                client_id,
                time,
                body.as_bytes(),
                Some(&sdk_header)
            ),
            SignatureCheck::Verified,
            "we reject the SDK's signature for {case:?}"
        );
    }
    eprintln!(
        "external signature check: {} cases agree with the Alipay SDK",
        cases.len()
    );
}
