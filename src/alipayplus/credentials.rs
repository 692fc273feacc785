//! One MPP's credentials as the client uses them, and where they come from: the private key and
//! its `keyVersion` that sign requests, and Alipay+'s public key(s) that verify answers.
//!
//! [`ClientKeys`] is shared by the client and the key watcher ([`super::rotation`]), which swaps
//! keys while calls are in flight: a call reads the signer once, so it signs with one consistent
//! (key, version) pair. During a rotation of Alipay+'s key the previous public key keeps
//! verifying answers until its overlap ends, and never after.
//!
//! [`KeySources`] reads the settings' files; its errors name the setting and the path, never the
//! key text.

use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use crate::config::{AlipayPlusSettings, DEFAULT_PSP_LABEL, MppClientSettings, Secret};
use crate::keys::{PrivateSigningKey, PublicVerifyingKey};

/// What signs a request: a private key and the `keyVersion` Alipay+ knows it by.
#[derive(Debug)]
pub(crate) struct Signer {
    pub(crate) key: PrivateSigningKey,
    pub(crate) key_version: u32,
}

/// Alipay+'s public keys: the current one, and during a rotation the previous one until a deadline.
#[derive(Debug, Default)]
struct AnswerKeys {
    current: Option<PublicVerifyingKey>,
    previous: Option<(PublicVerifyingKey, Instant)>,
}

/// The keys one client signs and verifies with, replaceable while it runs.
#[derive(Debug)]
pub(crate) struct ClientKeys {
    signer: RwLock<Arc<Signer>>,
    answer: RwLock<AnswerKeys>,
}

impl ClientKeys {
    pub(crate) fn new(signer: Signer, answer_key: Option<PublicVerifyingKey>) -> ClientKeys {
        ClientKeys {
            signer: RwLock::new(Arc::new(signer)),
            answer: RwLock::new(AnswerKeys {
                current: answer_key,
                previous: None,
            }),
        }
    }

    /// The signer for one request.
    pub(crate) fn signer(&self) -> Arc<Signer> {
        Arc::clone(&self.signer.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub(crate) fn key_version(&self) -> u32 {
        self.signer().key_version
    }

    /// From now on requests are signed with `signer`; calls already signed are unaffected.
    pub(crate) fn replace_signer(&self, signer: Signer) {
        *self.signer.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(signer);
    }

    /// Makes `key` the current Alipay+ key; the one it replaces verifies answers until `until`.
    /// Returns false (and changes nothing) when `key` already is the current key.
    pub(crate) fn rotate_answer_key(&self, key: PublicVerifyingKey, until: Instant) -> bool {
        let mut answer = self.answer.write().unwrap_or_else(PoisonError::into_inner);
        if answer.current.as_ref().is_some_and(|c| c.same_key(&key)) {
            return false;
        }
        answer.previous = answer.current.take().map(|previous| (previous, until));
        answer.current = Some(key);
        true
    }

    /// Forgets the previous Alipay+ key once its overlap has ended at `now`; true when it did.
    pub(crate) fn expire_previous_answer_key(&self, now: Instant) -> bool {
        let mut answer = self.answer.write().unwrap_or_else(PoisonError::into_inner);
        if answer
            .previous
            .as_ref()
            .is_some_and(|(_, until)| now >= *until)
        {
            answer.previous = None;
            return true;
        }
        false
    }

    /// Whether an answer verifies at `now`: `verify` is asked with the current key, then with
    /// the previous one while its overlap lasts. `None` when no Alipay+ key is configured.
    pub(crate) fn verify_answer<T: PartialEq>(
        &self,
        now: Instant,
        verified: T,
        verify: impl Fn(&PublicVerifyingKey) -> T,
    ) -> Option<T> {
        let answer = self.answer.read().unwrap_or_else(PoisonError::into_inner);
        let current = answer.current.as_ref()?;
        let first = verify(current);
        if first == verified {
            return Some(first);
        }
        match &answer.previous {
            Some((previous, until)) if now < *until => {
                let second = verify(previous);
                Some(if second == verified { second } else { first })
            }
            _ => Some(first),
        }
    }

    pub(crate) fn verifies_answers(&self) -> bool {
        self.answer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .current
            .is_some()
    }
}

/// Where a private key comes from.
#[derive(Clone)]
pub(crate) enum PrivateKeySource {
    File(PathBuf),
    /// PEM text from a setting (environment injection); never reloaded.
    Inline(Secret),
}

impl fmt::Debug for PrivateKeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrivateKeySource::File(path) => f.debug_tuple("File").field(path).finish(),
            PrivateKeySource::Inline(_) => f.write_str("Inline([redacted])"),
        }
    }
}

