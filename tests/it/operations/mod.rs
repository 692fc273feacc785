//! What an SRE relies on: `/metrics` counts what happened and parses as Prometheus text,
//! `/readyz` and `/healthz` answer as specified, a Kafka error that persists is counted, named by
//! `/readyz` and logged without a flood, and no key or signature ever reaches a log line, a metric
//! or an error message — checked on the real `regnotify run` binary.
//!
//! Split by concern: the counts `/metrics` reports ([`metrics`]), what no log, metric or error
//! may carry ([`secrets`]), readiness and the time-based health ([`readiness`]), the real binary
//! these run against ([`binary`]), and where the dashboard, the alert rules and the README name
//! a metric ([`metric_uses`]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

mod binary;
mod metric_uses;
mod metrics;
mod readiness;
mod secrets;

const WAIT: Duration = Duration::from_secs(60);

/// Parses exposition text with the reference Python parser when it is installed (required in
/// CI), else with a strict line check of our own; returns `series → value`.
fn parse_exposition(text: &str) -> BTreeMap<String, f64> {
    let Some(output) = reference_parser(text, &[]) else {
        return own_parse(text);
    };
    output
        .lines()
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Runs the reference parser (tests/external_prometheus/parse.py, prometheus-client) on `text`
/// with `args` and returns what it printed; fails on text it refuses. `None` when
/// prometheus-client is not installed, which fails instead where CI requires it.
fn reference_parser(text: &str, args: &[&str]) -> Option<String> {
    let external = Command::new("python3")
        .arg("tests/external_prometheus/parse.py")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(text.as_bytes())?;
            child.wait_with_output()
        });
    let parser_missing = match &external {
        Ok(output) => String::from_utf8_lossy(&output.stderr).contains("No module named"),
        Err(_) => true,
    };
    if parser_missing {
        assert!(
            std::env::var("REGNOTIFY_REQUIRE_EXTERNAL").is_err(),
            "prometheus-client is required (pip install -r tests/external_prometheus/requirements.txt)"
        );
        eprintln!("skipped the reference parser: prometheus-client not installed");
        return None;
    }
    let output = external.unwrap();
    assert!(
        output.status.success(),
        "not valid exposition text: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(String::from_utf8(output.stdout).unwrap())
}

fn own_parse(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            assert!(
                comment.starts_with("HELP ") || comment.starts_with("TYPE "),
                "{line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
        let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        assert!(labels.ends_with('}'), "{line}");
        let mut sorted: Vec<&str> = labels
            .trim_end_matches('}')
            .split(',')
            .filter(|l| !l.is_empty())
            .collect();
        sorted.sort();
        samples.insert(format!("{name}{{{}}}", sorted.join(",")), value);
    }
    samples
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}
