//! The whole service under deterministic simulation (issue 19).
//!
//! The real [`Dispatcher`], workers, circuit breakers, parking, partition book, scheduler, pause
//! plan and commit path run against a simulated Kafka group (records delivered as the pause plan
//! and the flow counts allow, rebalances eager and cooperative, partitions lost, partitions held
//! by other members for a while, commits refused, members that crash and start again from the
//! committed offsets and their notes), a simulated Alipay+ (latency, outages of one MPP, refusals
//! about us, events refused about themselves, rejections, throttling), in half the runs a
//! `max_requests_per_second` for the group that the member's share of paces its calls, and,
//! under exactly-once, a simulated transaction writer speaking the
//! dispatcher's real protocol (`PrepareCommit`, `TransactionCommitted`; transactions that abort).
//! Time is tokio's paused clock on a single-threaded runtime, and every random choice comes from
//! one seed, so a run is repeated exactly by its seed. That needs every `tokio::select!` the
//! run goes through to be `biased`: unbiased, tokio polls the branches in an order drawn from a
//! source of its own, so timers and wake-ups registered in another order woke tasks due at one
//! instant in another order, and about 2 % of seeds took another course when run again.
//!
//! Checked at every commit (safety): no position passes, and no note names, an offset whose
//! outputs were not acknowledged (or, exactly-once, committed). Checked throughout: at most one
//! call in flight per merchant, under a send-rate limit no second (and no ten seconds) with more
//! calls to one MPP than the member's highest share of the limit in it allows, and no commit of
//! a partition the member does not own. Checked at the
//! end: exactly-once, exactly one outcome per record; at-least-once, repeated outcomes within
//! `max_in_flight` per crash or rebalance.
//! Liveness: once the faults end (at [`FAULTS_END`]) every record reaches an outcome and every
//! partition's committed offset reaches its end within [`LIVENESS_BOUND`] of simulated time.
//!
//! The default `cargo test` runs [`DEFAULT_SEEDS`] seeds. Longer runs and one seed:
//!
//! ```text
//! REGNOTIFY_SIM_SEEDS=100000 cargo test --release --lib simulation -- --nocapture
//! REGNOTIFY_SIM_SEED=1234 cargo test --lib simulation -- --nocapture
//! REGNOTIFY_SIM_DEBUG=1 REGNOTIFY_SIM_SEED=1234 cargo test --lib simulation -- --nocapture
//! ```
//!
//! (the last prints every output, commit, transaction, revoke and assignment with its time).
//!
//! Not simulated: librdkafka itself (the consumer thread's polling, the real transaction writer
//! and its producer; those are covered by the integration tests against the mock cluster and a
//! real broker), and the calls of other members of the group (a rebalance here gives the revoked
//! partitions back to this member, at once or after a while, after their commit, as the next
//! owner would find them).
//!
//! Here: the seeds' tests and their totals. The parts: `scenario` (what a seed decides),
//! `world` (what Kafka and Alipay+ hold, and the checks as it changes), the simulated actors
//! (`alipay`, `kafka`, `writer`), and `run` (the course of one seed, its members, the checks at
//! the end).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod alipay;
mod kafka;
mod run;
mod scenario;
mod world;
mod writer;

use std::time::Duration;

use run::Run;

const DEFAULT_SEEDS: u64 = 1_000;
const TOPIC: &str = "in";
const PARTITIONS: i32 = 3;
/// Every fault window ends by then, counted from the start of a run.
const FAULTS_END: Duration = Duration::from_secs(60);
/// Once the faults end, everything must be done within this much simulated time.
const LIVENESS_BOUND: Duration = Duration::from_secs(600);
/// The simulated consumer's poll: records are delivered, and the world looked at, this often.
const TICK: Duration = Duration::from_millis(5);
/// How many records of one partition one poll delivers at most.
const FETCH_BATCH: usize = 8;

