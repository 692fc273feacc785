#!/usr/bin/env bash
# regnotify beside the same job written on Confluent Parallel Consumer (bench/parallel-consumer),
# on one machine, against one real Apache Kafka broker (scripts/kafka-local.sh) and one
# `regnotify simulator`, on the same input events:
#
#   scripts/bench-peers.sh                 # latency 0 and 50 ms, 64 in flight, 20,000 events
#
# For each latency it starts a fresh simulator, then runs regnotify (`regnotify measure`, the
# service as `regnotify run` starts it) and the peer in turn. Each reads the same input topic
# from the beginning in its own consumer group and writes its own result topic. Each measures
# itself over --events outcomes after --warmup outcomes (JIT, connections, group join left out):
# events/s, notify p50/p99 (the HTTP call alone), CPU seconds of its whole process per 1,000
# events, peak RSS. The simulator runs in its own process and counts for neither. Then the table
# and the ratios (regnotify / peer).
#
# Needs java 17+, mvn, python3 and cargo. Maven fetches Parallel Consumer and Avro from Maven
# Central into ~/.m2 the first time. Nothing here runs in CI: it is a manual benchmark.
#
# Environment:
#   BENCH_EVENTS (20000), BENCH_WARMUP (5000), BENCH_MERCHANTS (1000), BENCH_IN_FLIGHT (64),
#   BENCH_LATENCIES ("0 50"), BENCH_PARTITIONS (4), BENCH_ORDER ("regnotify peer": who runs
#   first at each latency), REGNOTIFY_BIN (default: target/release/regnotify, built if missing),
#   BENCH_JSON_OUT (also write every measurement as JSON lines to this file),
#   BENCH_REGNOTIFY_CONSUMER (TOML lines added to regnotify's [kafka.consumer], e.g.
#   '"queued.max.messages.kbytes" = "4096"'), BENCH_REGNOTIFY_ARGS (more `regnotify measure`
#   arguments, e.g. "--set processing.max_pending_per_partition=1000").
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
events="${BENCH_EVENTS:-20000}"
warmup="${BENCH_WARMUP:-5000}"
merchants="${BENCH_MERCHANTS:-1000}"
in_flight="${BENCH_IN_FLIGHT:-64}"
latencies="${BENCH_LATENCIES:-0 50}"
partitions="${BENCH_PARTITIONS:-4}"
order="${BENCH_ORDER:-regnotify peer}"
peer_dir="$repo/bench/parallel-consumer"

