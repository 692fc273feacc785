//! Entry points for the fuzz targets of `fuzz/` (cargo-fuzz, nightly) and for the corpus replay
//! test that runs on stable (`tests/it/fuzz_corpus.rs`): each takes arbitrary bytes, drives one parser
//! of hostile input the way the service does, and checks what must hold whatever the bytes.
//!
//! An entry point panics only when such a law is broken, which is what the fuzzer reports; the
//! code under test must never panic. Nothing here is used by the service itself.

use std::sync::{Arc, LazyLock};

use reqwest::StatusCode;

use crate::alipayplus::SignatureCheck;
use crate::alipayplus::classify::{
    Exchange, ResultClass, ResultOverrides, classify, parse_response_body,
};
use crate::alipayplus::signature::{decode_signature, parse_signature_header, verify_signature};
use crate::codec::schemas::builtin;
use crate::codec::{EventDecoder, SchemaRegistryClient, encode_event_raw};
use crate::config::{InputEncoding, ResultPolicy, Settings};
use crate::keys::PublicVerifyingKey;

/// The fuzz targets, by name: the directory of each seed corpus under `fuzz/corpus/`.
pub const TARGETS: [&str; 6] = [
    "decode_input",
    "registry_answer",
    "alipayplus_response",
    "signature_header",
    "settings",
    "simulator_request",
];

/// Runs the entry point of `target` on `data`; `false` when no target has that name.
pub fn run(target: &str, data: &[u8]) -> bool {
    match target {
        "decode_input" => decode_input(data),
        "registry_answer" => registry_answer(data),
        "alipayplus_response" => alipayplus_response(data),
        "signature_header" => signature_header(data),
        "settings" => settings(data),
        "simulator_request" => simulator_request(data),
        _ => return false,
    }
    true
}

fn evolved_writer_schema() -> Option<apache_avro::Schema> {
    let mut json: serde_json::Value = serde_json::from_str(builtin().input.json).ok()?;
    let fields = json.get_mut("fields")?.as_array_mut()?;
    fields.retain(|field| field["name"] != "pspId");
    fields.push(serde_json::json!({"name": "channel", "type": "string", "default": "web"}));
    apache_avro::Schema::parse_str(&json.to_string()).ok()
}

/// Schema ids the registry stub knows: every kept input schema version, oldest first, from 1,
/// then [`evolved_writer_schema`].
fn stub_registry() -> Arc<SchemaRegistryClient> {
    static REGISTRY: LazyLock<Arc<SchemaRegistryClient>> = LazyLock::new(|| {
        // Port 1 on loopback: an id the stub does not know fails fast as "registry unavailable",
        // as it would against a registry that does not answer.
        let client = SchemaRegistryClient::new(
            "http://127.0.0.1:1",
            None,
            std::time::Duration::from_secs(1),
        )
        .unwrap_or_else(|e| panic!("registry stub: {e}"));
        let mut versions: Vec<_> = builtin().input_by_fingerprint.values().collect();
        versions.sort_by_key(|known| known.json.len());
        let mut id = 0;
        for known in versions {
            id += 1;
            client.preload(id, known.schema.clone());
        }
        // And one evolved writer, so that schema resolution is fuzzed too: a field added (with
        // its default), `pspId` removed.
        if let Some(evolved) = evolved_writer_schema() {
            client.preload(id + 1, evolved);
        }
        Arc::new(client)
    });
    Arc::clone(&REGISTRY)
}

/// A decoder for `encoding` with the registry stub.
pub fn decoder(encoding: InputEncoding) -> EventDecoder {
    EventDecoder::new(encoding, Some(stub_registry()))
}

/// The input decoder in every framing: the first byte picks raw, Confluent (with a registry stub
/// that knows the kept schema versions), single-object or auto; the rest is the record value.
/// A decoded event must encode and decode back to itself.
pub fn decode_input(data: &[u8]) {
    let Some((&selector, value)) = data.split_first() else {
        return;
    };
    let encoding = match selector % 4 {
        0 => InputEncoding::Raw,
        1 => InputEncoding::Confluent,
        2 => InputEncoding::SingleObject,
        _ => InputEncoding::Auto,
    };
    static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"))
    });
    let decoder = decoder(encoding);
    let Ok(event) = RUNTIME.block_on(decoder.decode(value)) else {
        return;
    };
    let Ok(raw) = encode_event_raw(&event) else {
        return;
    };
    let again = RUNTIME.block_on(EventDecoder::new(InputEncoding::Raw, None).decode(&raw));
    assert_eq!(again.as_ref(), Ok(&event), "raw round trip");
}

