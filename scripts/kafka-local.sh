#!/usr/bin/env bash
# A throwaway single-node Apache Kafka (KRaft, broker and controller in one JVM) on 127.0.0.1, for
# running the integration suite against a real broker:
#
#   export REGNOTIFY_TEST_BOOTSTRAP=$(scripts/kafka-local.sh start)
#   cargo test --test it -- pipeline:: crash::
#   scripts/kafka-local.sh stop
#
# The broker's jars come from Maven Central only (scripts/kafka/pom.xml, fetched with Maven into a
# cache outside the repository; later runs reuse it). Needs java (17+), mvn and python3.
#
#   start    fetch if needed, format, start, wait until the broker answers; prints host:port
#   stop     stop the broker started by `start` and delete its data
#   status   prints host:port and exits 0 when running, exits 1 otherwise
#   fetch    only fill the jar cache; prints its folder
#   kill     SIGKILL the broker's JVM, as a crash would; keeps its data, config and ports, so
#            `restart` brings the same broker back (fault tests: tests/it/faults.rs)
#   restart  start the broker stopped by `kill` again, same ports and data; waits until it
#            answers and prints host:port
#
# Environment (named REGNOTIFY_TEST_KAFKA_*: the service refuses to start beside a variable that
# begins like one of its settings tables, such as REGNOTIFY_KAFKA_…, so the names this script
# once read, REGNOTIFY_KAFKA_CACHE, _RUN_DIR, _HEAP and _START_TIMEOUT, are read only as fallbacks):
#   REGNOTIFY_TEST_KAFKA_CACHE    jar cache (default ${XDG_CACHE_HOME:-$HOME/.cache}/regnotify/kafka-VERSION)
#   REGNOTIFY_TEST_KAFKA_RUN_DIR  pid file, config, logs and data (default ${XDG_CACHE_HOME:-$HOME/.cache}/regnotify/kafka-run);
#                                 give each broker on one machine its own, and export it to the tests
#                                 that stop the broker (tests/it/faults.rs runs this script)
#   REGNOTIFY_TEST_KAFKA_PORT     the broker's port (default: a free one picked at start)
#   REGNOTIFY_TEST_KAFKA_HEAP     JVM heap options (default -Xms256m -Xmx512m)
#   REGNOTIFY_TEST_KAFKA_START_TIMEOUT  seconds to wait for the broker (default 120)
#
# Everything but the bootstrap address goes to stderr, so `$(... start)` captures one line.
set -euo pipefail

KAFKA_VERSION=4.1.0 # keep in step with <kafka.version> in scripts/kafka/pom.xml
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pom="$here/kafka/pom.xml"
cache_base="${XDG_CACHE_HOME:-$HOME/.cache}/regnotify"
cache="${REGNOTIFY_TEST_KAFKA_CACHE:-${REGNOTIFY_KAFKA_CACHE:-$cache_base/kafka-$KAFKA_VERSION}}"
run_dir="${REGNOTIFY_TEST_KAFKA_RUN_DIR:-${REGNOTIFY_KAFKA_RUN_DIR:-$cache_base/kafka-run}}"
heap="${REGNOTIFY_TEST_KAFKA_HEAP:-${REGNOTIFY_KAFKA_HEAP:--Xms256m -Xmx512m}}"
start_timeout="${REGNOTIFY_TEST_KAFKA_START_TIMEOUT:-${REGNOTIFY_KAFKA_START_TIMEOUT:-120}}"
pid_file="$run_dir/kafka.pid"
bootstrap_file="$run_dir/bootstrap"
fixed_port="${REGNOTIFY_TEST_KAFKA_PORT:-}"

