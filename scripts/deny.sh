#!/usr/bin/env bash
# Runs `cargo deny check` (advisories, bans, licenses, sources) against deny.toml; arguments are
# passed to `check` (e.g. `scripts/deny.sh advisories`).
#
# The RustSec advisory database lives in a git repository on GitHub, which cargo-deny clones into
# $CARGO_HOME/advisory-dbs itself. Where GitHub cannot be reached (our CI machines reach only the
# package registries), the snapshot committed in supply-chain/ is installed there instead, as the
# clone cargo-deny would have made, and cargo-deny runs without fetching (`--offline`, after `cargo
# fetch` so that the crate graph resolves without the network). The check then knows the
# advisories published up to the snapshot's date, which this script prints; deny.toml's
# `maximum-db-staleness` fails the check once the snapshot is too old. A newer clone already there
# is kept, and the next run that reaches GitHub updates the snapshot's clone in place.
# supply-chain/README.md says how to refresh the snapshot.
set -euo pipefail
cd "$(dirname "$0")/.."

url="https://github.com/RustSec/advisory-db"
# cargo-deny's directory name for that URL (its name and a hash of the lower-cased URL).
db="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs/advisory-db-3157b0e258782691"
snapshot="supply-chain/advisory-db.tar.gz"
read -r snapshot_commit snapshot_date <supply-chain/advisory-db.snapshot

if timeout 20 git ls-remote --exit-code "$url" HEAD >/dev/null 2>&1; then
  echo "advisory database: fetched by cargo-deny from $url"
  exec cargo deny check "$@"
fi

echo "advisory database: $url cannot be reached; using the snapshot $snapshot" \
  "(advisory-db commit $snapshot_commit of $snapshot_date)"
existing="$(git -C "$db" show -s --format=%cI HEAD 2>/dev/null || true)"
if [[ -n "$existing" ]] && (($(date -d "$existing" +%s) >= $(date -d "$snapshot_date" +%s))); then
  echo "advisory database: keeping the clone in $db of $existing, not older than the snapshot"
else
  rm -rf "$db"
  mkdir -p "$db"
  tar -xzf "$snapshot" -C "$db" --strip-components=1
  git -C "$db" init --quiet --initial-branch=main
  git -C "$db" remote add origin "$url"
  git -C "$db" add --all
  GIT_AUTHOR_DATE="$snapshot_date" GIT_COMMITTER_DATE="$snapshot_date" \
    git -C "$db" -c user.name=regnotify -c user.email=regnotify@localhost \
    commit --quiet --message "advisory-db snapshot $snapshot_commit"
  # cargo-deny dates a clone by the newer of its HEAD commit and its .git/HEAD file: both say the
  # snapshot's date, so `maximum-db-staleness` measures the snapshot's age, not this copy's.
  touch -d "$snapshot_date" "$db/.git/HEAD"
fi
cargo fetch --locked --quiet
exec cargo deny --offline check "$@"