log() { printf 'bench-peers: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}
for tool in java mvn python3 cargo; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
done

bin="${REGNOTIFY_BIN:-$repo/target/release/regnotify}"
if [[ -z "${REGNOTIFY_BIN:-}" ]]; then
  log "building regnotify (release)"
  (cd "$repo" && cargo build --release --quiet)
fi
[[ -x "$bin" ]] || die "no regnotify binary at $bin"
# Not a setting: regnotify warns about every REGNOTIFY_* variable it does not know.
unset REGNOTIFY_BIN

log "building the Parallel Consumer peer (mvn)"
(cd "$peer_dir" && mvn -q -B -ntp compile dependency:copy-dependencies) >&2
peer_cp="$peer_dir/target/classes:$peer_dir/target/libs/*"

work="$(mktemp -d "${TMPDIR:-/tmp}/regnotify-bench-peers.XXXXXX")"
simulator_pid=""
# The broker's own run folder (its own pid file, data and port), never a broker someone else
# started; passed to the script alone, since regnotify refuses unknown REGNOTIFY_* variables.
kafka_local() { REGNOTIFY_TEST_KAFKA_RUN_DIR="$work/kafka" "$here/kafka-local.sh" "$@"; }
cleanup() {
  if [[ -n "$simulator_pid" ]]; then kill "$simulator_pid" 2>/dev/null || true; fi
  kafka_local stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

log "starting Kafka (scripts/kafka-local.sh)"
bootstrap="$(kafka_local start)"
log "broker at $bootstrap"

"$bin" keygen --out "$work/keys" >/dev/null
keys="$work/keys"
input_topic="bench.decided"
topics=("$input_topic")
for latency in $latencies; do
  topics+=("bench.regnotify-result-$latency" "bench.regnotify-dlq-$latency" "bench.peer-result-$latency")
done
java -cp "$peer_cp" regnotify.peer.CreateTopics "$bootstrap" "$partitions" "${topics[@]}"

total=$((warmup + events))
log "producing $total events over $merchants merchants (regnotify produce, Avro single-object)"
python3 - "$total" "$merchants" >"$work/events.jsonl" <<'PY'
import json, sys
total, merchants = int(sys.argv[1]), int(sys.argv[2])
for i in range(total):
    print(json.dumps({
        "referenceMerchantId": f"M-{i % merchants:06d}",
        "registrationRequestId": f"R-{i:09d}",
        "decision": "APPROVED",
    }))
PY
cat >"$work/produce.toml" <<EOF
[kafka]
bootstrap_servers = "$bootstrap"
input_topic = "$input_topic"
input_encoding = "single-object"
EOF
"$bin" produce --config "$work/produce.toml" --input "$work/events.jsonl" >&2

load() { cut -d' ' -f1-3 /proc/loadavg; }
results="$work/results.jsonl"
: >"$results"

run_regnotify() {
  local latency=$1 port=$2
  cat >"$work/regnotify-$latency.toml" <<EOF
[kafka]
bootstrap_servers = "$bootstrap"
group_id = "bench-regnotify-$latency"
input_topic = "$input_topic"
result_topic = "bench.regnotify-result-$latency"
dlq_topic = "bench.regnotify-dlq-$latency"

[kafka.consumer]
"auto.offset.reset" = "earliest"
${BENCH_REGNOTIFY_CONSUMER:-}

[alipayplus]
base_url = "http://127.0.0.1:$port"
allow_insecure_http = true
client_id = "BENCH_CLIENT"
private_key_file = "$keys/mpp_private_key.pem"
alipayplus_public_key_file = "$keys/alipayplus_public_key.pem"

[processing]
max_in_flight = $in_flight

[admin]
listen = "127.0.0.1:0"
EOF
  # shellcheck disable=SC2086 # BENCH_REGNOTIFY_ARGS is split into words on purpose
  "$bin" measure --config "$work/regnotify-$latency.toml" --warmup "$warmup" --events "$events" \
    ${BENCH_REGNOTIFY_ARGS:-}
}

run_peer() {
  local latency=$1 port=$2
  java -cp "$peer_cp" regnotify.peer.NotifyPeer \
    --bootstrap "$bootstrap" --group "bench-peer-$latency" \
    --input-topic "$input_topic" --result-topic "bench.peer-result-$latency" \
    --max-concurrency "$in_flight" --warmup "$warmup" --events "$events" \
    --base-url "http://127.0.0.1:$port" --client-id BENCH_CLIENT \
    --private-key "$keys/mpp_private_key.pem" \
    --alipayplus-public-key "$keys/alipayplus_public_key.pem" \
    --schemas "$repo/schemas" 2>"$work/peer-$latency.log" ||
    {
      tail -20 "$work/peer-$latency.log" >&2
      return 1
    }
}

for latency in $latencies; do
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  "$bin" simulator --listen "127.0.0.1:$port" --latency-ms "$latency" --client-id BENCH_CLIENT \
    --private-key-file "$keys/alipayplus_private_key.pem" \
    --mpp-public-key-file "$keys/mpp_public_key.pem" 2>"$work/simulator-$latency.log" &
  simulator_pid=$!
  for _ in $(seq 100); do
    grep -q "listening" "$work/simulator-$latency.log" 2>/dev/null && break
    sleep 0.1
  done
  for who in $order; do
    before="$(load)"
    log "latency $latency ms: $who (load average $before)"
    line="$("run_$who" "$latency" "$port" | tail -1)"
    after="$(load)"
    python3 - "$line" "$who" "$latency" "$before" "$after" >>"$results" <<'PY'
import json, sys
line, who, latency, before, after = sys.argv[1:]
record = json.loads(line)
record.update(side=who, latency_ms=int(latency), load_before=before, load_after=after)
print(json.dumps(record))
PY
  done
  kill "$simulator_pid" 2>/dev/null || true
  wait "$simulator_pid" 2>/dev/null || true
  simulator_pid=""
done

if [[ -n "${BENCH_JSON_OUT:-}" ]]; then cp "$results" "$BENCH_JSON_OUT"; fi
python3 - "$results" "$events" "$warmup" "$merchants" "$in_flight" "$partitions" <<'PY'
import json, sys
path, events, warmup, merchants, in_flight, partitions = sys.argv[1:]
rows = [json.loads(line) for line in open(path)]
print(f"\n{events} events measured after {warmup} warm-up, {merchants} merchants, "
      f"{partitions} partitions, {in_flight} in flight, KEY ordering; one real broker\n")
print(f"{'latency':>7}  {'side':<10} {'events/s':>9} {'notify p50':>11} {'notify p99':>11} "
      f"{'CPU s/1k ev':>11} {'peak RSS':>9}  load before → after")
for r in rows:
    cpu = r.get("cpu_seconds_per_1000_events")
    print(f"{r['latency_ms']:>5}ms  {r['side']:<10} {r['events_per_second']:>9.0f} "
          f"{r['notify_p50_ms']:>9.1f}ms {r['notify_p99_ms']:>9.1f}ms "
          f"{cpu if cpu is not None else float('nan'):>11.3f} {r['peak_rss_bytes'] / 1e6:>7.0f}MB  "
          f"{r['load_before']} → {r['load_after']}")
print("\nratios, regnotify / Parallel Consumer (targets: events/s ≥ 1.5, events per CPU-second ≥ 2, "
      "notify p99 < 1, RSS a fraction)")
for latency in sorted({r["latency_ms"] for r in rows}):
    ours = next((r for r in rows if r["latency_ms"] == latency and r["side"] == "regnotify"), None)
    peer = next((r for r in rows if r["latency_ms"] == latency and r["side"] == "peer"), None)
    if not ours or not peer:
        continue
    per_cpu = (peer["cpu_seconds_per_1000_events"] / ours["cpu_seconds_per_1000_events"]
               if ours.get("cpu_seconds_per_1000_events") else float("nan"))
    print(f"{latency:>5}ms  events/s {ours['events_per_second'] / peer['events_per_second']:.2f}   "
          f"events per CPU-second {per_cpu:.2f}   "
          f"notify p99 {ours['notify_p99_ms'] / max(peer['notify_p99_ms'], 1e-9):.2f}   "
          f"peak RSS {ours['peak_rss_bytes'] / peer['peak_rss_bytes']:.2f}")
print("\n" + json.dumps(rows))
PY
