//! The two key types: [`PrivateSigningKey`] (PKCS#8 or PKCS#1 PEM, or bare base64 DER) and
//! [`PublicVerifyingKey`] (SPKI or PKCS#1 PEM, or the bare base64 DER the Alipay+ portal hands
//! out), parsed and checked by the `rsa` crate, then signing and verifying through aws-lc.
//!
//! Key material never leaves in printable form: the private key's `Debug` redacts it and no error
//! quotes the text it failed to read, only where it came from. Nothing here reads file
//! permissions, writes files or schedules work (callers sign through `run_rsa`).
//!
//! About 600 lines, half of them tests (among them the property tests that hold aws-lc to the
//! `rsa` crate): one concern, the two key types, kept with the tests of what they promise.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::signature::{
    ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256, RsaKeyPair,
};
use base64::Engine;
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rsa::traits::PublicKeyParts;
use rsa::{PrivateKey, PublicKey};

use super::KeyError;
#[cfg(doc)]
use super::run_rsa;

/// The modulus size `regnotify keygen` produces and the smallest one we load.
pub(crate) const RSA_KEY_BITS: usize = 2048;

fn malformed(source_name: &str, what: impl Into<String>) -> KeyError {
    KeyError::Malformed {
        source_name: source_name.to_owned(),
        what: what.into(),
    }
}

/// The label of the first PEM block (`-----BEGIN <label>-----`), if the text is PEM at all.
fn pem_label(text: &str) -> Option<&str> {
    let start = text.find("-----BEGIN ")? + "-----BEGIN ".len();
    let rest = &text[start..];
    let end = rest.find("-----")?;
    Some(rest[..end].trim())
}

/// Bare base64 (whitespace ignored) → DER bytes.
fn bare_base64_der(text: &str) -> Option<Vec<u8>> {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.is_empty() {
        return None;
    }
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .ok()
}

/// An RSA private key that signs with RSASSA-PKCS1-v1_5 over SHA-256 (Alipay+ `RSA256`).
///
/// `Debug` prints only the modulus size. Cloning is cheap enough to be rare; share it behind an
/// `Arc` where several tasks sign.
#[derive(Clone)]
pub struct PrivateSigningKey {
    /// As the `rsa` crate parsed and checked it: the source of the PEM `keygen` writes.
    key: PrivateKey,
    /// The same key loaded into aws-lc, which does the signing.
    signer: Arc<RsaKeyPair>,
    /// Derived once, so that [`PrivateSigningKey::public_key`] cannot fail.
    public: PublicVerifyingKey,
    bits: usize,
}

impl fmt::Debug for PrivateSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateSigningKey")
            .field("bits", &self.bits)
            .field("material", &"[redacted]")
            .finish()
    }
}

impl PrivateSigningKey {
    fn new(key: PrivateKey, source_name: &str) -> Result<Self, KeyError> {
        let bits = key.size() * 8;
        if bits < RSA_KEY_BITS {
            return Err(KeyError::TooSmall {
                source_name: source_name.to_owned(),
                bits,
                min: RSA_KEY_BITS,
            });
        }
        // PKCS#8 DER is the hand-over form; `SecretDocument` wipes it when dropped.
        let der = key
            .to_pkcs8_der()
            .map_err(|e| malformed(source_name, format!("cannot re-encode the key ({e})")))?;
        let signer = RsaKeyPair::from_pkcs8(der.as_bytes()).map_err(|e| {
            malformed(
                source_name,
                format!("RSA private key rejected by the signer ({e})"),
            )
        })?;
        let public = PublicVerifyingKey::new(key.to_public_key(), source_name)?;
        Ok(Self {
            key,
            signer: Arc::new(signer),
            public,
            bits,
        })
    }

