#!/usr/bin/env bash
# Installs and runs the real services RiskSense talks to, on this machine, without Docker:
#   - Apache Kafka 4.x, single KRaft node (broker + controller), jars fetched from Maven Central
#   - Redis, Debian's redis-server: one single instance, plus a three-shard Redis Cluster
#     (three masters, no replicas) for the cluster tests and benchmarks
#   - ONNX Runtime's shared library, taken from the PyPI onnxruntime wheel
#
#   scripts/services.sh up       install what is missing, start what is not running, wait until ready
#                                (Kafka, Redis and the Redis Cluster)
#   scripts/services.sh down     stop what this script started
#   scripts/services.sh status   say what answers where
#   scripts/services.sh install  install everything, start nothing
#   scripts/services.sh deps     build tools and ONNX Runtime only (what the demo needs)
#   scripts/services.sh redis-cluster-up     start the Redis Cluster nodes, form the cluster if it
#                                            is not formed yet, wait until every node says ok
#   scripts/services.sh redis-cluster-down   stop the Redis Cluster nodes (nodes.conf and AOF stay)
#   scripts/services.sh redis-cluster-restart-node PORT
#                                stop one cluster node (SIGTERM), start it again from its
#                                nodes.conf, wait until the cluster is ok again
#   (also kafka-up, kafka-down, redis-up, redis-down, onnxruntime, test-tools)
#
# Idempotent: running `up` twice leaves one broker, one Redis and one Redis Cluster. Everything
# it downloads or writes lives under .local/ (git-ignored) except Debian packages and Maven's
# ~/.m2 cache. Each cluster node keeps its state in .local/redis-cluster/<port>/.
#
# Environment:
#   RISKSENSE_KAFKA_PORT (9092)  RISKSENSE_KAFKA_CONTROLLER_PORT (9093)  RISKSENSE_REDIS_PORT (6379)
#   RISKSENSE_KAFKA_HEAP (1g)    RISKSENSE_REDIS_CLUSTER_PORTS ("7001 7002 7003", at least three)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL="$ROOT/.local"
KAFKA_PORT="${RISKSENSE_KAFKA_PORT:-9092}"
CONTROLLER_PORT="${RISKSENSE_KAFKA_CONTROLLER_PORT:-9093}"
REDIS_PORT="${RISKSENSE_REDIS_PORT:-6379}"
KAFKA_HEAP="${RISKSENSE_KAFKA_HEAP:-1g}"
KAFKA_DIR="$LOCAL/kafka"
REDIS_DIR="$LOCAL/redis"
REDIS_CLUSTER_DIR="$LOCAL/redis-cluster"
# Space- (or comma-) separated; the first port is the one clients are pointed at.
REDIS_CLUSTER_PORT_LIST="${RISKSENSE_REDIS_CLUSTER_PORTS:-7001 7002 7003}"
read -r -a REDIS_CLUSTER_PORTS <<<"${REDIS_CLUSTER_PORT_LIST//,/ }"
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

# Redis opens its port before it has loaded its AOF; until then it answers LOADING.
wait_redis_loaded() { # port seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    [ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ] && return 0
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
    --appendonly yes --appendfsync everysec --save "" --lazyfree-lazy-expire yes \
    --auto-aof-rewrite-min-size 1gb >/dev/null
  wait_port "$REDIS_PORT" 20 || die "redis did not open 127.0.0.1:$REDIS_PORT"
  wait_redis_loaded "$REDIS_PORT" 300 || die "redis on 127.0.0.1:$REDIS_PORT did not load its data within 5 min"
  log "redis: ready"
}

redis_down() {
  if [ -f "$REDIS_DIR/redis.pid" ]; then
    kill "$(cat "$REDIS_DIR/redis.pid")" 2>/dev/null || true
    rm -f "$REDIS_DIR/redis.pid"
    log "redis: stopped"
  fi
}

