//! The bounded pool RSA work runs on: [`run_rsa`] puts CPU-heavy signing on tokio's blocking
//! pool, at most [`rsa_threads`] operations at a time, in first-come order.
//!
//! It schedules work and knows nothing of keys; it never signs or verifies by itself.

use std::num::NonZeroUsize;
use std::sync::{Arc, LazyLock};

use tokio::sync::Semaphore;

/// How many RSA signatures may be computed at once: one per core this process may use, as
/// `std::thread::available_parallelism` reports it (CPU affinity and cgroup quota included).
pub(crate) fn rsa_threads() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// Permits for RSA work, in first-come order. Sized once, at first use.
static RSA_PERMITS: LazyLock<Arc<Semaphore>> =
    LazyLock::new(|| Arc::new(Semaphore::new(rsa_threads())));

/// Runs CPU-heavy RSA work (signing) on tokio's blocking pool, at most [`rsa_threads`]
/// operations at a time, whoever asks (client, simulator), in first-come order. More would not
/// finish sooner on busy cores; they would take CPU from the async workers and hold a blocking
/// thread each while they wait. The permit travels with the work, so work whose caller stopped
/// waiting still counts until it ends.
pub(crate) async fn run_rsa<T, F>(work: F) -> Result<T, tokio::task::JoinError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    // Never closed, so `None` cannot happen; it would only lift the bound, not stop the work.
    let permit = Arc::clone(&RSA_PERMITS).acquire_owned().await.ok();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work()
    })
    .await
}