    /// Parses PEM text, detecting PKCS#8 (`PRIVATE KEY`) and PKCS#1 (`RSA PRIVATE KEY`); bare
    /// base64 DER in either form is accepted too. `source_name` only labels errors.
    pub(crate) fn from_pem(text: &str, source_name: &str) -> Result<Self, KeyError> {
        let key = match pem_label(text) {
            Some("PRIVATE KEY") => PrivateKey::from_pkcs8_pem(text).map_err(|e| {
                malformed(
                    source_name,
                    format!("not a valid PKCS#8 RSA private key ({e})"),
                )
            })?,
            Some("RSA PRIVATE KEY") => PrivateKey::from_pkcs1_pem(text).map_err(|e| {
                malformed(
                    source_name,
                    format!("not a valid PKCS#1 RSA private key ({e})"),
                )
            })?,
            Some("ENCRYPTED PRIVATE KEY") => {
                return Err(malformed(
                    source_name,
                    "encrypted private keys are not supported; decrypt it to PKCS#8 or PKCS#1 PEM",
                ));
            }
            Some(label) if label.contains("PUBLIC KEY") || label.contains("CERTIFICATE") => {
                return Err(malformed(
                    source_name,
                    format!("holds a {label}, not a private key"),
                ));
            }
            Some(label) => {
                return Err(malformed(
                    source_name,
                    format!(
                        "unsupported PEM block {label:?}; expected PRIVATE KEY (PKCS#8) or RSA PRIVATE KEY (PKCS#1)"
                    ),
                ));
            }
            None => {
                let der = bare_base64_der(text)
                    .ok_or_else(|| malformed(source_name, "neither PEM nor base64-encoded DER"))?;
                PrivateKey::from_pkcs8_der(&der)
                    .or_else(|_| PrivateKey::from_pkcs1_der(&der))
                    .map_err(|_| {
                        malformed(
                            source_name,
                            "base64 text is neither a PKCS#8 nor a PKCS#1 RSA private key",
                        )
                    })?
            }
        };
        Self::new(key, source_name)
    }

    /// Reads and parses a key file (see [`PrivateSigningKey::from_pem`]).
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|error| KeyError::Read {
            path: path.to_owned(),
            error,
        })?;
        Self::from_pem(&text, &path.display().to_string())
    }

    /// A fresh RSA-2048 key from the operating system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let key = PrivateKey::new(&mut rand::rng(), RSA_KEY_BITS)
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        Self::new(key, "generated key")
    }

    /// RSASSA-PKCS1-v1_5 / SHA-256 signature bytes of `content` (as many bytes as the modulus).
    /// CPU-heavy (about 0.2 ms for RSA-2048 in release builds): async callers go through
    /// [`run_rsa`].
    pub fn sign(&self, content: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut signature = vec![0; self.signer.public_modulus_len()];
        // aws-lc ignores the random source for PKCS#1 v1.5, which is deterministic.
        let rng = aws_lc_rs::rand::SystemRandom::new();
        self.signer
            .sign(&RSA_PKCS1_SHA256, &rng, content, &mut signature)
            .map_err(|e| KeyError::Sign(e.to_string()))?;
        Ok(signature)
    }

    pub fn public_key(&self) -> PublicVerifyingKey {
        self.public.clone()
    }

    /// Whether `public` is this key's public half.
    pub(crate) fn pairs_with(&self, public: &PublicVerifyingKey) -> bool {
        self.public.same_key(public)
    }

    /// PKCS#8 PEM text (the form `keygen` writes). The caller owns keeping it secret.
    pub fn to_pkcs8_pem(&self) -> Result<secrecy::SecretString, KeyError> {
        let pem = self
            .key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyError::Generate(format!("cannot encode private key ({e})")))?;
        Ok(secrecy::SecretString::from(pem.as_str()))
    }
}

/// An RSA public key that verifies RSA256 signatures.
#[derive(Clone)]
pub struct PublicVerifyingKey {
    /// As the `rsa` crate parsed and checked it: the source of PEM.
    key: PublicKey,
    /// The same key parsed once by aws-lc, which does the verifying.
    verifier: ParsedPublicKey,
    bits: usize,
}

impl fmt::Debug for PublicVerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicVerifyingKey")
            .field("bits", &self.bits)
            .finish_non_exhaustive()
    }
}

