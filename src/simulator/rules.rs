//! Fault injection for the simulator: rules that decide, per call, whether to answer something
//! other than success — a given result, an HTTP error, a hang, a bad signature, a garbled body,
//! or extra latency — matched by merchant-id prefix, probability, and "the first N calls per
//! registration request".
//!
//! Rules are plain data, loadable from a TOML file:
//!
//! ```toml
//! latency = "5ms"                      # added to every answer (optional)
//!
//! [[rules]]
//! merchant_prefix = "M-FLAKY-"
//! times = 1                            # first call per registrationRequestId only
//! fault = { kind = "result", status = "U", code = "UNKNOWN_EXCEPTION" }
//!
//! [[rules]]
//! probability = 0.05
//! fault = { kind = "http_status", status = 503 }
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What to answer instead of success.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// A signed answer with this result (`status` is `S`, `F` or `U`).
    Result {
        status: String,
        code: String,
        #[serde(default)]
        message: Option<String>,
    },
    /// This HTTP status with a short plain-text body and no signature.
    HttpStatus { status: u16 },
    /// Answer nothing for `duration` (longer than the client's timeout), then U.
    Hang {
        #[serde(default = "default_hang", with = "humantime_serde")]
        duration: Duration,
    },
    /// A success answer whose signature does not match.
    BadSignature,
    /// A success answer without `Signature` header.
    UnsignedSuccess,
    /// HTTP 200 with a signed body that is not JSON.
    Garbled,
    /// Wait `delay`, then go on with the next rules (and success if none matches).
    Latency {
        #[serde(with = "humantime_serde")]
        delay: Duration,
    },
}

impl Fault {
    /// A signed answer with this result (`status` is `S`, `F` or `U`) and no `resultMessage`.
    pub fn result(status: &str, code: &str) -> Fault {
        Fault::Result {
            status: status.into(),
            code: code.into(),
            message: None,
        }
    }

    /// A signed answer with this result and `resultMessage`.
    pub fn result_with_message(status: &str, code: &str, message: &str) -> Fault {
        Fault::Result {
            status: status.into(),
            code: code.into(),
            message: Some(message.into()),
        }
    }
}

fn default_hang() -> Duration {
    Duration::from_secs(60)
}

/// One rule: when it matches, its fault is applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// Only merchants whose `referenceMerchantId` starts with this (all when absent).
    #[serde(default)]
    pub merchant_prefix: Option<String>,
    /// Chance in `[0, 1]` that a matching call gets the fault (always when absent).
    #[serde(default)]
    pub probability: Option<f64>,
    /// Apply to the first `times` calls of each `registrationRequestId` only, then let later
    /// calls through (unlimited when absent).
    #[serde(default)]
    pub times: Option<u32>,
    pub fault: Fault,
}

impl FaultRule {
    /// A rule that always applies `fault` to merchants starting with `prefix`.
    pub fn for_prefix(prefix: impl Into<String>, fault: Fault) -> Self {
        FaultRule {
            merchant_prefix: Some(prefix.into()),
            probability: None,
            times: None,
            fault,
        }
    }

    /// Limits the rule to the first `times` calls per registration request.
    pub fn times(mut self, times: u32) -> Self {
        self.times = Some(times);
        self
    }
}

/// The contents of a rules file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorRules {
    #[serde(default, with = "humantime_serde")]
    pub(crate) latency: Option<Duration>,
    #[serde(default)]
    pub(crate) rules: Vec<FaultRule>,
}

/// Why a rules file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read rules file {path}: {error}")]
    Read {
        path: String,
        #[source]
        error: std::io::Error,
    },
    #[error("rules file {path}: {message}")]
    Invalid { path: String, message: String },
}

impl SimulatorRules {
    /// Parses rules from TOML text; `origin` only labels errors.
    pub(crate) fn from_toml(text: &str, origin: &str) -> Result<Self, RulesError> {
        let rules: SimulatorRules = toml::from_str(text).map_err(|e| RulesError::Invalid {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        for (index, rule) in rules.rules.iter().enumerate() {
            if let Some(p) = rule.probability
                && !(0.0..=1.0).contains(&p)
            {
                return Err(RulesError::Invalid {
                    path: origin.to_owned(),
                    message: format!("rules[{index}].probability must be within 0 and 1"),
                });
            }
            if let Fault::HttpStatus { status } = rule.fault
                && !(100..=999).contains(&status)
            {
                return Err(RulesError::Invalid {
                    path: origin.to_owned(),
                    message: format!("rules[{index}].fault.status {status} is not an HTTP status"),
                });
            }
        }
        Ok(rules)
    }

    /// Reads and parses a rules file.
    pub fn load(path: &Path) -> Result<Self, RulesError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| RulesError::Read {
            path: origin.clone(),
            error,
        })?;
        Self::from_toml(&text, &origin)
    }
}

