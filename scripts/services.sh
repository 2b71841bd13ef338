#!/usr/bin/env bash
# Installs and runs the real services RiskSense talks to, on this machine, without Docker:
#   - Apache Kafka 4.x, single KRaft node (broker + controller), jars fetched from Maven Central
#   - Redis, Debian's redis-server
#   - ONNX Runtime's shared library, taken from the PyPI onnxruntime wheel
#
#   scripts/services.sh up       install what is missing, start what is not running, wait until ready
#   scripts/services.sh down     stop what this script started
#   scripts/services.sh status   say what answers where
#   scripts/services.sh install  install everything, start nothing
#   scripts/services.sh deps     build tools and ONNX Runtime only (what the demo needs)
#
# Idempotent: running `up` twice leaves one broker and one Redis. Everything it downloads or
# writes lives under .local/ (git-ignored) except Debian packages and Maven's ~/.m2 cache.
#
# Environment:
#   RISKSENSE_KAFKA_PORT (9092)  RISKSENSE_KAFKA_CONTROLLER_PORT (9093)  RISKSENSE_REDIS_PORT (6379)
#   RISKSENSE_KAFKA_HEAP (1g)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL="$ROOT/.local"
KAFKA_PORT="${RISKSENSE_KAFKA_PORT:-9092}"
CONTROLLER_PORT="${RISKSENSE_KAFKA_CONTROLLER_PORT:-9093}"
REDIS_PORT="${RISKSENSE_REDIS_PORT:-6379}"
KAFKA_HEAP="${RISKSENSE_KAFKA_HEAP:-1g}"
KAFKA_DIR="$LOCAL/kafka"
REDIS_DIR="$LOCAL/redis"
ORT_VERSION="1.31.1"
ORT_DIR="$LOCAL/onnxruntime"

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] error: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds what
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    port_open "$1" && return 0
    sleep 0.1
  done
  return 1
}

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "need Debian packages: ${missing[*]} (no apt-get here)"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  log "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# ---------------------------------------------------------------- build tools
install_build_deps() {
  # rdkafka builds librdkafka from source (Debian's 2.0.2 is too old for the crate).
  apt_install gcc g++ make pkg-config zlib1g-dev libssl-dev
}

# ---------------------------------------------------------------- test and bench tools
install_test_tools() {
  # The dashboard test drives Debian's Chromium with playwright-core (from npm, pinned in
  # tests/browser/package-lock.json); the HTTP benchmark uses wrk.
  apt_install chromium wrk openssl
  command -v node >/dev/null || apt_install nodejs npm
  if [ ! -d "$ROOT/tests/browser/node_modules/playwright-core" ]; then
    log "installing playwright-core (npm) for the dashboard test"
    (cd "$ROOT/tests/browser" && npm ci --no-audit --no-fund --silent)
  fi
}

# ---------------------------------------------------------------- Kafka
install_kafka() {
  command -v java >/dev/null || die "java not found: install a JDK 17 (apt-get install openjdk-17-jre-headless)"
  if [ -f "$KAFKA_DIR/libs/.complete" ]; then return 0; fi
  command -v mvn >/dev/null || apt_install maven
  log "fetching Apache Kafka jars from Maven Central"
  rm -rf "$KAFKA_DIR/libs"
  mkdir -p "$KAFKA_DIR/libs"
  mvn -q -B -f "$ROOT/docker/kafka/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$KAFKA_DIR/libs" >&2 ||
    die "maven could not fetch Kafka (see output above)"
  touch "$KAFKA_DIR/libs/.complete"
}

