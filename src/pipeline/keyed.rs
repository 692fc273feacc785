//! Key-ordered dispatch: which piece of work may start now.
//!
//! Work items that share a key run one at a time, in the order they were pushed; items of
//! different keys run concurrently. This is how SPEC section 5 orders notifications: the key is
//! the `referenceMerchantId` under `ordering = "key"`, and the partition under
//! `ordering = "partition"` (one event in flight per partition, in offset order) — the scheduler
//! does not know the difference, the caller just picks the key.
//!
//! It owns only the per-key order. It never runs work, never waits, and bounds nothing: the
//! caller limits how much it pushes (`max_in_flight`, `max_pending_per_partition`).

use crate::pipeline::invariant;
use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;

/// Per-key FIFO queues in front of "at most one running item per key".
///
/// A key is *busy* from the moment an item of it is handed to the caller (by [`push`] or
/// [`finish`]) until the caller reports that item finished and no other item of the key waits.
/// The caller must start every item it is handed, or hold it: the key stays busy either way.
///
/// [`push`]: KeyedQueue::push
/// [`finish`]: KeyedQueue::finish
pub(crate) struct KeyedQueue<K, T> {
    /// Busy keys, each with the items waiting behind the one that runs. A key is present exactly
    /// while it is busy, so an idle key costs no memory.
    busy: HashMap<K, VecDeque<T>>,
    /// Items waiting in all queues, kept so `queued_len` is O(1).
    queued: usize,
}

impl<K, T> fmt::Debug for KeyedQueue<K, T> {
    // Keys and items can be large or hold merchant data; the counts are what helps debugging.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("KeyedQueue")
            .field("busy_keys", &self.busy.len())
            .field("queued", &self.queued)
            .finish()
    }
}

impl<K, T> Default for KeyedQueue<K, T> {
    fn default() -> Self {
        Self {
            busy: HashMap::new(),
            queued: 0,
        }
    }
}

impl<K: Hash + Eq, T> KeyedQueue<K, T> {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Offers `item` for `key`. Returns it back when the key was idle — the caller starts it now
    /// and the key becomes busy — or queues it behind the key's earlier items and returns `None`.
    #[must_use = "an item handed back must be started, or its key stays busy forever"]
    pub(crate) fn push(&mut self, key: K, item: T) -> Option<T> {
        match self.busy.get_mut(&key) {
            Some(waiting) => {
                waiting.push_back(item);
                self.queued += 1;
                None
            }
            None => {
                self.busy.insert(key, VecDeque::new());
                Some(item)
            }
        }
    }

