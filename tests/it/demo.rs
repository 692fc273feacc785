//! `regnotify demo` end to end, as a user runs it: the real binary, a few hundred sample events,
//! and its JSON summary read back. The demo itself checks the outputs (it reads the result and
//! dead-letter topics back and asks the group coordinator for its committed offsets); this test
//! holds it to those checks and to the sample mix it is meant to produce. A short `--soak` run
//! does the same for the mode that checks the outputs while it runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use serde_json::Value;

const EVENTS: u64 = 400;

/// Runs `regnotify` with `args` (no `REGNOTIFY_` variable of the caller's leaking in), asserts it
/// succeeded and returns the JSON object it printed last.
fn run_json(args: &[&str]) -> Value {
    let mut command = Command::new(env!("CARGO_BIN_EXE_regnotify"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("REGNOTIFY_") {
            command.env_remove(name);
        }
    }
    let output = command.args(args).output().expect("regnotify demo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo exited with {}\nstdout: {stdout}\nstderr: {stderr}",
        output.status
    );
    stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("no JSON summary in: {stdout}"))
}

#[test]
fn a_small_demo_brings_every_event_to_its_outcome_and_commits_every_offset() {
    let summary = run_json(&["demo", "--events", &EVENTS.to_string(), "--json"]);
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

/// The soak mode reads the outputs while the run goes on instead of back at the end; a short one
/// keeps it from rotting (the documented run is a million events, see BENCHMARKS.md).
#[test]
fn a_short_soak_accounts_every_input_offset_as_it_goes() {
    const SOAK_EVENTS: u64 = 3_000;
    let report = run_json(&[
        "demo",
        "--events",
        &SOAK_EVENTS.to_string(),
        "--soak",
        "--report-every",
        "1",
        "--json",
    ]);
    let count = |pointer: &str| {
        report
            .pointer(pointer)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("{pointer} missing in {report}"))
    };

    assert_eq!(report["all_terminal"], true, "{report}");
    assert_eq!(report["all_committed"], true, "{report}");
    assert_eq!(report["merchant_order_kept"], true, "{report}");
    // Every input offset was entered, with the outputs its sample kind calls for: one outcome per
    // decodable event, one dead letter per poison, invalid or refused one (4 in 100).
    let poison = SOAK_EVENTS / 100;
    assert_eq!(count("/ledger/produced"), SOAK_EVENTS);
    assert_eq!(count("/ledger/expected_outcomes"), SOAK_EVENTS - poison);
    assert_eq!(count("/ledger/outcome_records"), SOAK_EVENTS - poison);
    assert_eq!(
        count("/ledger/expected_dead_letters"),
        4 * SOAK_EVENTS / 100
    );
    assert_eq!(count("/ledger/dead_letter_records"), 4 * SOAK_EVENTS / 100);
    for field in [
        "missing_outcomes",
        "unexpected_outcomes",
        "repeated_outcomes",
        "missing_dead_letters",
        "unexpected_dead_letters",
        "repeated_dead_letters",
        "foreign",
        "undecodable",
    ] {
        assert_eq!(count(&format!("/ledger/{field}")), 0, "{field}: {report}");
    }
    assert_eq!(
        count("/notified") + count("/rejected") + count("/dead_lettered") + count("/poison"),
        SOAK_EVENTS
    );
    // Throughput over time: one interval a second, the last one ending with every event terminal.
    let intervals = report["intervals"].as_array().expect("intervals");
    assert!(!intervals.is_empty(), "{report}");
    assert_eq!(
        intervals.last().and_then(|last| last["terminal"].as_u64()),
        Some(SOAK_EVENTS)
    );
    assert!(
        intervals
            .iter()
            .any(|interval| interval["events_per_second"].as_f64() > Some(0.0))
    );
    // What the process held at the end.
    assert!(count("/at_end/peak_rss_bytes") >= count("/at_end/rss_bytes"));
    assert!(count("/at_end/rss_bytes") > 0);
    assert!(count("/at_end/open_fds") >= 3);
    assert!(count("/at_end/threads") >= 2);
}