/// Why a key could not be loaded: the setting at fault and what is wrong, never key text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting `{setting}`: {message}")]
pub struct KeyLoadError {
    pub(crate) setting: String,
    pub(crate) message: String,
}

/// The settings one MPP's keys are read from.
#[derive(Debug, Clone)]
pub(crate) struct KeySources {
    /// The `psp` label: `default` or the table's pspId.
    pub(crate) psp: String,
    /// Settings prefix for messages: `alipayplus` or `alipayplus.clients.<pspId>`.
    pub(crate) prefix: String,
    pub(crate) client_id: String,
    /// `None` when the settings name no private key (refused when loading).
    pub(crate) private_key: Option<PrivateKeySource>,
    pub(crate) key_version: u32,
    pub(crate) key_version_file: Option<PathBuf>,
    pub(crate) mpp_public_key_file: Option<PathBuf>,
    /// `None` when answers are not verified.
    pub(crate) alipayplus_public_key_file: Option<PathBuf>,
    pub(crate) verify_response_signature: bool,
}

impl KeySources {
    /// The top-level `[alipayplus]` identity.
    pub(crate) fn top_level(settings: &AlipayPlusSettings) -> KeySources {
        let private_key = match (&settings.private_key, &settings.private_key_file) {
            (Some(pem), _) => Some(PrivateKeySource::Inline(pem.clone())),
            (None, Some(path)) => Some(PrivateKeySource::File(path.clone())),
            (None, None) => None,
        };
        KeySources {
            psp: DEFAULT_PSP_LABEL.to_owned(),
            prefix: "alipayplus".to_owned(),
            client_id: settings.client_id.clone(),
            private_key,
            key_version: settings.key_version,
            key_version_file: settings.key_version_file.clone(),
            mpp_public_key_file: settings.mpp_public_key_file.clone(),
            alipayplus_public_key_file: settings.alipayplus_public_key_file.clone(),
            verify_response_signature: settings.verify_response_signature,
        }
    }

    /// The `[alipayplus.clients.<psp_id>]` identity.
    pub(crate) fn for_client(
        settings: &AlipayPlusSettings,
        psp_id: &str,
        client: &MppClientSettings,
    ) -> KeySources {
        let private_key = match (&client.private_key, &client.private_key_file) {
            (Some(pem), _) => Some(PrivateKeySource::Inline(pem.clone())),
            (None, Some(path)) => Some(PrivateKeySource::File(path.clone())),
            (None, None) => None,
        };
        KeySources {
            psp: psp_id.to_owned(),
            prefix: format!("alipayplus.clients.{psp_id}"),
            client_id: client.client_id.clone(),
            private_key,
            key_version: client.key_version,
            key_version_file: client.key_version_file.clone(),
            mpp_public_key_file: client.mpp_public_key_file.clone(),
            alipayplus_public_key_file: client.alipayplus_public_key_file.clone(),
            verify_response_signature: settings.verify_response_signature,
        }
    }