    /// Reports that the running item of `key` is done. Returns the key's next item, which the
    /// caller starts now (the key stays busy), or `None` when nothing waits and the key is idle.
    ///
    /// Finishing an idle key is a no-op returning `None`.
    #[must_use = "an item handed back must be started, or its key stays busy forever"]
    pub(crate) fn finish<Q>(&mut self, key: &Q) -> Option<T>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let waiting = self.busy.get_mut(key)?;
        match waiting.pop_front() {
            Some(next) => {
                invariant::take(&mut self.queued, 1, "keyed_queued");
                Some(next)
            }
            None => {
                self.busy.remove(key);
                None
            }
        }
    }

    /// Drops waiting (not yet started) items for which `keep` returns false, and returns how many
    /// were dropped. Running items are unaffected: their keys stay busy until finished.
    ///
    /// Used on partition revoke: waiting events of a lost partition must not start, and are
    /// re-consumed by the new owner because their offsets were never committed.
    pub(crate) fn retain_queued(&mut self, mut keep: impl FnMut(&K, &T) -> bool) -> usize {
        let before = self.queued;
        for (key, waiting) in &mut self.busy {
            waiting.retain(|item| keep(key, item));
        }
        self.queued = self.busy.values().map(VecDeque::len).sum();
        before - self.queued
    }

    /// Items waiting behind a running item of their key.
    pub(crate) fn queued_len(&self) -> usize {
        self.queued
    }

    /// Items waiting behind the running item of `key`.
    pub(crate) fn queued_of<Q>(&self, key: &Q) -> usize
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.busy.get(key).map_or(0, VecDeque::len)
    }

    /// Keys with an item handed out and not yet finished (the items running now).
    #[cfg(test)]
    pub(crate) fn active_keys(&self) -> usize {
        self.busy.len()
    }

    /// True when `key` has an item handed out and not yet finished.
    pub(crate) fn is_busy<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.busy.contains_key(key)
    }

    /// True when nothing runs and nothing waits.
    #[cfg(test)]
    pub(crate) fn is_idle(&self) -> bool {
        self.busy.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn same_key_waits_other_keys_start() {
        let mut queue = KeyedQueue::new();
        assert_eq!(queue.push("merchant-a", 1), Some(1));
        assert_eq!(queue.push("merchant-a", 2), None);
        assert_eq!(queue.push("merchant-b", 3), Some(3));
        assert_eq!(queue.push("merchant-a", 4), None);
        assert_eq!(queue.queued_len(), 2);
        assert_eq!(queue.active_keys(), 2);

        assert_eq!(queue.finish("merchant-a"), Some(2));
        assert_eq!(queue.finish("merchant-b"), None);
        assert!(!queue.is_busy("merchant-b"));
        assert_eq!(queue.finish("merchant-a"), Some(4));
        assert_eq!(queue.finish("merchant-a"), None);
        assert!(queue.is_idle());
        assert_eq!(queue.queued_len(), 0);
    }

    #[test]
    fn finishing_an_idle_key_is_a_no_op() {
        let mut queue: KeyedQueue<String, u32> = KeyedQueue::new();
        assert_eq!(queue.finish("nobody"), None);
        assert!(queue.is_idle());
    }

    #[test]
    fn partition_ordering_is_a_partition_key() {
        // ordering = "partition": one event in flight per partition, in offset order.
        let mut queue = KeyedQueue::new();
        assert_eq!(queue.push(0_i32, 100_i64), Some(100));
        assert_eq!(queue.push(0, 101), None);
        assert_eq!(queue.push(1, 7), Some(7));
        assert_eq!(queue.finish(&0), Some(101));
    }

    #[test]
    fn retain_queued_drops_only_waiting_items() {
        let mut queue = KeyedQueue::new();
        // Items are (partition, offset); the key is the merchant.
        assert_eq!(queue.push("a", (0, 1)), Some((0, 1)));
        assert_eq!(queue.push("a", (1, 5)), None);
        assert_eq!(queue.push("a", (0, 2)), None);
        assert_eq!(queue.push("b", (1, 6)), Some((1, 6)));
        assert_eq!(queue.push("b", (1, 7)), None);

        let dropped = queue.retain_queued(|_, &(partition, _)| partition != 1);
        assert_eq!(dropped, 2);
        assert_eq!(queue.queued_len(), 1);
        // The running item of the revoked partition still holds its key until it finishes.
        assert!(queue.is_busy("b"));
        assert_eq!(queue.finish("b"), None);
        assert_eq!(queue.finish("a"), Some((0, 2)));
    }

    #[derive(Debug, Clone)]
    enum Step {
        Push(u8),
        FinishOneRunning(prop::sample::Index),
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec(
            prop_oneof![
                (0u8..5).prop_map(Step::Push),
                any::<prop::sample::Index>().prop_map(Step::FinishOneRunning),
            ],
            0..300,
        )
    }

    proptest! {
        #[test]
        fn each_key_runs_its_items_one_at_a_time_in_push_order(steps in steps()) {
            let mut queue = KeyedQueue::new();
            // Items are (key, sequence number of the push), so order can be checked per key.
            let mut pushed: Vec<(u8, usize)> = Vec::new();
            let mut running: HashMap<u8, usize> = HashMap::new();
            let mut started: Vec<(u8, usize)> = Vec::new();

            let start = |item: (u8, usize), running: &mut HashMap<u8, usize>,
                             started: &mut Vec<(u8, usize)>| -> Result<(), TestCaseError> {
                let (key, sequence) = item;
                prop_assert!(
                    running.insert(key, sequence).is_none(),
                    "two items of key {} at once", key
                );
                started.push(item);
                Ok(())
            };

            for step in steps {
                match step {
                    Step::Push(key) => {
                        let item = (key, pushed.len());
                        pushed.push(item);
                        if let Some(item) = queue.push(key, item) {
                            prop_assert_eq!(item, (key, pushed.len() - 1));
                            start(item, &mut running, &mut started)?;
                        }
                    }
                    Step::FinishOneRunning(pick) => {
                        let mut keys: Vec<u8> = running.keys().copied().collect();
                        if keys.is_empty() {
                            continue;
                        }
                        keys.sort_unstable();
                        let key = *pick.get(&keys);
                        running.remove(&key);
                        if let Some(next) = queue.finish(&key) {
                            start(next, &mut running, &mut started)?;
                        }
                    }
                }
                prop_assert_eq!(queue.active_keys(), running.len());
                prop_assert_eq!(queue.queued_len(), pushed.len() - started.len());
            }

            // Drain: finishing whatever runs must eventually start every pushed item.
            while let Some(&key) = running.keys().next() {
                running.remove(&key);
                if let Some(next) = queue.finish(&key) {
                    start(next, &mut running, &mut started)?;
                }
            }
            prop_assert!(queue.is_idle());
            prop_assert_eq!(queue.queued_len(), 0);

            let unique: HashSet<(u8, usize)> = started.iter().copied().collect();
            prop_assert_eq!(unique.len(), started.len(), "an item started twice");
            prop_assert_eq!(started.len(), pushed.len(), "an item never started");
            for key in 0u8..5 {
                let order: Vec<usize> = started
                    .iter()
                    .filter(|(started_key, _)| *started_key == key)
                    .map(|&(_, sequence)| sequence)
                    .collect();
                prop_assert!(order.windows(2).all(|pair| pair[0] < pair[1]),
                    "key {} started out of push order: {:?}", key, order);
            }
        }
    }
}
