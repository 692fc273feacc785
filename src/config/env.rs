//! The `REGNOTIFY_*` layer: which process environment variables are settings
//! (`REGNOTIFY_PROCESSING__MAX_IN_FLIGHT` → `processing.max_in_flight`), which are reserved for
//! tests and tools, which are mistakes (an error naming the settings they may have meant), and how
//! their values (and `--set` values) are typed like TOML scalars.
//!
//! It reads the environment only in `process_environment`, and never validates values (the
//! tables do) nor prints the warning about an unknown variable (the loader does).

use std::path::PathBuf;

use super::{
    CONFIG_ENV, ConfigError, ENV_PREFIX, OtlpProtocol, SchemaRegistrySettings, Secret, Settings,
};

/// Prefixes (after `REGNOTIFY_`) of variables that belong to the test suites and tools, never to
/// the settings: `REGNOTIFY_TEST_BOOTSTRAP`, `REGNOTIFY_REQUIRE_EXTERNAL`, …
pub(crate) const RESERVED_ENV_PREFIXES: [&str; 3] = ["TEST_", "REQUIRE_", "EXTERNAL_"];
/// Tables whose keys are free-form (librdkafka properties, result codes), so any key below them is
/// a candidate setting that the table itself judges.
const FREE_FORM_TABLES: [&str; 4] = [
    "kafka.consumer",
    "kafka.producer",
    "alipayplus.result_policy",
    "alipayplus.clients",
];

/// The process environment as text. A `REGNOTIFY_` variable that is not UTF-8 is an error naming
/// it (`std::env::vars` would panic on it); other programs' variables are none of ours.
pub(super) fn process_environment() -> Result<Vec<(String, String)>, ConfigError> {
    let mut env = Vec::new();
    for (name, value) in std::env::vars_os() {
        let name = match name.into_string() {
            Ok(name) => name,
            Err(name) if name.as_encoded_bytes().starts_with(ENV_PREFIX.as_bytes()) => {
                return Err(ConfigError::Load(format!(
                    "environment variable {} has a name that is not UTF-8",
                    name.to_string_lossy()
                )));
            }
            Err(_) => continue,
        };
        match value.into_string() {
            Ok(value) => env.push((name, value)),
            Err(_) if name == CONFIG_ENV || environment_setting(&name)?.is_some() => {
                return Err(ConfigError::Load(format!(
                    "environment variable {name} has a value that is not UTF-8"
                )));
            }
            Err(_) => {}
        }
    }
    Ok(env)
}

/// What an environment variable is to the settings: `Some(path)` for a setting
/// (`REGNOTIFY_PROCESSING__MAX_IN_FLIGHT` → `processing.max_in_flight`), `None` for a variable that
/// is not regnotify's, is `REGNOTIFY_CONFIG`, or is reserved for tests and tools
/// ([`RESERVED_ENV_PREFIXES`]). Any other `REGNOTIFY_` name is a mistake that would otherwise be
/// silently ignored, so it is an error naming the variable and the settings it may have meant.
pub(super) fn environment_setting(name: &str) -> Result<Option<String>, ConfigError> {
    let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
        return Ok(None);
    };
    if name == CONFIG_ENV || RESERVED_ENV_PREFIXES.iter().any(|p| rest.starts_with(p)) {
        return Ok(None);
    }
    let key = rest.to_ascii_lowercase();
    let path = key.replace("__", ".");
    if key.contains("__") && is_setting_path(&path) {
        return Ok(Some(path));
    }
    let squash = |text: &str| text.replace(['_', '.'], "");
    let leaf = path.rsplit('.').next().unwrap_or_default();
    let candidates: Vec<String> = setting_paths()
        .iter()
        .filter(|known| {
            let known_leaf = known.rsplit('.').next().unwrap_or_default();
            squash(known) == squash(&path) || squash(known_leaf) == squash(leaf)
        })
        .map(|known| {
            format!(
                "{ENV_PREFIX}{} ({known})",
                known.replace('.', "__").to_ascii_uppercase()
            )
        })
        .collect();
    let what = if key.contains("__") {
        format!("environment variable {name}: unknown setting `{path}`")
    } else {
        format!("environment variable {name} is not a setting")
    };
    if candidates.is_empty() {
        let table = setting_paths()
            .iter()
            .filter_map(|known| known.split('.').next())
            .find(|table| key.starts_with(&format!("{table}_")));
        if let Some(table) = table.filter(|_| !key.contains("__")) {
            return Err(ConfigError::Load(format!(
                "{what}: did you mean {ENV_PREFIX}{}__{}?",
                table.to_ascii_uppercase(),
                key[table.len() + 1..].to_ascii_uppercase()
            )));
        }
        if key.contains("__") {
            return Err(ConfigError::Load(format!("{what}; {ENV_CONVENTION}")));
        }
        // Looks like no setting at all: a tool's variable (`REGNOTIFY_BIN` of the benchmark
        // script) that the process inherited. Warned about by `Settings::load`, never fatal.
        return Ok(None);
    }
    Err(ConfigError::Load(format!(
        "{what}: did you mean {}?",
        candidates.join(" or ")
    )))
}

