//! `regnotify demo` end to end, as a user runs it: the real binary, a few hundred sample events,
//! and its JSON summary read back. The demo itself checks the outputs (it reads the result and
//! dead-letter topics back and asks the group coordinator for its committed offsets); this test
//! holds it to those checks and to the sample mix it is meant to produce.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use serde_json::Value;

const EVENTS: u64 = 400;

#[test]
fn a_small_demo_brings_every_event_to_its_outcome_and_commits_every_offset() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_regnotify"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("REGNOTIFY_") {
            command.env_remove(name);
        }
    }
    let output = command
        .args(["demo", "--events", &EVENTS.to_string(), "--json"])
        .output()
        .expect("regnotify demo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo exited with {}\nstdout: {stdout}\nstderr: {stderr}",
        output.status
    );
    let summary: Value = stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("no JSON summary in: {stdout}"));
    let count = |field: &str| {
        summary[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{field} missing in {summary}"))
    };

    assert_eq!(summary["all_terminal"], true, "{summary}");
    assert_eq!(summary["all_committed"], true, "{summary}");
    assert_eq!(summary["merchant_order_kept"], true, "{summary}");
    assert_eq!(count("events"), EVENTS);
    // Every event ended exactly one way, and Kafka holds what the counters say.
    let (notified, rejected, dead_lettered, poison) = (
        count("notified"),
        count("rejected"),
        count("dead_lettered"),
        count("poison"),
    );
    assert_eq!(
        notified + rejected + dead_lettered + poison,
        EVENTS,
        "{summary}"
    );
    assert_eq!(count("result_records"), EVENTS - poison, "{summary}");
    assert_eq!(count("dlq_records"), dead_lettered + poison, "{summary}");
    // The sample mix: 1 in 100 of each failure kind, the rest notified.
    assert_eq!(poison, EVENTS / 100);
    assert_eq!(rejected, EVENTS / 100);
    assert_eq!(dead_lettered, 3 * EVENTS / 100);
    assert_eq!(notified, 95 * EVENTS / 100);
    let by_reason = &summary["dead_letters_by_reason"];
    assert_eq!(by_reason["DECODE_ERROR"], poison);
    assert_eq!(by_reason["INVALID_EVENT"], 2 * EVENTS / 100);
    assert_eq!(by_reason["REQUEST_REFUSED"], EVENTS / 100);
    // The U-then-S samples were retried once each and then notified.
    assert_eq!(count("retries"), 2 * EVENTS / 100);
    assert!(summary["peak_rss_bytes"].as_u64().is_some_and(|b| b > 0));
}