impl PublicVerifyingKey {
    /// Parses SPKI (`PUBLIC KEY`) or PKCS#1 (`RSA PUBLIC KEY`) PEM, or bare base64 DER of either
    /// (the Alipay+ portal shows its public key that way).
    pub(crate) fn from_pem(text: &str, source_name: &str) -> Result<Self, KeyError> {
        let key = match pem_label(text) {
            Some("PUBLIC KEY") => PublicKey::from_public_key_pem(text).map_err(|e| {
                malformed(
                    source_name,
                    format!("not a valid SPKI RSA public key ({e})"),
                )
            })?,
            Some("RSA PUBLIC KEY") => PublicKey::from_pkcs1_pem(text).map_err(|e| {
                malformed(
                    source_name,
                    format!("not a valid PKCS#1 RSA public key ({e})"),
                )
            })?,
            Some(label) if label.contains("PRIVATE KEY") => {
                return Err(malformed(
                    source_name,
                    "holds a private key where a public key is expected",
                ));
            }
            Some(label) => {
                return Err(malformed(
                    source_name,
                    format!(
                        "unsupported PEM block {label:?}; expected PUBLIC KEY (SPKI) or RSA PUBLIC KEY (PKCS#1)"
                    ),
                ));
            }
            None => {
                let der = bare_base64_der(text)
                    .ok_or_else(|| malformed(source_name, "neither PEM nor base64-encoded DER"))?;
                PublicKey::from_public_key_der(&der)
                    .or_else(|_| PublicKey::from_pkcs1_der(&der))
                    .map_err(|_| {
                        malformed(
                            source_name,
                            "base64 text is neither an SPKI nor a PKCS#1 RSA public key",
                        )
                    })?
            }
        };
        Self::new(key, source_name)
    }

