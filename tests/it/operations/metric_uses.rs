//! Where the dashboard, the alert rules and the README name a metric, and what each use needs of
//! it. Plain text and JSON reading, no I/O beyond reading those files.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

pub const DASHBOARD: &str = "docker/grafana/dashboards/regnotify.json";
pub const ALERTS: &str = "docker/prometheus/alerts.yaml";
pub const PROMETHEUS_RULE: &str = "docker/kubernetes/prometheusrule.yaml";
pub const README: &str = "README.md";

/// Functions over a range vector that only make sense of a counter (or a histogram's series).
const COUNTER_FUNCTIONS: [&str; 4] = ["rate", "irate", "increase", "resets"];
/// PromQL keywords followed by a parenthesised list of label names, not an expression.
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

/// One place that names a metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Use {
    /// As written: with a histogram's `_bucket`, `_sum` or `_count` when PromQL names those.
    pub name: String,
    pub place: String,
    pub how: How,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum How {
    /// In a PromQL expression; `calls` are the enclosing function calls, outermost first.
    PromQl { calls: Vec<String> },
    /// In the README's metrics table, which states the type.
    Table { stated: String },
    /// Mentioned in prose.
    Mentioned,
}

/// A metric name in PromQL, with the function calls around it (outermost first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub name: String,
    pub calls: Vec<String>,
}

/// Every use in the dashboard, the rule files and the README under `root`, and the problems
/// found reading them (a required file missing).
pub fn everywhere(root: &Path) -> (Vec<Use>, Vec<String>) {
    let mut uses = Vec::new();
    let mut problems = Vec::new();
    let read = |file: &str| std::fs::read_to_string(root.join(file));
    match read(DASHBOARD) {
        Ok(text) => {
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|error| panic!("{DASHBOARD} is not JSON: {error}"));
            let expressions = dashboard_expressions(&json);
            if expressions.is_empty() {
                problems.push(format!("{DASHBOARD}: no panel target `expr` found"));
            }
            for (expr, place) in expressions {
                uses.extend(promql_uses(
                    &expr,
                    &format!("{DASHBOARD}: {place}"),
                    &BTreeSet::new(),
                ));
            }
        }
        Err(error) => problems.push(format!("{DASHBOARD}: cannot be read: {error}")),
    }
    for (file, required) in [(ALERTS, true), (PROMETHEUS_RULE, false)] {
        match read(file) {
            Ok(text) => {
                let (expressions, recorded) = rule_expressions(&text);
                if expressions.is_empty() {
                    problems.push(format!("{file}: no `expr:` found"));
                }
                for (expr, place) in expressions {
                    uses.extend(promql_uses(&expr, &format!("{file}:{place}"), &recorded));
                }
            }
            Err(error) if required => problems.push(format!(
                "{file}: cannot be read ({error}); the alert rules must exist and name only \
                 exported metrics"
            )),
            Err(_) => {}
        }
    }
    match read(README) {
        Ok(text) => {
            let named = readme_uses(&text);
            if !named
                .iter()
                .any(|use_| matches!(use_.how, How::Table { .. }))
            {
                problems.push(format!(
                    "{README}: no metrics table row (`| `regnotify_…` | type | labels |`) found"
                ));
            }
            uses.extend(named);
        }
        Err(error) => problems.push(format!("{README}: cannot be read: {error}")),
    }
    (uses, problems)
}

fn promql_uses(expr: &str, place: &str, recorded: &BTreeSet<String>) -> Vec<Use> {
    metric_references(expr)
        .into_iter()
        .filter(|reference| !recorded.contains(&reference.name))
        .map(|reference| Use {
            name: reference.name,
            place: place.to_string(),
            how: How::PromQl {
                calls: reference.calls,
            },
        })
        .collect()
}

/// What is wrong with each use, given the exposition's `name → type`; empty when nothing.
pub fn check(uses: &[Use], types: &BTreeMap<String, String>) -> Vec<String> {
    let mut problems: Vec<String> = uses
        .iter()
        .filter_map(|use_| {
            problem(use_, types).map(|why| format!("{}: {why} ({})", use_.name, use_.place))
        })
        .collect();
    problems.dedup();
    problems
}

fn problem(use_: &Use, types: &BTreeMap<String, String>) -> Option<String> {
    let name = use_.name.as_str();
    let (kind, suffix) = match types.get(name) {
        Some(kind) => (kind.as_str(), None),
        None => {
            let Some((base, suffix)) = HISTOGRAM_SUFFIXES
                .iter()
                .find_map(|suffix| Some((name.strip_suffix(suffix)?, *suffix)))
            else {
                return Some("not exported".into());
            };
            let Some(kind) = types.get(base) else {
                return Some(format!("not exported (nor is {base})"));
            };
            if kind != "histogram" {
                return Some(format!(
                    "{base} is exported as a {kind}, which has no {suffix}"
                ));
            }
            (kind.as_str(), Some(suffix))
        }
    };
    match &use_.how {
        How::Table { stated } if stated != kind => {
            Some(format!("the README says {stated}, exported as a {kind}"))
        }
        How::PromQl { calls } => {
            if kind == "histogram" && suffix.is_none() {
                return Some(
                    "a histogram has no series of its bare name: use _bucket, _sum or _count"
                        .into(),
                );
            }
            let innermost = calls.last().map(String::as_str).unwrap_or_default();
            if COUNTER_FUNCTIONS.contains(&innermost) && kind != "counter" && suffix.is_none() {
                return Some(format!("{innermost}() of a {kind}; it needs a counter"));
            }
            if calls.iter().any(|call| call == "histogram_quantile") && suffix != Some("_bucket") {
                return Some("histogram_quantile() needs a histogram's _bucket series".into());
            }
            None
        }
        _ => None,
    }
}