const ENV_CONVENTION: &str = "settings are REGNOTIFY_<TABLE>__<KEY> (for example \
     REGNOTIFY_PROCESSING__MAX_IN_FLIGHT), REGNOTIFY_CONFIG names the file, and REGNOTIFY_TEST_*, \
     REGNOTIFY_REQUIRE_* and REGNOTIFY_EXTERNAL_* are left to tests and tools";

/// The warning for a `REGNOTIFY_` variable that is neither a setting nor reserved, and resembles
/// no setting (those are errors): probably a tool's, possibly a typo.
pub(crate) fn unknown_environment_variable(name: &str) -> Option<String> {
    let rest = name.strip_prefix(ENV_PREFIX)?;
    if name == CONFIG_ENV
        || RESERVED_ENV_PREFIXES.iter().any(|p| rest.starts_with(p))
        || rest.contains("__")
        || !matches!(environment_setting(name), Ok(None))
    {
        return None;
    }
    Some(format!(
        "environment variable {name} is not a setting and is ignored; {ENV_CONVENTION}"
    ))
}

/// Whether a dotted path names a setting, or a key inside a free-form table.
fn is_setting_path(path: &str) -> bool {
    setting_paths().iter().any(|known| known == path)
        || FREE_FORM_TABLES.iter().any(|table| {
            path.strip_prefix(table)
                .and_then(|rest| rest.strip_prefix('.'))
                .is_some_and(|rest| !rest.is_empty())
        })
}

/// Every setting's dotted path (`processing.max_in_flight`), taken from the settings type itself
/// so the list cannot fall behind it; free-form tables are listed as themselves.
fn setting_paths() -> &'static [String] {
    static PATHS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    PATHS.get_or_init(|| {
        let mut every = Settings {
            schema_registry: Some(SchemaRegistrySettings {
                username: Some(String::new()),
                password: Some(Secret::new("")),
                ..SchemaRegistrySettings::default()
            }),
            ..Settings::default()
        };
        every.alipayplus.private_key_file = Some(PathBuf::new());
        every.alipayplus.private_key = Some(Secret::new(""));
        every.alipayplus.alipayplus_public_key_file = Some(PathBuf::new());
        every.alipayplus.ca_bundle_file = Some(PathBuf::new());
        every.alipayplus.key_version_file = Some(PathBuf::new());
        every.alipayplus.mpp_public_key_file = Some(PathBuf::new());
        every.telemetry.endpoint = Some(String::new());
        every.telemetry.protocol = Some(OtlpProtocol::HttpProtobuf);
        every.telemetry.service_name = Some(String::new());
        let mut paths = Vec::new();
        if let Ok(toml::Value::Table(table)) = toml::Value::try_from(&every) {
            collect_paths(&table, "", &mut paths);
        }
        paths
    })
}

fn collect_paths(table: &toml::Table, prefix: &str, paths: &mut Vec<String>) {
    for (name, value) in table {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match value {
            toml::Value::Table(inner) if !FREE_FORM_TABLES.contains(&path.as_str()) => {
                collect_paths(inner, &path, paths);
            }
            _ => paths.push(path),
        }
    }
}