    fn new(key: PublicKey, source_name: &str) -> Result<Self, KeyError> {
        let bits = key.size() * 8;
        if bits < RSA_KEY_BITS {
            return Err(KeyError::TooSmall {
                source_name: source_name.to_owned(),
                bits,
                min: RSA_KEY_BITS,
            });
        }
        let der = key
            .to_public_key_der()
            .map_err(|e| malformed(source_name, format!("cannot re-encode the key ({e})")))?;
        let verifier =
            ParsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, der.as_bytes()).map_err(|e| {
                malformed(
                    source_name,
                    format!("RSA public key rejected by the verifier ({e})"),
                )
            })?;
        Ok(Self {
            key,
            verifier,
            bits,
        })
    }

    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|error| KeyError::Read {
            path: path.to_owned(),
            error,
        })?;
        Self::from_pem(&text, &path.display().to_string())
    }

    /// True when `signature` is a valid RSA256 signature of `content` by the matching private key.
    /// About 12 µs for RSA-2048 in release builds: async code may call it in place.
    pub fn verify(&self, content: &[u8], signature: &[u8]) -> bool {
        self.verifier.verify_sig(content, signature).is_ok()
    }

    /// Whether both are the same RSA public key (modulus and exponent).
    pub(crate) fn same_key(&self, other: &PublicVerifyingKey) -> bool {
        self.key.n() == other.key.n() && self.key.e() == other.key.e()
    }

    /// SPKI PEM text.
    pub fn to_pem(&self) -> Result<String, KeyError> {
        self.key
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| KeyError::Generate(format!("cannot encode public key ({e})")))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const PKCS8: &str = include_str!("../../tests/fixtures/mpp_private_key.pem");
    const PKCS1: &str = include_str!("../../tests/fixtures/mpp_private_key_pkcs1.pem");
    const SPKI: &str = include_str!("../../tests/fixtures/mpp_public_key.pem");
    const PKCS1_PUBLIC: &str = include_str!("../../tests/fixtures/mpp_public_key_pkcs1.pem");

    #[test]
    fn pkcs8_and_pkcs1_forms_are_the_same_key() {
        let a = PrivateSigningKey::from_pem(PKCS8, "pkcs8").unwrap();
        let b = PrivateSigningKey::from_pem(PKCS1, "pkcs1").unwrap();
        assert_eq!(a.sign(b"x").unwrap(), b.sign(b"x").unwrap());
    }

    #[test]
    fn public_keys_load_in_every_form_and_verify() {
        let key = PrivateSigningKey::from_pem(PKCS8, "pkcs8").unwrap();
        let signature = key.sign(b"content").unwrap();
        let bare: String = SPKI.lines().filter(|l| !l.starts_with("-----")).collect();
        for (text, name) in [
            (SPKI, "spki"),
            (PKCS1_PUBLIC, "pkcs1"),
            (bare.as_str(), "bare"),
        ] {
            let public = PublicVerifyingKey::from_pem(text, name).unwrap();
            assert!(public.verify(b"content", &signature), "{name}");
            assert!(!public.verify(b"contenT", &signature), "{name}");
            assert!(!public.verify(b"content", &signature[1..]), "{name}");
        }
    }

    #[test]
    fn errors_name_the_source_and_never_the_key() {
        let broken = PKCS8.replace("M", "A");
        for (text, expect) in [
            (broken.as_str(), "PKCS#8"),
            (SPKI, "not a private key"),
            ("hello world", "neither PEM nor"),
            (
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
                "encrypted",
            ),
        ] {
            let message = PrivateSigningKey::from_pem(text, "/etc/key.pem")
                .unwrap_err()
                .to_string();
            assert!(message.starts_with("/etc/key.pem: "), "{message}");
            assert!(message.contains(expect), "{message}");
            assert!(!message.contains("MII"), "{message}");
        }
        let message = PublicVerifyingKey::from_pem(PKCS1, "pub.pem")
            .unwrap_err()
            .to_string();
        assert!(message.contains("private key"), "{message}");
    }

    #[test]
    fn debug_redacts_the_private_key() {
        let key = PrivateSigningKey::from_pem(PKCS8, "pkcs8").unwrap();
        let debug = format!("{key:?}");
        assert_eq!(
            debug,
            "PrivateSigningKey { bits: 2048, material: \"[redacted]\" }"
        );
    }

    /// Signing with aws-lc must give exactly the bytes the `rsa` crate gives (PKCS#1 v1.5 is
    /// deterministic), and verifying must agree with it, for keys this module never saw before.
    mod against_the_rsa_crate {
        use std::sync::OnceLock;

        use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
        use aws_lc_rs::rsa::KeySize;
        use proptest::prelude::*;
        use rsa::pkcs1v15;
        use rsa::sha2::Sha256;
        use rsa::signature::{SignatureEncoding, Signer, Verifier};

        use super::*;

        const KEYS_PER_SIZE: usize = 2;

        struct Pair {
            ours: PrivateSigningKey,
            reference: pkcs1v15::SigningKey<Sha256>,
            reference_public: pkcs1v15::VerifyingKey<Sha256>,
        }

        fn pair(key: PrivateKey) -> Pair {
            Pair {
                reference_public: pkcs1v15::VerifyingKey::new(key.to_public_key()),
                reference: pkcs1v15::SigningKey::new(key.clone()),
                ours: PrivateSigningKey::new(key, "generated").unwrap(),
            }
        }

        /// Generated once for every case of every test: generation is the slow part.
        fn keys() -> &'static [Pair] {
            static KEYS: OnceLock<Vec<Pair>> = OnceLock::new();
            KEYS.get_or_init(|| {
                // One from the `rsa` crate's own generator; the rest from aws-lc's, which makes
                // RSA-4096 keys in well under a second.
                let mut pairs = vec![pair(PrivateKey::new(&mut rand::rng(), 2048).unwrap())];
                for size in [KeySize::Rsa2048, KeySize::Rsa3072, KeySize::Rsa4096] {
                    for _ in 0..KEYS_PER_SIZE {
                        let generated = RsaKeyPair::generate(size).unwrap();
                        let der: Pkcs8V1Der = generated.as_der().unwrap();
                        pairs.push(pair(PrivateKey::from_pkcs8_der(der.as_ref()).unwrap()));
                    }
                }
                pairs
            })
        }

        #[test]
        fn generated_keys_cover_2048_3072_and_4096_bits() {
            let bits: Vec<usize> = keys().iter().map(|pair| pair.ours.bits).collect();
            for size in [2048, 3072, 4096] {
                assert!(
                    bits.iter().filter(|&&b| b == size).count() >= KEYS_PER_SIZE,
                    "{bits:?}"
                );
            }
        }

        /// How a signed message is changed before verifying.
        #[derive(Debug, Clone, Copy)]
        enum Tamper {
            None,
            FlipMessageBit(usize),
            FlipSignatureBit(usize),
            /// A value above any modulus of its length.
            SignatureAllOnes,
            DropLastSignatureByte,
            AppendSignatureByte,
            /// A valid signature of the same message by another key.
            OtherKey,
        }

        fn tamper() -> impl Strategy<Value = Tamper> {
            prop_oneof![
                2 => Just(Tamper::None),
                1 => any::<usize>().prop_map(Tamper::FlipMessageBit),
                1 => any::<usize>().prop_map(Tamper::FlipSignatureBit),
                1 => Just(Tamper::SignatureAllOnes),
                1 => Just(Tamper::DropLastSignatureByte),
                1 => Just(Tamper::AppendSignatureByte),
                1 => Just(Tamper::OtherKey),
            ]
        }

        fn message() -> impl Strategy<Value = Vec<u8>> {
            proptest::collection::vec(any::<u8>(), 0..1024)
        }

        proptest! {
            #[test]
            fn signature_bytes_match_the_rsa_crate(
                index in 0..keys().len(),
                message in message(),
            ) {
                let pair = &keys()[index];
                let ours = pair.ours.sign(&message).unwrap();
                prop_assert_eq!(ours.len() * 8, pair.ours.bits);
                prop_assert_eq!(ours, pair.reference.sign(&message).to_vec());
            }

            #[test]
            fn signature_verification_agrees_with_the_rsa_crate(
                index in 0..keys().len(),
                message in message(),
                tamper in tamper(),
            ) {
                let keys = keys();
                let pair = &keys[index];
                let mut content = message.clone();
                let mut signature = pair.ours.sign(&message).unwrap();
                match tamper {
                    Tamper::None => {}
                    Tamper::FlipMessageBit(at) => {
                        if content.is_empty() {
                            content.push(0);
                        } else {
                            let at = at % (content.len() * 8);
                            content[at / 8] ^= 1 << (at % 8);
                        }
                    }
                    Tamper::FlipSignatureBit(at) => {
                        let at = at % (signature.len() * 8);
                        signature[at / 8] ^= 1 << (at % 8);
                    }
                    Tamper::SignatureAllOnes => signature.fill(0xff),
                    Tamper::DropLastSignatureByte => {
                        signature.pop();
                    }
                    Tamper::AppendSignatureByte => signature.push(0),
                    Tamper::OtherKey => {
                        let other = keys
                            .iter()
                            .cycle()
                            .skip(index + 1)
                            .find(|other| other.ours.bits == pair.ours.bits)
                            .unwrap();
                        signature = other.ours.sign(&message).unwrap();
                    }
                }
                let ours = pair.ours.public_key().verify(&content, &signature);
                let reference = pkcs1v15::Signature::try_from(signature.as_slice())
                    .is_ok_and(|signature| {
                        pair.reference_public.verify(&content, &signature).is_ok()
                    });
                prop_assert_eq!(ours, reference);
                prop_assert_eq!(ours, matches!(tamper, Tamper::None));
            }
        }
    }

    /// Not a check: prints the time per RSA-2048 signature and verification, ours against the
    /// `rsa` crate's (the signer before aws-lc), one thread, fixture key. BENCHMARKS.md quotes it:
    /// `cargo test --release --lib signing_speed -- --ignored --nocapture`
    #[test]
    #[ignore = "a timing, meaningful only in a release build"]
    fn signing_speed_against_the_rsa_crate() {
        use rsa::signature::{Signer, Verifier};
        use std::time::Instant;

        let ours = PrivateSigningKey::from_pem(PKCS8, "pkcs8").unwrap();
        let public = ours.public_key();
        let rsa_key = PrivateKey::from_pkcs8_pem(PKCS8).unwrap();
        let reference = rsa::pkcs1v15::SigningKey::<rsa::sha2::Sha256>::new(rsa_key.clone());
        let reference_public =
            rsa::pkcs1v15::VerifyingKey::<rsa::sha2::Sha256>::new(rsa_key.to_public_key());
        let content = [b'x'; 400];
        let signature = ours.sign(&content).unwrap();
        let reference_signature = reference.sign(&content);
        let time = |what: &str, runs: u32, op: &dyn Fn()| {
            for _ in 0..runs / 10 {
                op();
            }
            let started = Instant::now();
            for _ in 0..runs {
                op();
            }
            let each = started.elapsed() / runs;
            println!(
                "{what:<28} {:>8.3} ms  {:>7.0}/s",
                each.as_secs_f64() * 1e3,
                1.0 / each.as_secs_f64()
            );
        };
        time("sign, aws-lc (ours)", 2000, &|| {
            ours.sign(&content).unwrap();
        });
        time("sign, rsa crate", 300, &|| {
            let _ = reference.sign(&content);
        });
        time("verify, aws-lc (ours)", 5000, &|| {
            assert!(public.verify(&content, &signature));
        });
        time("verify, rsa crate", 2000, &|| {
            assert!(
                reference_public
                    .verify(&content, &reference_signature)
                    .is_ok()
            );
        });
    }

    #[test]
    fn missing_file_is_a_read_error_naming_the_path() {
        let err = PrivateSigningKey::from_file(Path::new("/nonexistent/key.pem")).unwrap_err();
        assert!(matches!(err, KeyError::Read { .. }));
        assert!(err.to_string().contains("/nonexistent/key.pem"));
    }
}