/// The metric names (`regnotify_…`) in a PromQL expression, each with the function calls
/// around it. Strings, label matchers `{…}`, ranges `[…]`, label lists (`by (…)`) and
/// comments are skipped; Grafana's `$variables` are harmless there.
pub fn metric_references(expr: &str) -> Vec<Reference> {
    let chars: Vec<char> = expr.chars().collect();
    let mut references = Vec::new();
    let mut calls: Vec<String> = Vec::new();
    let mut at = 0;
    while at < chars.len() {
        let c = chars[at];
        if matches!(c, '"' | '\'' | '`') {
            at = past_string(&chars, at);
        } else if c == '{' {
            at = past(&chars, at, '}');
        } else if c == '[' {
            at = past(&chars, at, ']');
        } else if c == '#' {
            while at < chars.len() && chars[at] != '\n' {
                at += 1;
            }
        } else if c == '(' {
            calls.push(String::new());
            at += 1;
        } else if c == ')' {
            calls.pop();
            at += 1;
        } else if c.is_ascii_digit() || c == '.' {
            while at < chars.len() && (chars[at].is_ascii_alphanumeric() || chars[at] == '.') {
                at += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = at;
            while at < chars.len()
                && (chars[at].is_ascii_alphanumeric() || matches!(chars[at], '_' | ':'))
            {
                at += 1;
            }
            let word: String = chars[start..at].iter().collect();
            let mut next = at;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            if chars.get(next) == Some(&'(') {
                if LABEL_LISTS.contains(&word.to_ascii_lowercase().as_str()) {
                    at = past(&chars, next, ')');
                } else {
                    calls.push(word.to_ascii_lowercase());
                    at = next + 1;
                }
            } else if word.starts_with("regnotify_") {
                references.push(Reference {
                    name: word,
                    calls: calls.clone(),
                });
            }
        } else {
            at += 1;
        }
    }
    references
}

/// The index just past the string that opens at `open`.
fn past_string(chars: &[char], open: usize) -> usize {
    let quote = chars[open];
    let mut at = open + 1;
    while at < chars.len() && chars[at] != quote {
        at += if chars[at] == '\\' { 2 } else { 1 };
    }
    at + 1
}

/// The index just past the `close` that ends what opens at `open`, strings skipped.
fn past(chars: &[char], open: usize, close: char) -> usize {
    let mut at = open + 1;
    while at < chars.len() && chars[at] != close {
        at = if matches!(chars[at], '"' | '\'' | '`') {
            past_string(chars, at)
        } else {
            at + 1
        };
    }
    at + 1
}

/// Every PromQL expression of a Grafana dashboard, with where it is: each panel's
/// `targets[].expr` (panels of collapsed rows included) and each template variable's query.
pub fn dashboard_expressions(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    walk_panels(dashboard["panels"].as_array(), "", &mut found);
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let query = &variable["query"];
        let query = query.as_str().or_else(|| query["query"].as_str());
        if let Some(query) = query {
            let name = variable["name"].as_str().unwrap_or("?");
            found.push((query.to_string(), format!("variable \"{name}\"")));
        }
    }
    found
}

fn walk_panels(
    panels: Option<&Vec<serde_json::Value>>,
    row: &str,
    found: &mut Vec<(String, String)>,
) {
    // A row that is not collapsed holds its panels after it, at the top level.
    let mut row = row.to_string();
    for panel in panels.into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or("untitled");
        if panel["type"] == "row" {
            row = title.to_string();
            walk_panels(panel["panels"].as_array(), title, found);
            continue;
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                found.push((
                    expr.to_string(),
                    format!(
                        "panel \"{row} / {title}\" (id {}), target {}",
                        panel["id"],
                        target["refId"].as_str().unwrap_or("?")
                    ),
                ));
            }
        }
    }
}

/// One line of a rule file: its indentation, whether it opens a list item, its key and value.
struct Line<'a> {
    indent: usize,
    item: bool,
    /// The column of the key, after a list item's `- `.
    column: usize,
    key: &'a str,
    value: &'a str,
}

fn line(text: &str) -> Option<Line<'_>> {
    let trimmed = text.trim_start();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return None;
    }
    let indent = text.len() - trimmed.len();
    let (item, column, rest) = match trimmed.strip_prefix('-') {
        Some(rest) if rest.is_empty() || rest.starts_with(' ') => {
            let body = rest.trim_start();
            (true, text.len() - body.len(), body)
        }
        _ => (false, indent, trimmed),
    };
    let (key, value) = rest.split_once(':').unwrap_or((rest, ""));
    Some(Line {
        indent,
        item,
        column,
        key: key.trim(),
        value: value.trim(),
    })
}

