#!/usr/bin/env bash
# The Prometheus alert rules (README, "Alerts and runbooks"): docker/prometheus/alerts.yaml is the
# source, docker/prometheus/alerts.test.yaml its promtool unit tests, and
# docker/kubernetes/prometheusrule.yaml the same rules as a PrometheusRule for the Prometheus
# Operator, generated from the source.
#
#   install  build promtool into the tools cache, unless the version pinned there is already built
#   build    write docker/kubernetes/prometheusrule.yaml from docker/prometheus/alerts.yaml
#   check    install, then `promtool check rules` and `promtool test rules`, and `promtool check
#            config` of docker/prometheus/prometheus.yml (which loads the rules); fails when the
#            PrometheusRule is not what `build` writes, when an alert lacks a test where it fires
#            or one where it stays quiet, lacks summary, description or runbook_url, points at a
#            README heading that does not exist, or names a metric no constant under src/ defines
#
# promtool is built from the Go module proxy (CI reaches only the package registries) with the
# Prometheus version and every dependency's checksum pinned by tools/promtool/go.mod and go.sum:
# about 4 minutes on two cores the first time, into the tools cache
# (${REGNOTIFY_EXTERNAL_TOOLS_DIR:-~/.cache/regnotify/go-bin}).
# To upgrade: `cd tools/promtool && go get -tool github.com/prometheus/prometheus/cmd/promtool@vX`.
# Needs go (the version tools/promtool/go.mod names, or GOTOOLCHAIN fetching it) and python3 with
# PyYAML.
set -euo pipefail
cd "$(dirname "$0")/.."

rules=docker/prometheus/alerts.yaml
prometheus_config=docker/prometheus/prometheus.yml
tests=docker/prometheus/alerts.test.yaml
operator_rule=docker/kubernetes/prometheusrule.yaml
tools_dir="${REGNOTIFY_EXTERNAL_TOOLS_DIR:-$HOME/.cache/regnotify/go-bin}"
promtool="$tools_dir/promtool"
# The one place the version is pinned is go.mod; this reads it (v0.316.0 is Prometheus 3.16.0).
PROMTOOL_VERSION="$(awk '$1 == "github.com/prometheus/prometheus" { sub(/^v/, "", $2); print $2 }' \
  tools/promtool/go.mod)"
# Every runbook_url is this README's URL and the anchor of the alert's own heading.
RUNBOOK_PREFIX="https://github.com/regnotify/regnotify/blob/main/README.md#"

die() {
  echo "error: $*" >&2
  exit 1
}

promtool_is_current() {
  [[ -x "$promtool" ]] && "$promtool" --version 2>/dev/null | grep -qF "version $PROMTOOL_VERSION "
}

install_promtool() {
  [[ -n "$PROMTOOL_VERSION" ]] ||
    die "tools/promtool/go.mod pins no github.com/prometheus/prometheus"
  if promtool_is_current; then
    echo "promtool $PROMTOOL_VERSION: $promtool"
    return
  fi
  command -v go >/dev/null ||
    die "promtool $PROMTOOL_VERSION is not in $tools_dir, and go is not installed to build it"
  echo "promtool $PROMTOOL_VERSION: building into $tools_dir (about 4 minutes on two cores, once)"
  mkdir -p "$tools_dir"
  # Built beside its final name and renamed into place, so a concurrent or interrupted build never
  # leaves a half-written promtool behind.
  local partial
  partial="$(mktemp "$tools_dir/.promtool.XXXXXX")"
  # shellcheck disable=SC2064 # the path is fixed now
  trap "rm -f '$partial'" EXIT
  # -mod=readonly: go.mod and go.sum are the pin and are never rewritten here. -buildvcs=false:
  # the repository's git state says nothing about promtool. The version is stamped so that
  # `promtool --version` tells a current build from a stale one.
  (cd tools/promtool && go build -mod=readonly -buildvcs=false -o "$partial" \
    -ldflags "-X github.com/prometheus/common/version.Version=$PROMTOOL_VERSION" \
    github.com/prometheus/prometheus/cmd/promtool)
  mv -f "$partial" "$promtool"
  trap - EXIT
  promtool_is_current || die "$promtool does not report version $PROMTOOL_VERSION after the build"
  echo "promtool $PROMTOOL_VERSION: $promtool"
}

need_pyyaml() {
  python3 -c 'import yaml' 2>/dev/null ||
    die "python3 with PyYAML is needed (python3 -m pip install PyYAML)"
}