    fn setting(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    fn error(&self, name: &str, message: impl Into<String>) -> KeyLoadError {
        KeyLoadError {
            setting: self.setting(name),
            message: message.into(),
        }
    }

    /// Reads the private key and its version, and checks the key against the MPP public key
    /// when one is configured.
    pub(crate) fn load_signer(&self) -> Result<Signer, KeyLoadError> {
        let key = match &self.private_key {
            Some(PrivateKeySource::File(path)) => PrivateSigningKey::from_file(path)
                .map_err(|e| self.error("private_key_file", e.to_string()))?,
            Some(PrivateKeySource::Inline(pem)) => {
                PrivateSigningKey::from_pem(pem.expose(), &self.setting("private_key"))
                    .map_err(|e| self.error("private_key", e.to_string()))?
            }
            None => {
                return Err(self.error(
                    "private_key_file",
                    format!(
                        "is required (or {} as PEM text)",
                        self.setting("private_key")
                    ),
                ));
            }
        };
        let key_version = self.key_version()?;
        if let Some(path) = &self.mpp_public_key_file {
            let public = PublicVerifyingKey::from_file(path)
                .map_err(|e| self.error("mpp_public_key_file", e.to_string()))?;
            if !key.pairs_with(&public) {
                let which = match &self.private_key {
                    Some(PrivateKeySource::File(file)) => file.display().to_string(),
                    _ => self.setting("private_key"),
                };
                return Err(self.error(
                    "mpp_public_key_file",
                    format!(
                        "the private key {which} is not the pair of the public key {}",
                        path.display()
                    ),
                ));
            }
        }
        Ok(Signer { key, key_version })
    }

    /// The key version: the `key_version_file`'s when one is set, else `key_version`.
    pub(crate) fn key_version(&self) -> Result<u32, KeyLoadError> {
        match &self.key_version_file {
            Some(path) => {
                read_key_version(path).map_err(|message| self.error("key_version_file", message))
            }
            None => Ok(self.key_version),
        }
    }

    /// Alipay+'s public key, or `None` when answers are not verified.
    pub(crate) fn load_answer_key(&self) -> Result<Option<PublicVerifyingKey>, KeyLoadError> {
        if !self.verify_response_signature {
            return Ok(None);
        }
        let Some(path) = &self.alipayplus_public_key_file else {
            return Err(self.error(
                "alipayplus_public_key_file",
                "is required while alipayplus.verify_response_signature is true",
            ));
        };
        PublicVerifyingKey::from_file(path)
            .map(Some)
            .map_err(|e| self.error("alipayplus_public_key_file", e.to_string()))
    }

    /// Loads everything, for start-up.
    pub(crate) fn load(&self) -> Result<ClientKeys, KeyLoadError> {
        Ok(ClientKeys::new(
            self.load_signer()?,
            self.load_answer_key()?,
        ))
    }

    /// A digest of the files the signer is read from; `None` when the key is inline (it cannot
    /// change while the process runs).
    pub(crate) fn signer_fingerprint(&self) -> Option<u64> {
        let Some(PrivateKeySource::File(key)) = &self.private_key else {
            return None;
        };
        let mut hasher = DefaultHasher::new();
        for path in [
            Some(key),
            self.key_version_file.as_ref(),
            self.mpp_public_key_file.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            hash_file(path, &mut hasher);
        }
        Some(hasher.finish())
    }

    /// A digest of Alipay+'s public key file; `None` when answers are not verified.
    pub(crate) fn answer_key_fingerprint(&self) -> Option<u64> {
        let path = self
            .alipayplus_public_key_file
            .as_ref()
            .filter(|_| self.verify_response_signature)?;
        let mut hasher = DefaultHasher::new();
        hash_file(path, &mut hasher);
        Some(hasher.finish())
    }
}

/// Contents (or the kind of read error) into the digest. The digest is only compared, never shown.
fn hash_file(path: &Path, hasher: &mut DefaultHasher) {
    match std::fs::read(path) {
        Ok(bytes) => bytes.hash(hasher),
        Err(error) => format!("unreadable: {:?}", error.kind()).hash(hasher),
    }
}

/// A `key_version_file`: one positive number, surrounding white space ignored.
fn read_key_version(path: &Path) -> Result<u32, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let trimmed = text.trim();
    trimmed
        .parse::<u32>()
        .ok()
        .filter(|version| *version > 0)
        .ok_or_else(|| {
            format!(
                "{} must hold one key version, a whole number above 0 (it holds {} bytes that are not)",
                path.display(),
                trimmed.len()
            )
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;

    const PKCS8: &str = include_str!("../../tests/fixtures/mpp_private_key.pem");
    const SPKI: &str = include_str!("../../tests/fixtures/mpp_public_key.pem");
    const OTHER_PUBLIC: &str = include_str!("../../tests/fixtures/other_public_key.pem");

    fn sources(dir: &Path) -> KeySources {
        KeySources {
            psp: "PSP_A".into(),
            prefix: "alipayplus.clients.PSP_A".into(),
            client_id: "client-a".into(),
            private_key: Some(PrivateKeySource::File(dir.join("key.pem"))),
            key_version: 1,
            key_version_file: None,
            mpp_public_key_file: None,
            alipayplus_public_key_file: Some(dir.join("alipayplus.pem")),
            verify_response_signature: true,
        }
    }

    #[test]
    fn a_private_key_that_does_not_pair_with_its_public_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key.pem"), PKCS8).unwrap();
        std::fs::write(dir.path().join("pub.pem"), SPKI).unwrap();
        std::fs::write(dir.path().join("other.pem"), OTHER_PUBLIC).unwrap();
        let mut sources = sources(dir.path());
        sources.mpp_public_key_file = Some(dir.path().join("pub.pem"));
        assert!(sources.load_signer().is_ok());
        sources.mpp_public_key_file = Some(dir.path().join("other.pem"));
        let error = sources.load_signer().unwrap_err();
        assert_eq!(
            error.setting,
            "alipayplus.clients.PSP_A.mpp_public_key_file"
        );
        assert!(error.message.contains("not the pair"), "{error}");
        assert!(!error.to_string().contains("MII"), "{error}");
    }

    #[test]
    fn the_key_version_file_wins_and_must_hold_a_number() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key.pem"), PKCS8).unwrap();
        let mut sources = sources(dir.path());
        let version = dir.path().join("key_version");
        sources.key_version_file = Some(version.clone());
        std::fs::write(&version, "7\n").unwrap();
        assert_eq!(sources.load_signer().unwrap().key_version, 7);
        for bad in ["", "seven", "0", "-1", "99999999999"] {
            std::fs::write(&version, bad).unwrap();
            let error = sources.load_signer().unwrap_err();
            assert_eq!(error.setting, "alipayplus.clients.PSP_A.key_version_file");
        }
    }