log() { printf 'kafka-local: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

need() {
  command -v "$1" >/dev/null 2>&1 || die "$1 is required ($2)"
}

# Fills $cache/libs with kafka_2.13 and its runtime dependencies, once.
fetch() {
  if [[ -f "$cache/.complete" ]]; then
    return
  fi
  need mvn "the broker's jars are fetched from Maven Central"
  need java "the broker is a JVM program"
  log "fetching Apache Kafka $KAFKA_VERSION jars into $cache"
  rm -rf "$cache/libs"
  mkdir -p "$cache"
  # copy-dependencies writes nothing next to the pom, so the repository stays clean.
  if ! mvn -q -B -ntp -f "$pom" dependency:copy-dependencies \
    -Dkafka.version="$KAFKA_VERSION" \
    -DincludeScope=runtime \
    -DoutputDirectory="$cache/libs" >"$cache/fetch.log" 2>&1; then
    cat "$cache/fetch.log" >&2
    die "mvn could not fetch the broker's jars (output above)"
  fi
  [[ -f "$cache/libs/kafka_2.13-$KAFKA_VERSION.jar" ]] || die "kafka_2.13-$KAFKA_VERSION.jar missing after fetch"
  touch "$cache/.complete"
}

free_port() {
  python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

running_pid() {
  [[ -f "$pid_file" ]] || return 1
  local pid
  pid="$(cat "$pid_file")"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  # Only a JVM this script started (a recycled pid must not be killed).
  grep -q "kafka.Kafka" "/proc/$pid/cmdline" 2>/dev/null || return 1
  printf '%s\n' "$pid"
}

# Asks the broker for its metadata (Metadata v4 over the plain protocol); succeeds once it lists
# at least one broker, i.e. the node is registered and serving requests.
broker_answers() {
  python3 - "$1" "$2" <<'PY'
import socket, struct, sys
host, port = sys.argv[1], int(sys.argv[2])
def string(s):
    b = s.encode()
    return struct.pack(">h", len(b)) + b
# header v1: api_key=3 (Metadata), api_version=4, correlation_id, client_id
# body v4: topics=null (-1: all topics), allow_auto_topic_creation=false
body = struct.pack(">hhi", 3, 4, 7) + string("kafka-local") + struct.pack(">ib", -1, 0)
try:
    with socket.create_connection((host, port), timeout=3) as s:
        s.settimeout(5)
        s.sendall(struct.pack(">i", len(body)) + body)
        def read(n):
            data = b""
            while len(data) < n:
                chunk = s.recv(n - len(data))
                if not chunk:
                    raise EOFError
                data += chunk
            return data
        size = struct.unpack(">i", read(4))[0]
        payload = read(size)
    correlation, _throttle, brokers = struct.unpack(">iii", payload[:12])
    sys.exit(0 if correlation == 7 and brokers >= 1 else 1)
except Exception:
    sys.exit(1)
PY
}

start() {
  local pid
  if pid="$(running_pid)"; then
    log "already running (pid $pid)"
    cat "$bootstrap_file"
    return
  fi
  need python3 "to pick free ports and probe the broker"
  need java "the broker is a JVM program"
  fetch
  rm -rf "$run_dir"
  mkdir -p "$run_dir/data" "$run_dir/logs"
  local port controller_port
  port="${fixed_port:-$(free_port)}"
  controller_port="$(free_port)"
  while [[ "$controller_port" == "$port" ]]; do controller_port="$(free_port)"; done
  cat >"$run_dir/server.properties" <<EOF
# Written by scripts/kafka-local.sh: one KRaft node, broker and controller, for tests only.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$run_dir/data
num.partitions=1
default.replication.factor=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.retention.check.interval.ms=10000
EOF
  cat >"$run_dir/log4j2.properties" <<EOF
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $run_dir/logs/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.controller.name = kafka.controller
logger.controller.level = INFO
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
EOF
  local -a java_opts
  java_options
  local classpath="$cache/libs/*"
  local cluster_id
  cluster_id="$(java -cp "$classpath" "${java_opts[@]}" kafka.tools.StorageTool random-uuid 2>>"$run_dir/logs/storage.log")" ||
    die "StorageTool random-uuid failed: $(tail -n 20 "$run_dir/logs/storage.log")"
  java -cp "$classpath" "${java_opts[@]}" kafka.tools.StorageTool format \
    -t "$cluster_id" -c "$run_dir/server.properties" >>"$run_dir/logs/storage.log" 2>&1 ||
    die "StorageTool format failed: $(tail -n 20 "$run_dir/logs/storage.log")"
  printf '%s\n' "$port" >"$run_dir/port"
  log "starting Apache Kafka $KAFKA_VERSION on 127.0.0.1:$port (controller $controller_port, logs in $run_dir/logs)"
  launch "$port"
  printf '127.0.0.1:%s\n' "$port" >"$bootstrap_file"
  log "ready (pid $(cat "$pid_file"))"
  cat "$bootstrap_file"
}

java_options() {
  # shellcheck disable=SC2206 # heap options are words on purpose
  java_opts=($heap -XX:+UseG1GC -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$run_dir/log4j2.properties"
    "-Dkafka.logs.dir=$run_dir/logs")
}

# Starts the JVM on the formatted run dir and waits until the broker on port $1 answers; on
# failure prints the end of its logs and exits 1 (after stopping it when it hangs).
launch() {
  local port=$1 pid
  local -a java_opts
  java_options
  nohup java -cp "$cache/libs/*" "${java_opts[@]}" kafka.Kafka "$run_dir/server.properties" \
    >>"$run_dir/logs/kafka.out" 2>&1 </dev/null &
  pid=$!
  printf '%s\n' "$pid" >"$pid_file"
  local deadline=$((SECONDS + start_timeout))
  until broker_answers 127.0.0.1 "$port"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "the broker exited during start-up; last lines of its logs:"
      tail -n 40 "$run_dir/logs/kafka.out" "$run_dir/logs/server.log" >&2 2>/dev/null || true
      rm -f "$pid_file"
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      log "the broker did not answer within ${start_timeout}s; last lines of its log:"
      tail -n 40 "$run_dir/logs/server.log" >&2 2>/dev/null || true
      stop
      exit 1
    fi
    sleep 0.5
  done
}

kill_broker() {
  local pid
  pid="$(running_pid)" || die "no broker of $run_dir is running"
  log "killing the broker (pid $pid, SIGKILL); its data stays for restart"
  kill -KILL "$pid"
  local waited=0
  while kill -0 "$pid" 2>/dev/null && ((waited < 100)); do
    sleep 0.1
    waited=$((waited + 1))
  done
  kill -0 "$pid" 2>/dev/null && die "pid $pid still exists after SIGKILL"
  rm -f "$pid_file"
}

restart() {
  local pid
  if pid="$(running_pid)"; then
    die "the broker is running (pid $pid); restart follows kill"
  fi
  [[ -f "$run_dir/server.properties" && -d "$run_dir/data" && -f "$bootstrap_file" ]] ||
    die "nothing to restart in $run_dir (start it first)"
  local port
  port="$(cat "$run_dir/port")"
  log "restarting Apache Kafka on 127.0.0.1:$port with the data in $run_dir/data"
  launch "$port"
  log "ready again (pid $(cat "$pid_file"))"
  cat "$bootstrap_file"
}

stop() {
  local pid
  if pid="$(running_pid)"; then
    log "stopping the broker (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local waited=0
    while kill -0 "$pid" 2>/dev/null && ((waited < 60)); do
      sleep 0.5
      waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "still running after 30s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  else
    log "not running"
  fi
  rm -f "$pid_file" "$bootstrap_file" "$run_dir/port"
  # The data goes; the logs stay for a look after a failed run (the next start replaces them).
  rm -rf "$run_dir/data"
}

status() {
  local pid
  if pid="$(running_pid)" && [[ -f "$bootstrap_file" ]]; then
    log "running (pid $pid)"
    cat "$bootstrap_file"
  else
    log "not running"
    return 1
  fi
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
kill) kill_broker ;;
restart) restart ;;
fetch)
  fetch
  printf '%s\n' "$cache"
  ;;
*)
  printf 'usage: %s start|stop|status|fetch|kill|restart\n' "$0" >&2
  exit 2
  ;;
esac