# Prints the PrometheusRule: the source's rule groups, comments included, under `spec:`; then
# checks that it holds exactly the source's groups.
render_operator_rule() {
  python3 - "$rules" <<'PY'
import sys

import yaml

source = sys.argv[1]
text = open(source, encoding="utf-8").read()
lines = text.splitlines()
try:
    start = lines.index("groups:")
except ValueError:
    sys.exit(f"error: {source} has no top-level `groups:` line")
body = "\n".join(("  " + line) if line else "" for line in lines[start:])
rule = f"""# Generated from docker/prometheus/alerts.yaml by `scripts/alert-rules.sh build`: edit
# that file and build again (CI fails when this one differs). The same rules for the Prometheus
# Operator: its Prometheus loads a PrometheusRule whose labels match its ruleSelector
# (kube-prometheus-stack selects `release: <its release name>` by default: add that label). What
# each alert means and what to do: README.md, "Alerts and runbooks".
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: regnotify
  labels:
    app.kubernetes.io/name: regnotify
spec:
{body}
"""
if yaml.safe_load(rule)["spec"]["groups"] != yaml.safe_load(text)["groups"]:
    sys.exit(f"error: the PrometheusRule built from {source} does not hold the same groups")
sys.stdout.write(rule)
PY
}

build() {
  need_pyyaml
  local rendered
  rendered="$(render_operator_rule)"
  printf '%s\n' "$rendered" >"$operator_rule"
  echo "wrote $operator_rule"
}

# Every alert: severity, summary, description, a runbook_url whose anchor is a README heading, a
# test case where it fires and one where it stays quiet; every metric it names is exported.
check_alerts_are_complete() {
  python3 - "$rules" "$tests" "$RUNBOOK_PREFIX" <<'PY'
import glob
import re
import sys

import yaml

rules_path, tests_path, prefix = sys.argv[1:]
problems = []


def github_anchor(heading):
    """The id GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to -."""
    anchor = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return anchor.replace(" ", "-")


anchors, fenced = set(), False
for line in open("README.md", encoding="utf-8"):
    if line.startswith("```"):
        fenced = not fenced
    elif not fenced and (match := re.match(r"#{1,6} (.+)", line)):
        anchors.add(github_anchor(match[1]))

# Metric names live as constants in the service's source (src/observe.rs, `pub mod names`).
exported = set()
for path in glob.glob("src/**/*.rs", recursive=True):
    source = open(path, encoding="utf-8").read()
    exported |= set(re.findall(r'const \w+: &str = "(regnotify_\w+)"', source))
if not exported:
    problems.append("no metric name constant found under src/")

alerts = {}
for group in yaml.safe_load(open(rules_path, encoding="utf-8"))["groups"]:
    for rule in group["rules"]:
        if "alert" not in rule:
            continue
        name = rule["alert"]
        if name in alerts:
            problems.append(f"{name}: defined twice")
        alerts[name] = rule
        if rule.get("labels", {}).get("severity") not in ("page", "ticket"):
            problems.append(f"{name}: labels.severity must be page or ticket")
        if "for" not in rule:
            problems.append(f"{name}: no `for:` (write `for: 0m` for an alert that fires at once)")
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            if not str(annotations.get(key, "")).strip():
                problems.append(f"{name}: no annotations.{key}")
        runbook = annotations.get("runbook_url", "")
        if runbook and runbook != prefix + name.lower():
            problems.append(f"{name}: runbook_url should be {prefix}{name.lower()}, not {runbook}")
        if name.lower() not in anchors:
            problems.append(f"{name}: README.md has no heading `### {name}` (its runbook)")
        for metric in sorted(set(re.findall(r"\bregnotify_\w+", rule["expr"]))):
            base = re.sub(r"_(bucket|sum|count)$", "", metric)
            if metric not in exported and base not in exported:
                problems.append(f"{name}: {metric} is not a metric the service exports")

firing, quiet = set(), set()
for test in yaml.safe_load(open(tests_path, encoding="utf-8"))["tests"]:
    for case in test.get("alert_rule_test", []):
        name = case["alertname"]
        if name not in alerts:
            # A quiet case of a misspelt alert would pass whatever the rules say.
            problems.append(f"test {test.get('name')!r}: no alert named {name}")
            continue
        expected = case.get("exp_alerts") or []
        (firing if expected else quiet).add(name)
        for alert in expected:
            if "summary" not in (alert.get("exp_annotations") or {}):
                problems.append(f"test {test.get('name')!r}: {name} at {case['eval_time']} checks no summary")
for name in alerts:
    if name not in firing:
        problems.append(f"{name}: no test case where it fires")
    if name not in quiet:
        problems.append(f"{name}: no test case where it stays quiet (empty exp_alerts)")

if problems:
    print("\n".join(f"error: {p}" for p in problems), file=sys.stderr)
    sys.exit(1)
print(f"{len(alerts)} alerts, each with summary, description, a runbook heading in README.md, "
      "a test where it fires and one where it stays quiet; every metric named is defined in src/")
PY
}

check() {
  need_pyyaml
  install_promtool
  "$promtool" check rules "$rules"
  check_alerts_are_complete
  "$promtool" test rules "$tests"
  "$promtool" check config "$prometheus_config"
  local rendered
  rendered="$(render_operator_rule)"
  if ! diff -u "$operator_rule" <(printf '%s\n' "$rendered"); then
    die "$operator_rule is not what $rules builds: run scripts/alert-rules.sh build"
  fi
  echo "$operator_rule matches $rules"
}

case "${1:-}" in
  install) install_promtool ;;
  build) build ;;
  check) check ;;
  *)
    echo "usage: $0 install|build|check" >&2
    exit 2
    ;;
esac
