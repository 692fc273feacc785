//! What `regnotify demo` is asked to do ([`DemoOptions`]), and the command line that asks for it
//! again (the bench starts each scenario as its own process).
//!
//! Owns the options only: never starts anything, never reads the environment.

use std::time::Duration;

use crate::config::Ordering;

/// What the demo is asked to do.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub events: usize,
    pub latency: Duration,
    pub max_in_flight: Option<usize>,
    pub ordering: Option<Ordering>,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Record a span per event and per attempt and export them over OTLP/HTTP to a receiver in
    /// the demo's process (what tracing costs).
    pub traces: bool,
    /// `processing.exactly_once = true`: outputs and offsets in Kafka transactions.
    pub exactly_once: bool,
}

impl DemoOptions {
    /// The `regnotify demo` arguments that ask for this run (the bench starts each scenario as
    /// its own process, so that its peak RSS is its own).
    pub(crate) fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "--events".to_string(),
            self.events.to_string(),
            "--latency-ms".to_string(),
            self.latency.as_millis().to_string(),
        ];
        if let Some(max) = self.max_in_flight {
            args.extend(["--max-in-flight".to_string(), max.to_string()]);
        }
        if let Some(ordering) = self.ordering {
            let name = match ordering {
                Ordering::Key => "key",
                Ordering::Partition => "partition",
            };
            args.extend(["--ordering".to_string(), name.to_string()]);
        }
        if self.traces {
            args.push("--traces".to_string());
        }
        if self.exactly_once {
            args.push("--exactly-once".to_string());
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_become_the_demo_command_line() {
        let options = DemoOptions {
            events: 500,
            latency: Duration::from_millis(50),
            max_in_flight: Some(64),
            ordering: Some(Ordering::Partition),
            exactly_once: true,
            progress: false,
            traces: true,
        };
        assert_eq!(
            options.to_args().join(" "),
            "--events 500 --latency-ms 50 --max-in-flight 64 --ordering partition --traces \
             --exactly-once"
        );
    }
}
