//! What the `regnotify` binary prints for each subcommand's result, and the exit code that goes
//! with it: demo and soak summaries (a table or one JSON object), the bench report, signed
//! content, key files, configuration checks, the tools' reports. A module of `main.rs`, not of
//! the library.
//!
//! Prints only: it never calls into the library to do work (`main.rs` does), and decides nothing
//! beyond the exit code a result asks for.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use regnotify::alipayplus::{MppCheck, SignedRequest};
use regnotify::bench::BenchReport;
use regnotify::bench::measure::Measurement;
use regnotify::config::Settings;
use regnotify::demo::DemoSummary;
use regnotify::demo::soak::SoakReport;
use regnotify::keys::KeygenFiles;
use regnotify::tools::{ProduceReport, ReplayReport, ReplayedRecord};

/// `demo --soak`: the report as one JSON object or a table; failure when not every event reached
/// its expected outputs and commit.
pub(crate) fn soak(report: &SoakReport, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!("regnotify soak summary\n{}", report.to_table());
    }
    Ok(if report.succeeded() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "error: not every event reached its expected outputs and commit (see \
             the summary)"
        );
        ExitCode::FAILURE
    })
}

/// `demo`: the summary as one JSON object or a table; failure when not every event reached its
/// terminal outcome and commit.
pub(crate) fn demo(summary: &DemoSummary, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string(summary)?);
    } else {
        println!("regnotify demo summary\n{}", summary.to_table());
    }
    Ok(if summary.succeeded() {
        ExitCode::SUCCESS
    } else {
        eprintln!("error: not every event reached its terminal outcome and commit");
        ExitCode::FAILURE
    })
}

/// `sign`: the signed content, byte for byte between two lines, and the `Signature` header.
pub(crate) fn signed(signed: &SignedRequest) {
    println!("signed content (between the lines, byte for byte):");
    println!("-----");
    println!("{}", String::from_utf8_lossy(&signed.signed_content));
    println!("-----");
    println!("Signature: {}", signed.signature_header);
}

/// `keygen`: where each key was written.
pub(crate) fn keygen(files: &KeygenFiles) {
    println!(
        "MPP private key (mode 0600):        {}",
        files.mpp_private_key.display()
    );
    println!(
        "MPP public key (give to Alipay+):   {}",
        files.mpp_public_key.display()
    );
    println!(
        "simulator private key (mode 0600):  {}",
        files.alipayplus_private_key.display()
    );
    println!(
        "simulator public key:               {}",
        files.alipayplus_public_key.display()
    );
}

/// `check-config`: one line per MPP and whether its keys load.
pub(crate) fn mpp_checks(checks: &[MppCheck]) {
    for check in checks {
        println!("{check}");
    }
}

/// `check-config`, once everything loaded: the redacted configuration, and that it is valid.
pub(crate) fn config_valid(settings: &Settings) {
    print!("{}", settings.to_redacted_toml());
    eprintln!("configuration is valid");
}

/// `produce`: the refused lines (on stderr), then what was sent; exit code 3 when a line was
/// refused.
pub(crate) fn produce(report: &ProduceReport) -> ExitCode {
    for refused in &report.refused {
        eprintln!("line {}: refused: {}", refused.line, refused.error);
    }
    if report.refused_count > report.refused.len() {
        eprintln!(
            "{} more refused lines not listed",
            report.refused_count - report.refused.len()
        );
    }
    println!("sent {}, refused {}", report.sent, report.refused_count);
    if report.refused_count == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    }
}

/// `measure`: the measurement as one JSON object.
pub(crate) fn measurement(measurement: &Measurement) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(measurement)?);
    Ok(())
}

/// `replay-dlq`: one line per dead letter as it is sent (or would be, in a dry run).
pub(crate) fn replayed(dry_run: bool) -> impl FnMut(&ReplayedRecord) {
    let verb = if dry_run { "would send" } else { "sent" };
    move |record: &ReplayedRecord| println!("{verb} {record}")
}

/// `replay-dlq`: what the run did.
pub(crate) fn replay(report: &ReplayReport) {
    println!(
        "{} {}, skipped {} of {} read (group {})",
        if report.dry_run {
            "would replay"
        } else {
            "replayed"
        },
        report.replayed,
        report.skipped,
        report.scanned,
        report.group,
    );
}

/// `bench`: the tables, then the JSON document (also written to `json_out`); failure when a
/// scenario failed.
pub(crate) fn bench(report: &BenchReport, json_out: Option<&Path>) -> anyhow::Result<ExitCode> {
    println!("{}", report.to_table());
    let json = serde_json::to_string_pretty(report)?;
    if let Some(path) = json_out {
        std::fs::write(path, &json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("{json}");
    Ok(if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