# ---------------------------------------------------------------- Redis Cluster
# Three masters (one per port, no replicas) on 127.0.0.1, each with its own directory under
# .local/redis-cluster/<port>/ holding nodes.conf, the AOF, the pidfile and the log. A node is
# never wiped when it starts, so one that was stopped (or killed by a test that restarts a
# shard) rejoins from its nodes.conf with the slots it had.
redis_cluster_ports_csv() { local IFS=,; echo "${REDIS_CLUSTER_PORTS[*]}"; }

redis_cluster_check_ports() {
  [ ${#REDIS_CLUSTER_PORTS[@]} -ge 3 ] ||
    die "redis-cluster: RISKSENSE_REDIS_CLUSTER_PORTS needs at least three ports (got '${REDIS_CLUSTER_PORT_LIST}')"
  local port
  for port in "${REDIS_CLUSTER_PORTS[@]}"; do
    [[ "$port" =~ ^[0-9]+$ ]] || die "redis-cluster: '$port' is not a port number"
    [ "$port" != "$REDIS_PORT" ] || die "redis-cluster: port $port is the single Redis's port"
  done
}

redis_cluster_is_port() { # port
  local port
  for port in "${REDIS_CLUSTER_PORTS[@]}"; do [ "$port" = "$1" ] && return 0; done
  return 1
}

# One field of CLUSTER INFO on a node ("" when the node does not answer or is not a cluster node).
redis_cluster_info() { # port field
  { redis-cli -h 127.0.0.1 -p "$1" cluster info 2>/dev/null || true; } |
    tr -d '\r' | sed -n "s/^$2://p"
}

redis_cluster_node_start() { # port
  local port="$1" dir="$REDIS_CLUSTER_DIR/$1"
  mkdir -p "$dir"
  log "redis-cluster: starting node on 127.0.0.1:$port"
  # Same persistence settings as the single Redis (see redis_up); nodes.conf is relative to --dir.
  redis-server --bind 127.0.0.1 --port "$port" --daemonize yes \
    --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
    --appendonly yes --appendfsync everysec --save "" --lazyfree-lazy-expire yes \
    --auto-aof-rewrite-min-size 1gb \
    --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 5000 >/dev/null
  if ! wait_port "$port" 20; then
    tail -n 20 "$dir/redis.log" >&2 || true
    die "redis-cluster: node did not open 127.0.0.1:$port"
  fi
  wait_redis_loaded "$port" 300 || die "redis-cluster: node 127.0.0.1:$port did not load its data within 5 min"
}

# True while a process runs; an exited one that nobody has reaped yet (a zombie: daemonized
# Redis is re-parented to PID 1, which may reap late) counts as gone.
pid_running() { # pid
  local state
  state="$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null || true)"
  [ -n "$state" ] && [ "$state" != Z ]
}

# The pid in a node's pidfile, only if that process is still a running redis-server (a stale
# pidfile must not make us signal some unrelated process that reused the pid).
redis_cluster_node_pid() { # port
  local pidfile="$REDIS_CLUSTER_DIR/$1/redis.pid" pid
  [ -f "$pidfile" ] || return 1
  pid="$(cat "$pidfile")"
  [[ "$pid" =~ ^[0-9]+$ ]] && pid_running "$pid" || return 1
  case "$(cat "/proc/$pid/comm" 2>/dev/null || true)" in
    redis-server*) echo "$pid" ;;
    *) return 1 ;;
  esac
}

redis_cluster_node_stop() { # port
  local port="$1" pid i
  if ! pid="$(redis_cluster_node_pid "$port")"; then
    rm -f "$REDIS_CLUSTER_DIR/$port/redis.pid"
    return 1
  fi
  # SIGTERM: Redis fsyncs the AOF and saves nodes.conf before it exits.
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 200; i++)); do port_open "$port" || break; sleep 0.1; done
  port_open "$port" && die "redis-cluster: node on 127.0.0.1:$port (pid $pid) still answers 20 s after SIGTERM"
  # Redis removes its pidfile on a clean exit; the process may outlive the listening socket by a
  # moment, and a second redis-server on the same dir must not start before it is gone.
  for ((i = 0; i < 100; i++)); do pid_running "$pid" || break; sleep 0.1; done
  rm -f "$REDIS_CLUSTER_DIR/$port/redis.pid"
  return 0
}

