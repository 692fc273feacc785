//! What the loop reports as it goes: each partition's ages (the time-based lag and the stall
//! warnings, `admin.event_stall_after`) and its window of pending offsets. It changes nothing
//! but the ages' warned marks.

use tokio::time::Instant;

use super::Dispatcher;
use crate::observe;

impl Dispatcher {
    /// Reports each partition's ages and warns, once each, of events unfinished for longer than
    /// `admin.event_stall_after`.
    pub(super) fn observe_ages(&mut self) {
        let now = Instant::now().into_std();
        let wall_ms = chrono::Utc::now().timestamp_millis();
        observe::partition_ages(&self.ages.sample(now, wall_ms));
        for stalled in self.ages.stalled(now, self.event_stall_after) {
            observe::event_stalled(&stalled, self.event_stall_after);
        }
    }

    pub(super) fn observe_windows(&self, partitions: impl Iterator<Item = i32>) {
        for partition in partitions {
            observe::pending(partition, self.core.book().window_len(partition));
        }
    }
}