/// Environment and flag values are typed like TOML scalars (`8`, `true`, `"10s"`).
pub(super) fn parse_value(value: &str) -> figment::value::Value {
    // figment's parser recurses once per `[` or `{`: a deeply nested value (`[[[[…`) overflowed
    // the stack and killed the process (found by fuzzing). No setting nests, so a value nested
    // deeper than any could be stays text, and the setting's type check names the key.
    if nesting_depth(value) > MAX_VALUE_NESTING {
        return figment::value::Value::from(value.to_owned());
    }
    // figment's parser slices a quoted string by character index where it means byte index, and
    // panics when a backslash escape follows a non-ASCII character (found by fuzzing:
    // `REGNOTIFY_ALIPAYPLUS__CLIENT_ID="é\t"` stopped start-up with a panic). Such values go through
    // the toml crate instead, which reads the same syntax; what it cannot read stays text.
    if value.contains('\\') && !value.is_ascii() {
        return toml::from_str::<toml::Table>(&format!("value = {value}"))
            .ok()
            .and_then(|mut table| table.remove("value"))
            .and_then(|parsed| figment::value::Value::serialize(parsed).ok())
            .unwrap_or_else(|| figment::value::Value::from(value.to_owned()));
    }
    match value.parse::<figment::value::Value>() {
        Ok(parsed) => parsed,
        Err(never) => match never {},
    }
}

/// Deeper than any setting's value (a table of arrays at most) could ever nest.
const MAX_VALUE_NESTING: usize = 16;

