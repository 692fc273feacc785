//! Our RSA-2048 signing rate on one core, through the function the service signs requests with,
//! against `openssl speed` ([`super::openssl`]), in alternating rounds, best of each.
//!
//! Measures and reports progress on stderr; never formats the result.

use std::time::{Duration, Instant};

use super::openssl;
use super::report::SignerResult;
use crate::alipayplus::signature::{request_time_now, sign_request};
use crate::keys::PrivateSigningKey;

/// Rounds of (ours, OpenSSL's), alternating; the best of each is kept, because on a shared machine
/// other work only ever slows a round down.
const SIGNER_ROUNDS: usize = 3;

/// Signs a typical request on this thread, and runs `openssl speed`, `seconds` each, in
/// [`SIGNER_ROUNDS`] alternating rounds.
pub(super) fn measure_signer(seconds: u64) -> anyhow::Result<SignerResult> {
    let mut ours: Vec<f64> = Vec::new();
    let mut theirs: Vec<openssl::OpenSslSpeed> = Vec::new();
    let mut openssl_unavailable = None;
    for round in 1..=SIGNER_ROUNDS {
        eprintln!(
            "bench: signer round {round}/{SIGNER_ROUNDS}: ours, then openssl speed -seconds {seconds} rsa2048"
        );
        ours.push(our_signing_rate(seconds)?);
        if openssl_unavailable.is_none() {
            match openssl::measure(seconds) {
                Ok(speed) => theirs.push(speed),
                Err(why) => openssl_unavailable = Some(why),
            }
        }
    }
    let ours_per_second = ours.iter().copied().fold(0.0, f64::max);
    let openssl = theirs
        .into_iter()
        .max_by(|a, b| a.signs_per_second.total_cmp(&b.signs_per_second));
    let ratio = openssl
        .as_ref()
        .map(|speed| ours_per_second / speed.signs_per_second);
    Ok(SignerResult {
        ours_per_second,
        rounds: SIGNER_ROUNDS,
        openssl,
        openssl_unavailable,
        ratio,
    })
}

/// Signatures per second on this thread for `seconds` (after a short warm-up).
fn our_signing_rate(seconds: u64) -> anyhow::Result<f64> {
    let key = PrivateSigningKey::generate()?;
    let body = br#"{"referenceMerchantId":"M-000123","registrationRequestId":"R-000000042","registrationResult":{"registrationStatus":"APPROVED"}}"#;
    let time = request_time_now();
    let path = "/aps/api/v1/merchants/notifyRegistrationStatus";
    let sign = || sign_request(&key, path, "DEMO_CLIENT", &time, body, 1);
    for _ in 0..50 {
        sign()?;
    }
    let budget = Duration::from_secs(seconds.max(1));
    let started = Instant::now();
    let mut signed = 0u64;
    while started.elapsed() < budget {
        std::hint::black_box(sign()?);
        signed += 1;
    }
    Ok(signed as f64 / started.elapsed().as_secs_f64())
}