kafka_java() { # main-class args...
  java -Xms"$KAFKA_HEAP" -Xmx"$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true \
    -Dkafka.logs.dir="$KAFKA_DIR/logs" \
    -Dlog4j2.configurationFile="$ROOT/docker/kafka/log4j2.properties" \
    -cp "$KAFKA_DIR/libs/*" "$@"
}

write_kafka_config() {
  mkdir -p "$KAFKA_DIR/logs"
  cat >"$KAFKA_DIR/server.properties" <<EOF
# Written by scripts/services.sh: one node that is both KRaft controller and broker.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DIR/data
num.partitions=4
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.retention.hours=24
log.segment.bytes=268435456
message.max.bytes=16777216
EOF
}

kafka_up() {
  install_kafka
  if port_open "$KAFKA_PORT"; then
    log "kafka: something already answers on 127.0.0.1:$KAFKA_PORT, using it"
    return 0
  fi
  write_kafka_config
  if [ ! -f "$KAFKA_DIR/data/meta.properties" ]; then
    log "kafka: formatting KRaft storage"
    local cluster_id
    cluster_id="$(kafka_java kafka.tools.StorageTool random-uuid | tail -n 1)"
    kafka_java kafka.tools.StorageTool format -t "$cluster_id" -c "$KAFKA_DIR/server.properties" \
      >"$KAFKA_DIR/logs/format.log" 2>&1 || { cat "$KAFKA_DIR/logs/format.log" >&2; die "kafka storage format failed"; }
  fi
  log "kafka: starting broker on 127.0.0.1:$KAFKA_PORT"
  nohup bash -c "$(declare -f kafka_java); KAFKA_HEAP=$KAFKA_HEAP KAFKA_DIR='$KAFKA_DIR' ROOT='$ROOT' \
    kafka_java kafka.Kafka '$KAFKA_DIR/server.properties'" \
    >"$KAFKA_DIR/logs/stdout.log" 2>&1 &
  echo $! >"$KAFKA_DIR/kafka.pid"
  if ! wait_port "$KAFKA_PORT" 90; then
    tail -n 40 "$KAFKA_DIR/logs/stdout.log" "$KAFKA_DIR/logs/server.log" >&2 || true
    die "kafka did not open 127.0.0.1:$KAFKA_PORT within 90 s"
  fi
  # The port opens before the broker has registered with its controller; wait for the
  # "started" line so the first client request does not race the startup.
  local i
  for ((i = 0; i < 600; i++)); do
    grep -q "Kafka Server started\|\[KafkaRaftServer nodeId=1\] Kafka Server started" \
      "$KAFKA_DIR/logs/server.log" 2>/dev/null && break
    sleep 0.1
  done
  log "kafka: ready"
}

kafka_down() {
  if [ -f "$KAFKA_DIR/kafka.pid" ]; then
    local pid
    pid="$(cat "$KAFKA_DIR/kafka.pid")"
    # The pid is the bash wrapper; its java child holds the port.
    pkill -TERM -P "$pid" 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 300; i++)); do port_open "$KAFKA_PORT" || break; sleep 0.1; done
    rm -f "$KAFKA_DIR/kafka.pid"
    log "kafka: stopped"
  fi
}

# ---------------------------------------------------------------- Redis
install_redis() {
  command -v redis-server >/dev/null || apt_install redis-server
}

redis_up() {
  install_redis
  if port_open "$REDIS_PORT"; then
    log "redis: already answering on 127.0.0.1:$REDIS_PORT, using it"
    return 0
  fi
  mkdir -p "$REDIS_DIR"
  log "redis: starting on 127.0.0.1:$REDIS_PORT"
  # Append-only persistence so a Redis restart keeps what the engine wrote (the engine's
  # offsets are committed only after Redis acknowledged the data). The log is rewritten
  # once it passes 1 GiB and doubled, not from 64 MiB on: each rewrite forks Redis (a
  # stall of tens of ms) and a child that copies the whole dataset, which on 2 shared
  # cores costs the stream a core for seconds (BENCHMARKS.md, streaming latency).
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes \
    --dir "$REDIS_DIR" --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" \
    --appendonly yes --appendfsync everysec --save "" \
    --auto-aof-rewrite-min-size 1gb >/dev/null
  wait_port "$REDIS_PORT" 20 || die "redis did not open 127.0.0.1:$REDIS_PORT"
  log "redis: ready"
}

redis_down() {
  if [ -f "$REDIS_DIR/redis.pid" ]; then
    kill "$(cat "$REDIS_DIR/redis.pid")" 2>/dev/null || true
    rm -f "$REDIS_DIR/redis.pid"
    log "redis: stopped"
  fi
}

# ---------------------------------------------------------------- ONNX Runtime
install_onnxruntime() {
  local lib="$ORT_DIR/libonnxruntime.so.$ORT_VERSION"
  if [ ! -f "$lib" ]; then
    command -v python3 >/dev/null || die "python3 (with pip) is needed to fetch ONNX Runtime"
    command -v unzip >/dev/null || apt_install unzip
    log "onnxruntime: fetching the onnxruntime==$ORT_VERSION wheel from PyPI"
    local tmp
    tmp="$(mktemp -d)"
    python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \
      --python-version 3.11 -d "$tmp" "onnxruntime==$ORT_VERSION" >&2 ||
      die "pip could not download onnxruntime==$ORT_VERSION"
    mkdir -p "$ORT_DIR"
    unzip -q -o -j "$tmp"/onnxruntime-*.whl "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" -d "$ORT_DIR"
    rm -rf "$tmp"
  fi
  ln -sf "libonnxruntime.so.$ORT_VERSION" "$ORT_DIR/libonnxruntime.so"
  # A copy beside the built executables, so `target/*/risksense` finds it even when the
  # source tree has moved (the binary also looks in this .local/ folder).
  local profile
  for profile in debug release; do
    if [ -d "$ROOT/target/$profile" ]; then
      cp -f "$lib" "$ROOT/target/$profile/libonnxruntime.so"
    fi
  done
}

# ---------------------------------------------------------------- commands
status() {
  if port_open "$KAFKA_PORT"; then echo "kafka: up on 127.0.0.1:$KAFKA_PORT"; else echo "kafka: down"; fi
  if port_open "$REDIS_PORT"; then echo "redis: up on 127.0.0.1:$REDIS_PORT"; else echo "redis: down"; fi
  if [ -f "$ORT_DIR/libonnxruntime.so.$ORT_VERSION" ]; then
    echo "onnxruntime: $ORT_DIR/libonnxruntime.so.$ORT_VERSION"
  else
    echo "onnxruntime: missing (run scripts/services.sh install)"
  fi
}

case "${1:-}" in
  install) install_build_deps; install_kafka; install_redis; install_onnxruntime; install_test_tools ;;
  test-tools) install_test_tools ;;
  deps) install_build_deps; install_onnxruntime ;;
  up) install_build_deps; install_onnxruntime; redis_up; kafka_up ;;
  down) kafka_down; redis_down ;;
  status) status ;;
  kafka-up) kafka_up ;;
  kafka-down) kafka_down ;;
  redis-up) redis_up ;;
  redis-down) redis_down ;;
  onnxruntime) install_onnxruntime ;;
  *) echo "usage: $0 up|down|status|install|deps|test-tools|kafka-up|kafka-down|redis-up|redis-down|onnxruntime" >&2; exit 2 ;;
esac