#[test]
fn the_whole_service_finishes_every_event_under_mixed_faults() {
    let (first, count) = match std::env::var("REGNOTIFY_SIM_SEED") {
        Ok(seed) => (seed.parse().expect("REGNOTIFY_SIM_SEED is a number"), 1),
        Err(_) => (
            0,
            std::env::var("REGNOTIFY_SIM_SEEDS")
                .map(|n| n.parse().expect("REGNOTIFY_SIM_SEEDS is a number"))
                .unwrap_or(DEFAULT_SEEDS),
        ),
    };
    let mut failures = Vec::new();
    let mut totals = Totals::default();
    for seed in first..first + count {
        match run_seed(seed) {
            Ok(report) => totals.add(&report),
            Err(failure) => {
                eprintln!("seed {seed} FAILED: {failure}");
                failures.push(seed);
                if failures.len() >= 5 {
                    break;
                }
            }
        }
    }
    eprintln!(
        "simulation: {count} seeds from {first}, {} failed; {} events, {} exactly-once runs, {} \
         crashes, {} rebalances, {} calls, {} repeated outcomes, {:.0} simulated minutes; {} \
         runs under a send-rate limit, {} of them at their share in some second",
        failures.len(),
        totals.events,
        totals.exactly_once,
        totals.crashes,
        totals.rebalances,
        totals.calls,
        totals.repeats,
        totals.simulated.as_secs_f64() / 60.0,
        totals.limited,
        totals.at_share
    );
    // The limit's check is not idle: in some runs the member sends all its share.
    assert!(
        count < 100 || totals.at_share > 0,
        "no run under a send-rate limit sent its whole share in any second"
    );
    assert!(
        failures.is_empty(),
        "failing seeds (reproduce one with REGNOTIFY_SIM_SEED=<seed> cargo test --lib \
         simulation -- --nocapture): {failures:?}"
    );
}

/// Seeds 21, 93, 128, 146 and 183 took another course now and then when run again while the
/// `select!`s were unbiased.
#[test]
fn every_seed_repeats_exactly() {
    let differ: Vec<u64> = (0..200)
        .filter(|&seed| {
            let first = run_seed(seed).map(|report| report.trace);
            let again = run_seed(seed).map(|report| report.trace);
            first != again
        })
        .collect();
    assert!(
        differ.is_empty(),
        "seeds that took another course when run again: {differ:?}"
    );
}

/// What keeps a run repeatable: no `tokio::select!` in the pipeline polls its branches in a
/// random order.
#[test]
fn every_select_in_the_pipeline_is_biased() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/pipeline");
    let mut files = vec![root];
    let mut unbiased = Vec::new();
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(
                std::fs::read_dir(&path)
                    .unwrap()
                    .map(|entry| entry.unwrap().path()),
            );
            continue;
        }
        if path.extension().is_none_or(|extension| extension != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (at, line) in lines.iter().enumerate() {
            // A `select!` opens a block at the end of its line (this test's own text does not).
            if !line.trim_end().ends_with("select! {") || line.trim_start().starts_with("//") {
                continue;
            }
            // `biased;` opens the block, after at most a comment.
            let biased = lines[at + 1..]
                .iter()
                .map(|line| line.trim())
                .find(|line| !line.starts_with("//"))
                .is_some_and(|line| line == "biased;");
            if !biased {
                unbiased.push(format!("{}:{}", path.display(), at + 1));
            }
        }
    }
    assert!(
        unbiased.is_empty(),
        "unbiased tokio::select! (add `biased;`): {unbiased:?}"
    );
}

#[derive(Debug, Default)]
struct Totals {
    events: usize,
    exactly_once: usize,
    crashes: usize,
    rebalances: usize,
    calls: u64,
    /// Runs under a send-rate limit, and those in which some second held the member's whole
    /// share of it.
    limited: usize,
    at_share: usize,
    repeats: usize,
    simulated: Duration,
}

impl Totals {
    fn add(&mut self, report: &Report) {
        self.events += report.events;
        self.exactly_once += usize::from(report.exactly_once);
        self.crashes += report.crashes;
        self.rebalances += report.rebalances;
        self.calls += report.calls;
        if let Some((share, busiest)) = report.limit {
            self.limited += 1;
            self.at_share += usize::from(busiest >= (share.floor() as usize).max(1));
        }
        self.repeats += report.repeats;
        self.simulated += report.simulated;
    }
}

/// What one run did.
#[derive(Debug)]
struct Report {
    events: usize,
    exactly_once: bool,
    crashes: usize,
    rebalances: usize,
    calls: u64,
    /// Under a send-rate limit: the member's share of it, and the most calls it made to one MPP
    /// within a second.
    limit: Option<(f64, usize)>,
    repeats: usize,
    simulated: Duration,
    /// A digest of the run's course: the order of calls and commits.
    trace: u64,
}

fn run_seed(seed: u64) -> Result<Report, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(Run::new(seed).run())
}