/// The deepest nesting of `[` and `{` in `value` (quotes are not told apart: an overestimate).
fn nesting_depth(value: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for c in value.chars() {
        match c {
            '[' | '{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::ResultPolicy;
    use crate::config::tests::load;

    #[test]
    fn environment_variables_outside_the_tables_are_not_settings() {
        let s = load(
            "",
            &[
                ("REGNOTIFY_TEST_BOOTSTRAP", "x:1"),
                ("REGNOTIFY_TEST_KAFKA_PORT", "9092"),
                ("REGNOTIFY_REQUIRE_EXTERNAL", "1"),
                ("REGNOTIFY_REQUIRE_REAL_BROKER", "1"),
                ("REGNOTIFY_EXTERNAL_PYTHON", "python3"),
                ("OTHER_PROGRAM_MAX_IN_FLIGHT", "5"),
            ],
            &[],
        );
        assert!(s.is_ok());
        let err = load("", &[("REGNOTIFY_KAFKA_GROUP_ID", "g")], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("REGNOTIFY_KAFKA__GROUP_ID"), "{err}");
    }

    #[test]
    fn a_prefixed_variable_that_is_no_setting_stops_start_up_naming_the_right_one() {
        let cases = [
            (
                "REGNOTIFY_MAX_IN_FLIGHT",
                "REGNOTIFY_PROCESSING__MAX_IN_FLIGHT",
            ),
            ("REGNOTIFY_LOG_LEVEL", "REGNOTIFY_LOG__LEVEL"),
            (
                "REGNOTIFY_SCHEMA_REGISTRY_URL",
                "REGNOTIFY_SCHEMA_REGISTRY__URL",
            ),
            ("REGNOTIFY_CLIENT_ID", "REGNOTIFY_ALIPAYPLUS__CLIENT_ID"),
            (
                "REGNOTIFY_KAFKA__MAX_IN_FLIGHT",
                "REGNOTIFY_PROCESSING__MAX_IN_FLIGHT",
            ),
            (
                "REGNOTIFY_PROCESSING__MAXINFLIGHT",
                "REGNOTIFY_PROCESSING__MAX_IN_FLIGHT",
            ),
            (
                "REGNOTIFY_CA_BUNDLE_FILE",
                "REGNOTIFY_ALIPAYPLUS__CA_BUNDLE_FILE",
            ),
        ];
        for (variable, meant) in cases {
            let err = load("", &[(variable, "5")], &[]).unwrap_err().to_string();
            assert!(err.contains(variable), "{variable}: {err}");
            assert!(err.contains(meant), "{variable}: {err}");
        }
        // A setting in two tables: both are offered.
        let err = load("", &[("REGNOTIFY_REQUEST_TIMEOUT", "1s")], &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("REGNOTIFY_ALIPAYPLUS__REQUEST_TIMEOUT"),
            "{err}"
        );
        assert!(
            err.contains("REGNOTIFY_SCHEMA_REGISTRY__REQUEST_TIMEOUT"),
            "{err}"
        );
        // `__` naming no setting is surely meant as one.
        let err = load("", &[("REGNOTIFY_BANANA__SPLIT", "1")], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("REGNOTIFY_BANANA__SPLIT"), "{err}");
        assert!(err.contains("REGNOTIFY_TEST_*"), "{err}");
        assert!(
            load("", &[("REGNOTIFY_KAFKA_NOTHING", "1")], &[])
                .unwrap_err()
                .to_string()
                .contains("REGNOTIFY_KAFKA__NOTHING")
        );
        // Nothing like a setting: a tool's variable, ignored with a warning that spells out the
        // convention and the reserved prefixes.
        assert!(load("", &[("REGNOTIFY_BIN", "target/release/regnotify")], &[]).is_ok());
        let warning = unknown_environment_variable("REGNOTIFY_BIN").unwrap();
        assert!(warning.contains("REGNOTIFY_BIN"), "{warning}");
        assert!(warning.contains("REGNOTIFY_TEST_*"), "{warning}");
        for quiet in [
            "REGNOTIFY_TEST_BOOTSTRAP",
            "REGNOTIFY_CONFIG",
            "REGNOTIFY_PROCESSING__MAX_IN_FLIGHT",
            "REGNOTIFY_MAX_IN_FLIGHT",
            "OTHER_BIN",
        ] {
            assert_eq!(unknown_environment_variable(quiet), None, "{quiet}");
        }
    }

    #[test]
    fn every_setting_path_is_known_and_free_form_tables_take_any_key() {
        for path in [
            "kafka.bootstrap_servers",
            "schema_registry.password",
            "alipayplus.private_key",
            "alipayplus.ca_bundle_file",
            "processing.refused_streak_threshold",
            "log.level",
            "kafka.consumer.anything",
            "alipayplus.result_policy.process_fail",
        ] {
            assert!(is_setting_path(path), "{path}");
        }
        for path in [
            "kafka",
            "kafka.consumer.",
            "processing.max_inflight",
            "kafka.group",
        ] {
            assert!(!is_setting_path(path), "{path}");
        }
        let s = load(
            "",
            &[
                ("REGNOTIFY_KAFKA__CONSUMER__SECURITY_PROTOCOL", "SSL"),
                ("REGNOTIFY_ALIPAYPLUS__RESULT_POLICY__PROCESS_FAIL", "retry"),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(s.kafka.consumer.0["security_protocol"], "SSL");
        assert_eq!(
            s.alipayplus.result_policy.get("PROCESS_FAIL"),
            Some(&ResultPolicy::Retry)
        );
    }

    /// Found by fuzzing (fuzz/corpus/settings/crash-figment-escape-after-non-ascii): figment's
    /// value parser panicked on an escape after a non-ASCII character.
    #[test]
    fn deeply_nested_values_are_refused_not_a_stack_overflow() {
        let deep = "[".repeat(100_000);
        let err = load(
            "",
            &[("REGNOTIFY_PROCESSING__MAX_IN_FLIGHT", deep.as_str())],
            &[],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("processing.max_in_flight"),
            "{err}"
        );
        let deep = format!("{}1{}", "[".repeat(50_000), "]".repeat(50_000));
        let err = load("", &[], &[("processing.max_in_flight", deep.as_str())]).unwrap_err();
        assert!(
            err.to_string().contains("processing.max_in_flight"),
            "{err}"
        );
        // Ordinary nesting still parses.
        let s = load(
            "",
            &[(
                "REGNOTIFY_ALIPAYPLUS__RESULT_POLICY",
                "{PROCESS_FAIL = \"retry\"}",
            )],
            &[],
        )
        .unwrap();
        assert_eq!(s.alipayplus.result_policy.len(), 1);
    }

    #[test]
    fn escapes_after_non_ascii_characters_in_environment_values_do_not_panic() {
        let s = load(
            "",
            &[
                ("REGNOTIFY_ALIPAYPLUS__CLIENT_ID", r#""é\u0041x""#),
                ("REGNOTIFY_KAFKA__GROUP_ID", r#"grü\n"#),
            ],
            &[("kafka.input_topic", r#""in\u0070ut""#)],
        )
        .unwrap();
        assert_eq!(s.alipayplus.client_id, "éAx");
        assert_eq!(s.kafka.group_id, r#"grü\n"#);
        assert_eq!(s.kafka.input_topic, "input");
        let err = load("", &[("REGNOTIFY_KAFKA__INPUT_TOPIC", r#""ü\q""#)], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka.input_topic"), "{err}");
    }
}