/// The Schema Registry's answer to `GET /schemas/ids/{id}`: the first two bytes are the HTTP
/// status (big-endian), the rest the body.
pub fn registry_answer(data: &[u8]) {
    let (status, body) = split_status(data);
    let _ = crate::codec::registry::schema_from_answer(1, status, body);
}

/// The Alipay+ answer: HTTP status (two bytes), the signature check (one byte), then the body.
/// Whatever the bytes, only a trusted 2xx `S` answer (or one a policy makes a success) is a
/// success, and an untrusted answer never is.
pub fn alipayplus_response(data: &[u8]) {
    let (status, rest) = split_status(data);
    let Some((&check, body)) = rest.split_first() else {
        return;
    };
    let signature = match check % 4 {
        0 => SignatureCheck::Verified,
        1 => SignatureCheck::Missing,
        2 => SignatureCheck::Invalid,
        _ => SignatureCheck::NotChecked,
    };
    let result = parse_response_body(body);
    let overrides: ResultOverrides = [
        ("PROCESS_FAIL", ResultPolicy::Retry),
        ("UNKNOWN_EXCEPTION", ResultPolicy::Success),
    ]
    .into_iter()
    .map(|(code, policy)| (code.to_owned(), ResultClass::from(policy)))
    .collect();
    for overrides in [ResultOverrides::new(), overrides] {
        let class = classify(
            Exchange::Answered {
                http_status: status.as_u16(),
                result: result.as_ref(),
                signature,
            },
            &overrides,
        );
        if class == ResultClass::Success {
            assert!(signature.is_trusted(), "untrusted success: {result:?}");
            assert!(status.is_success(), "success from http {status}");
            let result = result
                .as_ref()
                .unwrap_or_else(|| panic!("success without result"));
            assert!(
                result.result_status == "S" || overrides.contains_key(&result.result_code),
                "success from {result:?}"
            );
        }
    }
}

fn split_status(data: &[u8]) -> (StatusCode, &[u8]) {
    let (status, rest) = match data {
        [high, low, rest @ ..] => (u16::from_be_bytes([*high, *low]), rest),
        _ => (200, data),
    };
    let status = StatusCode::from_u16(100 + status % 500).unwrap_or(StatusCode::OK);
    (status, rest)
}

/// The `Signature` header of an answer: parsed, decoded and verified against the Alipay+ test
/// key over a fixed content, as the client does. A fuzzer cannot forge RSA: any header it makes
/// must be refused.
pub fn signature_header(data: &[u8]) {
    static KEY: LazyLock<PublicVerifyingKey> = LazyLock::new(|| {
        PublicVerifyingKey::from_pem(
            include_str!("../tests/fixtures/alipayplus_public_key.pem"),
            "alipayplus test key",
        )
        .unwrap_or_else(|e| panic!("fixture key: {e}"))
    });
    let Ok(header) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(parsed) = parse_signature_header(header) {
        let _ = decode_signature(&parsed.signature);
    }
    let check = verify_signature(
        &KEY,
        "/aps/api/v1/merchants/notifyRegistrationStatus",
        "CLIENT",
        "2026-11-25T21:40:05+08:00",
        b"{}",
        Some(header),
    );
    assert_ne!(check, SignatureCheck::Verified, "forged signature verified");
}

/// The settings loader: the bytes up to the first NUL are the TOML file, each line after it one
/// `NAME=VALUE` environment variable. Loaded settings print without failing, and their secrets
/// never print.
pub fn settings(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (toml, env) = text.split_once('\0').unwrap_or((&text, ""));
    let env: Vec<(String, String)> = env
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    let Ok(settings) = Settings::load_from_toml_str(toml, env, &[]) else {
        return;
    };
    if settings.alipayplus.private_key.is_none() {
        return;
    }
    // The output must not depend on the key's text at all: with another key in its place it is
    // the same, byte for byte (a comparison of texts would trip on a key such as `)` that occurs
    // in the output anyway).
    let printed = |settings: &Settings| format!("{settings:?}{}", settings.to_redacted_toml());
    let mut other = settings.clone();
    other.alipayplus.private_key = Some(crate::config::Secret::new("another key"));
    assert_eq!(printed(&settings), printed(&other), "private key printed");
}

/// The simulator's reading of a request body: an accepted request respects the field rules.
pub fn simulator_request(data: &[u8]) {
    let Ok(valid) = crate::simulator::validate::validate_request_body(data) else {
        return;
    };
    for id in [&valid.reference_merchant_id, &valid.registration_request_id] {
        let chars = id.chars().count();
        assert!((1..=crate::event::MAX_ID_CHARS).contains(&chars), "{id:?}");
    }
    assert!(
        valid.registration_status == "APPROVED" || valid.registration_status == "REJECTED",
        "{valid:?}"
    );
}
