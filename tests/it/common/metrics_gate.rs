//! One process has one metrics recorder, and every in-process service reports to it: the tests
//! of all suites run in this one binary, so a test that reads exact counts from `/metrics` must
//! have the recorder to itself. Every in-process service holds a [`Sharing`] while it runs
//! (taken by the harness when it starts one); a test that reads counts takes [`Alone`] first,
//! which waits until no other test's service runs and keeps new ones from starting until it
//! ends. Its own services start as usual. Counts from earlier tests remain: such a test
//! compares the recorder's counts before and after ([`rendered`]).
//!
//! A test is known by its thread (libtest runs each on its own, and a tokio test's body runs on
//! that thread), so a test holding either guard takes more of them without waiting: a test with
//! two services never waits for an [`Alone`] queued between them.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::ThreadId;

use tokio::sync::Notify;

#[derive(Default)]
struct State {
    /// Services running, by the test (thread) that started them.
    sharing: HashMap<ThreadId, usize>,
    /// The test that has the recorder to itself.
    alone: Option<ThreadId>,
    /// Tests waiting for it: new tests' services wait behind them.
    waiting: usize,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);
static CHANGED: Notify = Notify::const_new();

fn with_state<T>(f: impl FnOnce(&mut State) -> T) -> T {
    let mut guard: MutexGuard<'_, Option<State>> =
        STATE.lock().unwrap_or_else(PoisonError::into_inner);
    f(guard.get_or_insert_with(State::default))
}

/// Held by an in-process service while it runs.
pub struct Sharing {
    test: ThreadId,
}

impl Drop for Sharing {
    fn drop(&mut self) {
        with_state(|state| {
            if let Some(count) = state.sharing.get_mut(&self.test) {
                *count -= 1;
                if *count == 0 {
                    state.sharing.remove(&self.test);
                }
            }
        });
        CHANGED.notify_waiters();
    }
}

/// Waits until this test may start a service: at once when it already runs one or has the
/// recorder to itself, otherwise while no test has or waits for the recorder to itself.
pub async fn share() -> Sharing {
    let test = std::thread::current().id();
    loop {
        let changed = CHANGED.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let shared = with_state(|state| {
            let own = state.alone == Some(test) || state.sharing.contains_key(&test);
            let free = state.alone.is_none() && state.waiting == 0;
            if own || free {
                *state.sharing.entry(test).or_default() += 1;
            }
            own || free
        });
        if shared {
            return Sharing { test };
        }
        changed.await;
    }
}

/// The recorder to this test alone, until dropped.
pub struct Alone {
    test: ThreadId,
}

impl Drop for Alone {
    fn drop(&mut self) {
        with_state(|state| {
            if state.alone == Some(self.test) {
                state.alone = None;
            }
        });
        CHANGED.notify_waiters();
    }
}

/// Waits until no other test runs a service and no other has the recorder to itself.
pub async fn alone() -> Alone {
    let test = std::thread::current().id();
    with_state(|state| state.waiting += 1);
    loop {
        let changed = CHANGED.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let taken = with_state(|state| {
            let others = state.sharing.keys().any(|t| *t != test);
            let free = state.alone.is_none() && !others;
            if free {
                state.alone = Some(test);
                state.waiting -= 1;
            }
            free
        });
        if taken {
            return Alone { test };
        }
        changed.await;
    }
}

/// The recorder's exposition now, as `/metrics` would show it.
pub fn rendered() -> String {
    regnotify::admin::install_metrics()
        .expect("the metrics recorder")
        .render()
}