# True when every node reports cluster_state:ok with all 16384 slots served.
redis_cluster_all_ok() {
  local port
  for port in "${REDIS_CLUSTER_PORTS[@]}"; do
    [ "$(redis_cluster_info "$port" cluster_state)" = ok ] || return 1
    [ "$(redis_cluster_info "$port" cluster_slots_ok)" = 16384 ] || return 1
  done
}

redis_cluster_wait_ok() { # seconds
  local i
  for ((i = 0; i < $1 * 10; i++)); do
    redis_cluster_all_ok && return 0
    sleep 0.1
  done
  return 1
}

# True when every node knows all the others and all 16384 slots are assigned: the cluster was
# formed (its state may still be "fail" for a few seconds after the nodes restart).
redis_cluster_configured() {
  local port n=${#REDIS_CLUSTER_PORTS[@]}
  for port in "${REDIS_CLUSTER_PORTS[@]}"; do
    [ "$(redis_cluster_info "$port" cluster_known_nodes)" = "$n" ] || return 1
    [ "$(redis_cluster_info "$port" cluster_slots_assigned)" = 16384 ] || return 1
  done
}

redis_cluster_create() {
  local port addrs=() log_file="$REDIS_CLUSTER_DIR/create.log"
  for port in "${REDIS_CLUSTER_PORTS[@]}"; do
    # A node that knows other nodes, has slots or holds keys is left over from a create that
    # failed half way (or from another cluster): `--cluster create` refuses it, so empty it.
    if [ "$(redis_cluster_info "$port" cluster_known_nodes)" != 1 ] ||
      [ "$(redis_cluster_info "$port" cluster_slots_assigned)" != 0 ] ||
      [ "$(redis-cli -h 127.0.0.1 -p "$port" dbsize 2>/dev/null || true)" != 0 ]; then
      log "redis-cluster: resetting node 127.0.0.1:$port (FLUSHALL, CLUSTER RESET HARD)"
      redis-cli -h 127.0.0.1 -p "$port" flushall >/dev/null
      [ "$(redis-cli -h 127.0.0.1 -p "$port" cluster reset hard)" = OK ] ||
        die "redis-cluster: CLUSTER RESET HARD failed on 127.0.0.1:$port"
    fi
    addrs+=("127.0.0.1:$port")
  done
  log "redis-cluster: creating the cluster (${#addrs[@]} masters, no replicas)"
  if ! redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes >"$log_file" 2>&1; then
    cat "$log_file" >&2
    die "redis-cluster: redis-cli --cluster create failed"
  fi
}

redis_cluster_up() {
  install_redis
  redis_cluster_check_ports
  local port started=0
  for port in "${REDIS_CLUSTER_PORTS[@]}"; do
    if port_open "$port"; then
      log "redis-cluster: already answering on 127.0.0.1:$port, using it"
    else
      redis_cluster_node_start "$port"
      started=1
    fi
    { redis-cli -h 127.0.0.1 -p "$port" info cluster 2>/dev/null || true; } | grep -q '^cluster_enabled:1' ||
      die "redis-cluster: 127.0.0.1:$port answers but is not a cluster-enabled Redis"
  done
  local first="${REDIS_CLUSTER_PORTS[0]}"
  if [ "$(redis_cluster_info "$first" cluster_state)" = ok ] &&
    [ "$(redis_cluster_info "$first" cluster_known_nodes)" = ${#REDIS_CLUSTER_PORTS[@]} ]; then
    : # formed and serving
  elif redis_cluster_configured && redis_cluster_wait_ok 20; then
    # Formed before (nodes.conf); the nodes have found each other again.
    [ "$started" = 1 ] && log "redis-cluster: rejoined from nodes.conf"
  else
    if redis_cluster_configured; then
      log "redis-cluster: formed but state is '$(redis_cluster_info "$first" cluster_state)' after 20 s, creating it again"
    fi
    redis_cluster_create
  fi
  if ! redis_cluster_wait_ok 20; then
    for port in "${REDIS_CLUSTER_PORTS[@]}"; do
      log "redis-cluster: 127.0.0.1:$port state=$(redis_cluster_info "$port" cluster_state)" \
        "slots_ok=$(redis_cluster_info "$port" cluster_slots_ok)" \
        "known_nodes=$(redis_cluster_info "$port" cluster_known_nodes)"
    done
    die "redis-cluster: not every node reports cluster_state:ok with 16384 slots within 20 s"
  fi
  log "redis-cluster: ready on 127.0.0.1:$(redis_cluster_ports_csv)"
}

redis_cluster_down() {
  redis_cluster_check_ports
  local port stopped=()
  for port in "${REDIS_CLUSTER_PORTS[@]}"; do
    redis_cluster_node_stop "$port" && stopped+=("$port")
  done
  if [ ${#stopped[@]} -gt 0 ]; then
    log "redis-cluster: stopped $(IFS=,; echo "${stopped[*]}")"
  fi
}

redis_cluster_restart_node() { # port
  install_redis
  redis_cluster_check_ports
  local port="${1:-}"
  [ -n "$port" ] || die "usage: $0 redis-cluster-restart-node PORT"
  redis_cluster_is_port "$port" ||
    die "redis-cluster: $port is not one of the cluster ports ($(redis_cluster_ports_csv))"
  if port_open "$port"; then
    redis_cluster_node_stop "$port" ||
      die "redis-cluster: 127.0.0.1:$port answers but has no live pidfile in $REDIS_CLUSTER_DIR/$port (not started by this script?)"
    log "redis-cluster: node 127.0.0.1:$port stopped"
  fi
  redis_cluster_node_start "$port"
  redis_cluster_wait_ok 20 ||
    die "redis-cluster: state is '$(redis_cluster_info "$port" cluster_state)' 20 s after restarting 127.0.0.1:$port"
  log "redis-cluster: node 127.0.0.1:$port restarted, cluster ok"
}

redis_cluster_status() {
  local port up=() down=() state=ok s
  for port in "${REDIS_CLUSTER_PORTS[@]}"; do
    if port_open "$port"; then
      up+=("$port")
      s="$(redis_cluster_info "$port" cluster_state)"
      [ "$s" = ok ] || [ "$state" != ok ] || state="${s:-unknown}"
    else
      down+=("$port")
    fi
  done
  if [ ${#up[@]} -eq 0 ]; then
    echo "redis-cluster: down"
  elif [ ${#down[@]} -eq 0 ]; then
    echo "redis-cluster: up on 127.0.0.1:$(redis_cluster_ports_csv) (state $state)"
  else
    echo "redis-cluster: partly up on 127.0.0.1:$(IFS=,; echo "${up[*]}"), down on $(IFS=,; echo "${down[*]}") (state $state)"
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
  redis_cluster_status
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
  up) install_build_deps; install_onnxruntime; redis_up; redis_cluster_up; kafka_up ;;
  down) kafka_down; redis_cluster_down; redis_down ;;
  status) status ;;
  kafka-up) kafka_up ;;
  kafka-down) kafka_down ;;
  redis-up) redis_up ;;
  redis-down) redis_down ;;
  redis-cluster-up) redis_cluster_up ;;
  redis-cluster-down) redis_cluster_down ;;
  redis-cluster-restart-node) redis_cluster_restart_node "${2:-}" ;;
  onnxruntime) install_onnxruntime ;;
  *) echo "usage: $0 up|down|status|install|deps|test-tools|kafka-up|kafka-down|redis-up|redis-down|redis-cluster-up|redis-cluster-down|redis-cluster-restart-node PORT|onnxruntime" >&2; exit 2 ;;
esac