    #[test]
    fn fingerprints_follow_the_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key.pem"), PKCS8).unwrap();
        let sources = sources(dir.path());
        let before = sources.signer_fingerprint();
        assert_eq!(before, sources.signer_fingerprint());
        std::fs::write(dir.path().join("key.pem"), format!("{PKCS8}\n")).unwrap();
        assert_ne!(before, sources.signer_fingerprint());
        let mut inline = sources.clone();
        inline.private_key = Some(PrivateKeySource::Inline(Secret::new(PKCS8)));
        assert_eq!(inline.signer_fingerprint(), None);
        assert!(!format!("{inline:?}").contains("MII"));
    }

    #[test]
    fn the_previous_answer_key_verifies_only_during_its_overlap() {
        let old = PublicVerifyingKey::from_pem(SPKI, "old").unwrap();
        let new = PublicVerifyingKey::from_pem(OTHER_PUBLIC, "new").unwrap();
        let signer = Signer {
            key: PrivateSigningKey::from_pem(PKCS8, "k").unwrap(),
            key_version: 1,
        };
        let keys = ClientKeys::new(signer, Some(old.clone()));
        let start = Instant::now();
        let until = start + Duration::from_secs(60);
        let signed_by_old = |key: &PublicVerifyingKey| key.same_key(&old);
        let signed_by_new = |key: &PublicVerifyingKey| key.same_key(&new);
        assert_eq!(keys.verify_answer(start, true, signed_by_new), Some(false));
        assert!(keys.rotate_answer_key(new.clone(), until));
        assert!(
            !keys.rotate_answer_key(new.clone(), until),
            "same key twice"
        );
        assert_eq!(keys.verify_answer(start, true, signed_by_new), Some(true));
        assert_eq!(keys.verify_answer(start, true, signed_by_old), Some(true));
        let after = until + Duration::from_millis(1);
        assert_eq!(keys.verify_answer(after, true, signed_by_old), Some(false));
        assert_eq!(keys.verify_answer(after, true, signed_by_new), Some(true));
        assert!(!keys.expire_previous_answer_key(start));
        assert!(keys.expire_previous_answer_key(after));
        assert_eq!(keys.verify_answer(start, true, signed_by_old), Some(false));
    }
}
