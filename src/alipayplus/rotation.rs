//! Key rotation without a restart: the [`KeyWatcher`] checks every MPP's key files every
//! `alipayplus.key_reload_interval` and at once on SIGHUP, and swaps what changed into the
//! running clients' [`ClientKeys`].
//!
//! A polled change is applied once the files read the same on two checks in a row, so a key and
//! its `key_version_file` written one after the other are taken together; SIGHUP applies what is
//! there now. A replacement that does not load (does not parse, or does not pair with the
//! configured MPP public key) is refused with one log line and a counter, and the keys in use
//! stay; it is not tried again until the files change once more. A new Alipay+ public key becomes
//! current and the previous one keeps verifying answers for `alipayplus_public_key_overlap`.
//!
//! Calls in flight are never stopped: each call reads its signer once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::credentials::{ClientKeys, KeySources};
use crate::observe;

/// What a check has seen of one set of files.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    /// The digest of the files whose keys are in use.
    applied: Option<u64>,
    /// The digest seen at the previous check (a change is applied once it is stable).
    last: Option<u64>,
    /// The digest of files that were refused (not tried again until they change).
    refused: Option<u64>,
}

impl Seen {
    fn at_start(digest: Option<u64>) -> Seen {
        Seen {
            applied: digest,
            last: digest,
            refused: None,
        }
    }

    /// Whether files with `digest` should be loaded now.
    fn should_load(&mut self, digest: u64, immediate: bool) -> bool {
        let stable = self.last == Some(digest);
        self.last = Some(digest);
        if self.applied == Some(digest) || self.refused == Some(digest) {
            return false;
        }
        immediate || stable
    }
}

/// One MPP's keys and the files they come from.
#[derive(Debug)]
struct Watched {
    sources: KeySources,
    keys: Arc<ClientKeys>,
    signer: Seen,
    answer: Seen,
}

/// Reloads changed key files into running clients.
#[derive(Debug)]
pub struct KeyWatcher {
    watched: Vec<Watched>,
    overlap: Duration,
}

impl KeyWatcher {
    /// `overlap`: how long the previous Alipay+ key keeps verifying after a new one is loaded.
    pub(crate) fn new(overlap: Duration) -> KeyWatcher {
        KeyWatcher {
            watched: Vec::new(),
            overlap,
        }
    }

    /// Watches the files of `sources` for the client keys `keys` (loaded from them at start).
    pub(crate) fn watch(&mut self, sources: KeySources, keys: Arc<ClientKeys>) {
        observe::key_version(&sources.psp, keys.key_version());
        self.watched.push(Watched {
            signer: Seen::at_start(sources.signer_fingerprint()),
            answer: Seen::at_start(sources.answer_key_fingerprint()),
            sources,
            keys,
        });
    }

    /// Reads the files and applies what changed; `immediate` (SIGHUP) does not wait for a
    /// change to be seen twice. Blocking file reads and key parsing: run it off the async workers.
    pub fn check(&mut self, immediate: bool) {
        let now = Instant::now();
        for watched in &mut self.watched {
            let psp = watched.sources.psp.as_str();
            if watched.keys.expire_previous_answer_key(now) {
                observe::answer_key_overlap_ended(psp);
            }
            if let Some(digest) = watched.sources.signer_fingerprint()
                && watched.signer.should_load(digest, immediate)
            {
                match watched.sources.load_signer() {
                    Ok(signer) => {
                        let version = signer.key_version;
                        watched.keys.replace_signer(signer);
                        watched.signer.applied = Some(digest);
                        watched.signer.refused = None;
                        observe::signing_key_reloaded(psp, version);
                    }
                    Err(error) => {
                        watched.signer.refused = Some(digest);
                        observe::key_reload_refused(psp, "mpp_private_key", &error);
                    }
                }
            }
            if let Some(digest) = watched.sources.answer_key_fingerprint()
                && watched.answer.should_load(digest, immediate)
            {
                match watched.sources.load_answer_key() {
                    Ok(Some(key)) => {
                        let until = now + self.overlap;
                        if watched.keys.rotate_answer_key(key, until) {
                            observe::answer_key_reloaded(psp, self.overlap);
                        }
                        watched.answer.applied = Some(digest);
                        watched.answer.refused = None;
                    }
                    Ok(None) => {}
                    Err(error) => {
                        watched.answer.refused = Some(digest);
                        observe::key_reload_refused(psp, "alipayplus_public_key", &error);
                    }
                }
            }
        }
    }

    /// Checks every `interval` and on SIGHUP until `stop` fires.
    pub(crate) async fn run(mut self, interval: Duration, stop: CancellationToken) {
        // The gauges set while the clients were built went nowhere: no recorder was installed yet.
        for watched in &self.watched {
            observe::key_version(&watched.sources.psp, watched.keys.key_version());
        }
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP; key files are only polled");
                None
            }
        };
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let immediate = tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => false,
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(signal) => signal.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    tracing::info!("SIGHUP received, reloading key files");
                    true
                }
            };
            let checked = tokio::task::spawn_blocking(move || {
                self.check(immediate);
                self
            })
            .await;
            match checked {
                Ok(watcher) => self = watcher,
                Err(error) => {
                    tracing::error!(%error, "key reload task failed; key files are no longer watched");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_applied_once_stable_or_at_once_when_asked() {
        let mut seen = Seen::at_start(Some(1));
        assert!(!seen.should_load(1, false));
        assert!(!seen.should_load(2, false), "first sight of a change waits");
        assert!(
            seen.should_load(2, false),
            "the same change seen twice loads"
        );
        seen.applied = Some(2);
        assert!(!seen.should_load(2, false));
        assert!(seen.should_load(3, true), "SIGHUP does not wait");
        seen.refused = Some(3);
        assert!(
            !seen.should_load(3, false),
            "a refused change is not retried"
        );
        assert!(!seen.should_load(3, true));
        assert!(!seen.should_load(4, false));
        assert!(seen.should_load(4, false));
    }
}
