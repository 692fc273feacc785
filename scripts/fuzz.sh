#!/usr/bin/env bash
# Fuzzes one target of fuzz/ (or all, one after the other) for SECONDS each:
#
#   scripts/fuzz.sh decode_input 600
#   scripts/fuzz.sh all 600
#
# Needs the nightly toolchain and cargo-fuzz (`rustup toolchain install nightly`, `cargo install
# --locked cargo-fuzz`). One libFuzzer process per target (the machines have two cores). It starts
# from the committed seeds in fuzz/corpus/TARGET and keeps what it learns in
# fuzz/work/corpus/TARGET (not committed); a crash, hang (10 s) or out-of-memory (2 GiB) input is
# written to fuzz/artifacts/TARGET/ and stops that target. Each such input becomes a fixed bug
# and a file of fuzz/corpus/TARGET, which tests/it/fuzz_corpus.rs replays in every `cargo test`.
# The last lines of each run (executions, coverage) go to fuzz/work/TARGET.log.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

usage() {
  echo "usage: scripts/fuzz.sh TARGET|all SECONDS   (targets: $(cargo +nightly fuzz list | tr '\n' ' '))" >&2
  exit 2
}
[[ $# -eq 2 && "$2" =~ ^[0-9]+$ ]] || usage
if [[ "$1" == all ]]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
else
  cargo +nightly fuzz list | grep -qx "$1" || usage
  targets=("$1")
fi
seconds="$2"

# Release code with debug assertions and overflow checks; no sanitizer: regnotify forbids unsafe
# code, and without ASan the fuzzer runs several times faster.
flags=(--release --debug-assertions --sanitizer none)
cargo +nightly fuzz build "${flags[@]}"
status=0
for target in "${targets[@]}"; do
  mkdir -p "work/corpus/$target"
  echo "==> fuzzing $target for ${seconds}s"
  if ! cargo +nightly fuzz run "${flags[@]}" "$target" "work/corpus/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 >"work/$target.log" 2>&1; then
    status=1
    echo "$target: FAILED, see fuzz/work/$target.log and fuzz/artifacts/$target/"
  fi
  grep -E '^#[0-9]+.*(DONE|pulse|NEW|REDUCE)' "work/$target.log" | tail -n 1 || true
  grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "work/$target.log" || true
done
exit "$status"
