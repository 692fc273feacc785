//! RSA keys for the Alipay+ signature scheme: loading private keys (PKCS#8 or PKCS#1 PEM) and
//! public keys (SPKI or PKCS#1 PEM, or the bare base64 DER the Alipay+ portal hands out),
//! generating RSA-2048 pairs, and writing them for `regnotify keygen`.
//!
//! Key material never leaves this module in printable form: [`PrivateSigningKey`] has a redacting
//! `Debug`, and no error message quotes the text it failed to read — only where it came from and
//! what kind of problem it was.
//!
//! Two RSA implementations share the work. The `rsa` crate parses and checks keys (its errors say
//! what is wrong with a file), derives public halves and writes PEM; aws-lc (through `aws-lc-rs`,
//! already linked for TLS) signs and verifies, about seven times faster. A property test holds the
//! two to byte-identical signatures. Async code signs through [`run_rsa`]: off the async worker
//! threads, at most one signature per core at a time. Verifying (about 12 µs for RSA-2048, a
//! twentieth of a signature) is cheap enough to run in place.
//!
//! The parts: the key types with their parsing, signing and verifying (`parse`), the policy on
//! who may read a private key file (`permissions`), the bounded pool RSA work runs on (`pool`),
//! and `regnotify keygen` (`keygen`). This file holds [`KeyError`] and re-exports the parts, so
//! callers name everything `keys::…`.

mod keygen;
mod parse;
mod permissions;
mod pool;

pub use keygen::{KeygenFiles, keygen};
pub use parse::{PrivateSigningKey, PublicVerifyingKey};
pub(crate) use permissions::private_key_exposure;
pub(crate) use pool::run_rsa;

use std::path::PathBuf;

/// Why a key could not be loaded, generated or written. `source` names where the key came from
/// (a file path or a setting name); the key text itself is never part of the message.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {error}")]
    Read {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("{source_name}: {what}")]
    Malformed { source_name: String, what: String },
    #[error("{source_name}: RSA key of {bits} bits is too small, at least {min} bits are required")]
    TooSmall {
        source_name: String,
        bits: usize,
        min: usize,
    },
    #[error("cannot generate an RSA key: {0}")]
    Generate(String),
    #[error("cannot write key file {path}: {error}")]
    Write {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("cannot sign: {0}")]
    Sign(String),
}
