//! Stopping and restarting the real broker under a running test, through
//! `scripts/kafka-local.sh kill` and `restart` (same ports, same data). Only the broker that
//! script runs can be controlled: its run directory comes from `REGNOTIFY_TEST_KAFKA_RUN_DIR` as
//! the script reads it, and `status` must name the broker the tests use.
//!
//! Tests in one binary run in parallel: one that stops the broker holds [`exclusive`], every
//! other real-broker test of that binary holds [`shared`], so no test sees an outage it did not
//! stage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

fn lock() -> &'static RwLock<()> {
    static LOCK: OnceLock<RwLock<()>> = OnceLock::new();
    LOCK.get_or_init(|| RwLock::new(()))
}

/// Held by tests that need the broker to stay up.
pub async fn shared() -> RwLockReadGuard<'static, ()> {
    lock().read().await
}

/// Held by a test that stops the broker.
pub async fn exclusive() -> RwLockWriteGuard<'static, ()> {
    lock().write().await
}

pub fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka-local.sh")
}

fn run(command: &str) -> (bool, String, String) {
    let output = Command::new(script())
        .arg(command)
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/kafka-local.sh {command}: {e}"));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `Ok` when `scripts/kafka-local.sh` runs the broker at `bootstrap` (so this test may stop it),
/// otherwise why not.
pub fn controllable(bootstrap: &str) -> Result<(), String> {
    let (running, printed, log) = run("status");
    if !running {
        return Err(format!(
            "scripts/kafka-local.sh runs no broker here (REGNOTIFY_TEST_KAFKA_RUN_DIR={:?}): {log}",
            std::env::var("REGNOTIFY_TEST_KAFKA_RUN_DIR").ok()
        ));
    }
    if printed != bootstrap {
        return Err(format!(
            "scripts/kafka-local.sh runs {printed}, the tests use {bootstrap}"
        ));
    }
    Ok(())
}

/// SIGKILLs the broker (its data stays). The broker comes back with [`Outage::end`], or when
/// the returned guard is dropped (a test that panics mid-outage leaves no dead broker behind).
#[must_use = "the broker stays down until the outage ends"]
pub fn kill() -> Outage {
    let (ok, _, log) = run("kill");
    assert!(ok, "scripts/kafka-local.sh kill failed: {log}");
    Outage { ended: false }
}

/// A broker killed by [`kill`].
#[derive(Debug)]
pub struct Outage {
    ended: bool,
}

impl Outage {
    /// Starts the broker again and waits until it answers; returns how long that took.
    pub fn end(mut self) -> Duration {
        self.ended = true;
        restart()
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if !self.ended {
            let (ok, _, log) = run("restart");
            if !ok {
                eprintln!("scripts/kafka-local.sh restart failed after a test panicked: {log}");
            }
        }
    }
}

fn restart() -> Duration {
    let started = Instant::now();
    let (ok, _, log) = run("restart");
    assert!(ok, "scripts/kafka-local.sh restart failed: {log}");
    started.elapsed()
}