/// Upper bound on remembered (rule, request id) counters; past it they are forgotten, which only
/// makes `times` rules fire again for very old requests.
const MAX_TRACKED_REQUESTS: usize = 100_000;

/// Per-request counters for `times` rules.
#[derive(Debug, Default)]
pub(crate) struct RuleCounters {
    applied: HashMap<(usize, String), u32>,
}

impl RuleCounters {
    /// The faults to apply to one call, in order: any number of `Latency` faults, then at most
    /// one answering fault.
    pub(crate) fn select(
        &mut self,
        rules: &[FaultRule],
        merchant_id: &str,
        request_id: &str,
        mut chance: impl FnMut() -> f64,
    ) -> Vec<Fault> {
        let mut selected = Vec::new();
        for (index, rule) in rules.iter().enumerate() {
            if let Some(prefix) = &rule.merchant_prefix
                && !merchant_id.starts_with(prefix.as_str())
            {
                continue;
            }
            let key = (index, request_id.to_owned());
            if let Some(times) = rule.times
                && self.applied.get(&key).copied().unwrap_or(0) >= times
            {
                continue;
            }
            if let Some(p) = rule.probability
                && chance() >= p
            {
                continue;
            }
            if rule.times.is_some() {
                if self.applied.len() >= MAX_TRACKED_REQUESTS {
                    self.applied.clear();
                }
                *self.applied.entry(key).or_insert(0) += 1;
            }
            let answers = !matches!(rule.fault, Fault::Latency { .. });
            selected.push(rule.fault.clone());
            if answers {
                break;
            }
        }
        selected
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rules_file_parses_every_fault_kind() {
        let text = r#"
            latency = "5ms"
            [[rules]]
            merchant_prefix = "M-U-"
            times = 1
            fault = { kind = "result", status = "U", code = "UNKNOWN_EXCEPTION" }
            [[rules]]
            probability = 0.5
            fault = { kind = "http_status", status = 503 }
            [[rules]]
            fault = { kind = "hang", duration = "2s" }
            [[rules]]
            fault = { kind = "hang" }
            [[rules]]
            fault = { kind = "bad_signature" }
            [[rules]]
            fault = { kind = "unsigned_success" }
            [[rules]]
            fault = { kind = "garbled" }
            [[rules]]
            fault = { kind = "latency", delay = "10ms" }
        "#;
        let rules = SimulatorRules::from_toml(text, "test").unwrap();
        assert_eq!(rules.latency, Some(Duration::from_millis(5)));
        assert_eq!(rules.rules.len(), 8);
        assert_eq!(
            rules.rules[3].fault,
            Fault::Hang {
                duration: Duration::from_secs(60)
            }
        );
    }

    #[test]
    fn bad_rules_files_are_errors_naming_the_file() {
        for text in [
            "[[rules]]\nfault = { kind = \"nope\" }",
            "[[rules]]\nprobability = 2.0\nfault = { kind = \"garbled\" }",
            "[[rules]]\nunknown = 1\nfault = { kind = \"garbled\" }",
            "[[rules]]\nfault = { kind = \"http_status\", status = 5 }",
        ] {
            let err = SimulatorRules::from_toml(text, "rules.toml").unwrap_err();
            assert!(
                err.to_string().starts_with("rules file rules.toml: "),
                "{err}"
            );
        }
    }

    #[test]
    fn times_lets_later_calls_through_per_request_id() {
        let rules =
            vec![FaultRule::for_prefix("M-U-", Fault::result("U", "UNKNOWN_EXCEPTION")).times(2)];
        let mut counters = RuleCounters::default();
        let mut select = |m: &str, r: &str| counters.select(&rules, m, r, || 0.0).len();
        assert_eq!(select("M-U-1", "R1"), 1);
        assert_eq!(select("M-U-1", "R2"), 1);
        assert_eq!(select("M-U-1", "R1"), 1);
        assert_eq!(select("M-U-1", "R1"), 0);
        assert_eq!(select("M-OK", "R3"), 0);
    }

    #[test]
    fn latency_accumulates_and_probability_filters() {
        let rules = vec![
            FaultRule {
                merchant_prefix: None,
                probability: None,
                times: None,
                fault: Fault::Latency {
                    delay: Duration::from_millis(1),
                },
            },
            FaultRule {
                merchant_prefix: None,
                probability: Some(0.5),
                times: None,
                fault: Fault::Garbled,
            },
            FaultRule {
                merchant_prefix: None,
                probability: None,
                times: None,
                fault: Fault::BadSignature,
            },
        ];
        let mut counters = RuleCounters::default();
        let hit = counters.select(&rules, "M", "R", || 0.1);
        assert_eq!(
            hit,
            vec![
                Fault::Latency {
                    delay: Duration::from_millis(1)
                },
                Fault::Garbled
            ]
        );
        let miss = counters.select(&rules, "M", "R", || 0.9);
        assert_eq!(miss[1], Fault::BadSignature);
    }
}
