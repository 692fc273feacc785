//! What this process has used so far: CPU time and peak resident memory, read from Linux's
//! `/proc/self`. The demo and the bench report them beside throughput and latency.
//!
//! Read-only and cheap (one small file each); on a system without `/proc` every figure is `None`
//! and the reports say so, never guess.

use std::time::Duration;

/// `USER_HZ`: the unit of the CPU times in `/proc/self/stat`. Linux fixes it at 100 for user
/// space on every architecture, whatever the kernel's own tick rate.
const TICKS_PER_SECOND: u64 = 100;

/// User plus system CPU time of every thread of this process, 10 ms resolution.
pub(crate) fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    cpu_time_from_stat(&stat)
}

/// Peak resident set size (`VmHWM`), in bytes.
pub(crate) fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    peak_rss_from_status(&status)
}

/// Cores this process may use (affinity and cgroup quota), at least 1.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn cpu_time_from_stat(stat: &str) -> Option<Duration> {
    // The command name (field 2) is in parentheses and may hold spaces or ')': fields are counted
    // from the last ')'. utime and stime are fields 14 and 15, the 12th and 13th after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_ascii_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    let ticks = user.checked_add(system)?;
    Some(Duration::from_millis(
        ticks.checked_mul(1000 / TICKS_PER_SECOND)?,
    ))
}

fn peak_rss_from_status(status: &str) -> Option<u64> {
    status_number(status, "VmHWM")?.checked_mul(1024)
}

/// The number in the `/proc/self/status` line `name:` (a `kB` unit is dropped: sizes are in KiB).
pub(crate) fn status_number(status: &str, name: &str) -> Option<u64> {
    let value = status
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))?;
    value.trim().trim_end_matches("kB").trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_the_command_name() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194304 3000 0 0 0 250 75 0 0 20 0 9 0";
        assert_eq!(cpu_time_from_stat(stat), Some(Duration::from_millis(3_250)));
        assert_eq!(cpu_time_from_stat("4242 (x) S 1"), None);
    }

    #[test]
    fn peak_rss_is_read_from_vm_hwm() {
        let status =
            "Name:\tregnotify\nVmPeak:\t  900000 kB\nVmHWM:\t   52048 kB\nVmRSS:\t 40000 kB\n";
        assert_eq!(peak_rss_from_status(status), Some(52_048 * 1024));
        assert_eq!(peak_rss_from_status("Name:\tx\n"), None);
    }

    #[test]
    fn status_numbers_are_read_by_their_exact_name() {
        let status = "Name:\tregnotify\nVmHWM:\t   52048 kB\nVmRSS:\t   40000 kB\nThreads:\t23\n";
        assert_eq!(status_number(status, "VmRSS"), Some(40_000));
        assert_eq!(status_number(status, "VmHWM"), Some(52_048));
        assert_eq!(status_number(status, "Threads"), Some(23));
        assert_eq!(status_number(status, "VmSwap"), None);
        // A name that only starts another's is not it.
        assert_eq!(status_number("VmRSSx:\t5 kB\n", "VmRSS"), None);
        assert_eq!(status_number("VmRSS:\tlots\n", "VmRSS"), None);
    }

    #[test]
    fn this_process_reports_its_own_usage() {
        assert!(cpu_time().is_some());
        assert!(peak_rss_bytes().is_some_and(|bytes| bytes > 0));
        assert!(cores() >= 1);
    }
}