fn unquote(value: &str) -> String {
    if let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        return inner.replace("\\\"", "\"").replace("\\\\", "\\");
    }
    if let Some(inner) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        return inner.replace("''", "'");
    }
    value.to_string()
}

/// Every `expr:` of a Prometheus rule file (plain, quoted or a `|`/`>` block), each with
/// `line N alert X` or `line N record X`; and the names recording rules define.
pub fn rule_expressions(text: &str) -> (Vec<(String, String)>, BTreeSet<String>) {
    let lines: Vec<Option<Line<'_>>> = text.lines().map(line).collect();
    let raw: Vec<&str> = text.lines().collect();
    let recorded = lines
        .iter()
        .flatten()
        .filter(|line| line.key == "record")
        .map(|line| unquote(line.value))
        .collect();
    let mut found = Vec::new();
    for (index, current) in lines.iter().enumerate() {
        let Some(current) = current.as_ref().filter(|line| line.key == "expr") else {
            continue;
        };
        // The lines indented deeper than the key continue its value.
        let continued: Vec<&str> = raw[index + 1..]
            .iter()
            .take_while(|text| {
                let trimmed = text.trim_start();
                trimmed.is_empty() || text.len() - trimmed.len() > current.column
            })
            .map(|text| text.trim())
            .collect();
        let expr = if current.value.starts_with(['|', '>']) {
            continued.join("\n")
        } else {
            unquote(
                &std::iter::once(current.value)
                    .chain(continued)
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        };
        found.push((
            expr,
            format!("{} {}", index + 1, rule_name(&lines, index, current.column)),
        ));
    }
    (found, recorded)
}

/// `alert X` or `record X`: the name of the rule whose item holds line `at`.
fn rule_name(lines: &[Option<Line<'_>>], at: usize, column: usize) -> String {
    let named = |line: &Line<'_>| {
        (line.column == column && matches!(line.key, "alert" | "record"))
            .then(|| format!("{} {}", line.key, unquote(line.value)))
    };
    for line in lines[..=at].iter().rev().flatten() {
        if let Some(name) = named(line) {
            return name;
        }
        if (line.item && line.column == column) || line.indent < column {
            break;
        }
    }
    for line in lines[at + 1..].iter().flatten() {
        if line.indent < column {
            break;
        }
        if let Some(name) = named(line) {
            return name;
        }
    }
    "(unnamed rule)".into()
}

/// The metrics the README names: the metrics table's rows (`| \`regnotify_…\` | type | …`),
/// with their stated type, and every other `regnotify_…` it mentions.
pub fn readme_uses(text: &str) -> Vec<Use> {
    let mut uses = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let place = format!("{README}:{}", index + 1);
        if line.starts_with("| `regnotify_") {
            let cells: Vec<&str> = line.split('|').collect();
            let stated: String = cells[2]
                .trim()
                .chars()
                .take_while(char::is_ascii_alphabetic)
                .collect();
            for name in names_in(cells[1]) {
                uses.push(Use {
                    name,
                    place: format!("{place} (metrics table)"),
                    how: How::Table {
                        stated: stated.clone(),
                    },
                });
            }
            continue;
        }
        for name in names_in(line) {
            uses.push(Use {
                name,
                place: place.clone(),
                how: How::Mentioned,
            });
        }
    }
    uses
}

fn names_in(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("regnotify_") {
        let preceded = rest[..start].chars().next_back();
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.push(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// The text of a call's arguments, up to the parenthesis that closes it (`rest` starts just
/// after the opening one).
fn call_arguments(rest: &str) -> String {
    let chars: Vec<char> = rest.chars().collect();
    let (mut depth, mut at) = (0_usize, 0);
    while at < chars.len() {
        match chars[at] {
            '"' => {
                at = past_string(&chars, at);
                continue;
            }
            '(' => depth += 1,
            ')' if depth == 0 => break,
            ')' => depth -= 1,
            _ => {}
        }
        at += 1;
    }
    chars[..at.min(chars.len())].iter().collect()
}

/// The `check` names the pipeline passes to `invariant::take` and `invariant::expect` (the
/// last string literal of each call), read from `src/pipeline` under `root`.
pub fn invariant_checks(root: &Path) -> BTreeSet<String> {
    let mut checks = BTreeSet::new();
    let directory = root.join("src/pipeline");
    for entry in std::fs::read_dir(&directory).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|extension| extension != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        for call in ["invariant::take(", "invariant::expect("] {
            for (start, _) in source.match_indices(call) {
                let arguments = call_arguments(&source[start + call.len()..]);
                let literal = arguments
                    .rsplit('"')
                    .nth(1)
                    .unwrap_or_else(|| panic!("{}: no check name in {arguments}", path.display()));
                checks.insert(literal.to_string());
            }
        }
    }
    checks
}
