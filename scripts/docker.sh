#!/usr/bin/env bash
# The Docker image and compose stack, built and run with podman (no Docker engine here).
#
#   scripts/docker.sh install    podman, buildah, runc, debootstrap (apt); podman-compose (pip, .local/)
#   scripts/docker.sh base       debian:bookworm-slim from debootstrap (cached in .local/docker/)
#   scripts/docker.sh standins   local apache/kafka:4.1.1 and redis:7 (docker/standins/README.md)
#   scripts/docker.sh pack [debug|release]
#                                a stripped target/<profile>/risksense and ONNX Runtime into target/docker/
#   scripts/docker.sh image [debug|release]
#                                pack, then build risksense:latest (Dockerfile target `packed`)
#   scripts/docker.sh test [debug|release]
#                                all of the above, then docker/compose.yaml end to end (the test suite runs it)
#   scripts/docker.sh down       stop and remove the test's compose stack and its volumes
#
# Podman runs with the settings this machine needs (docker/podman/containers.conf: runc,
# cgroupfs, no default ulimits). Everything fails loudly: nothing here is skipped.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL="$ROOT/.local/docker"
export CONTAINERS_CONF="$ROOT/docker/podman/containers.conf"
PODMAN_COMPOSE_VERSION="1.5.0"
ORT_VERSION="$(sed -n 's/^ORT_VERSION="\(.*\)"$/\1/p' "$ROOT/scripts/services.sh")"
DEBIAN_MIRROR="${RISKSENSE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# The test's stack on ports of its own, beside the suite's Kafka (9092) and Redis (6379).
export KAFKA_PORT="${RISKSENSE_DOCKER_KAFKA_PORT:-29092}"
export REDIS_PORT="${RISKSENSE_DOCKER_REDIS_PORT:-26379}"
export RISKSENSE_PORT="${RISKSENSE_DOCKER_HTTP_PORT:-28080}"
PROJECT="risksense-test"

log() { echo "[docker] $*" >&2; }
die() {
  echo "[docker] ERROR: $*" >&2
  exit 1
}

install() {
  local missing=()
  local tool
  for tool in podman buildah runc debootstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2 ||
      { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2; } ||
      die "apt-get could not install ${missing[*]}"
  fi
  # Debian's podman-compose (1.0.3) knows no profiles: a newer one from PyPI, in .local/
  # (no system Python packages touched). On podman 4.3 it still cannot wait on health
  # conditions (see wait_healthy).
  if [ ! -f "$LOCAL/podman-compose/.complete-$PODMAN_COMPOSE_VERSION" ]; then
    log "installing podman-compose $PODMAN_COMPOSE_VERSION (pip, into .local/docker/)"
    rm -rf "$LOCAL/podman-compose"
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --target "$LOCAL/podman-compose" \
      "podman-compose==$PODMAN_COMPOSE_VERSION" >&2 ||
      die "pip could not install podman-compose==$PODMAN_COMPOSE_VERSION"
    touch "$LOCAL/podman-compose/.complete-$PODMAN_COMPOSE_VERSION"
  fi
}

compose() {
  PYTHONPATH="$LOCAL/podman-compose" python3 -m podman_compose --project-name "$PROJECT" \
    --podman-run-args="--runtime runc" -f "$ROOT/docker/compose.yaml" "$@"
}

has_image() { podman image exists "$1"; }

base() {
  local name="docker.io/library/debian:bookworm-slim"
  local tarball="$LOCAL/debian-bookworm-minbase.tar"
  if [ ! -f "$tarball" ]; then
    log "debootstrap --variant=minbase bookworm from $DEBIAN_MIRROR"
    local rootfs="$LOCAL/rootfs"
    rm -rf "$rootfs"
    mkdir -p "$LOCAL"
    debootstrap --variant=minbase bookworm "$rootfs" "$DEBIAN_MIRROR" >"$LOCAL/debootstrap.log" 2>&1 ||
      { tail -n 20 "$LOCAL/debootstrap.log" >&2; die "debootstrap failed"; }
    # As the slim image: no apt lists or caches.
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
    tar -C "$rootfs" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
  fi
  if ! has_image "$name"; then
    log "importing $name"
    podman import --quiet --change 'CMD ["bash"]' "$tarball" "$name" >/dev/null
  fi
}

standins() {
  base
  local context="$LOCAL/kafka-standin"
  if [ ! -f "$context/libs/.complete" ]; then
    command -v mvn >/dev/null || die "mvn not found (scripts/services.sh up installs it)"
    log "fetching the Kafka jars for the apache/kafka stand-in (Maven Central)"
    rm -rf "$context/libs"
    mkdir -p "$context/libs"
    mvn -q -B -f "$ROOT/docker/standins/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$context/libs" >&2 ||
      die "maven could not fetch the Kafka jars"
    touch "$context/libs/.complete"
  fi
  cp "$ROOT"/docker/standins/{kafka.Containerfile,kafka-run.sh,kafka-broker-api-versions.sh,log4j2.properties} "$context/"
  log "building the stand-in apache/kafka:4.1.1"
  podman build -q --network host --format docker -f "$context/kafka.Containerfile" \
    -t docker.io/apache/kafka:4.1.1 "$context" >/dev/null
  log "building the stand-in redis:7"
  podman build -q --network host --format docker -f "$ROOT/docker/standins/redis.Containerfile" \
    -t docker.io/library/redis:7 "$ROOT/docker/standins" >/dev/null
}

pack() {
  local profile="${1:-release}"
  local binary="$ROOT/target/$profile/risksense"
  local flag=""
  [ "$profile" = release ] && flag=" --release"
  [ -x "$binary" ] || die "$binary not found: build it first (cargo build$flag --bin risksense)"
  local lib="$ROOT/.local/onnxruntime/libonnxruntime.so.$ORT_VERSION"
  [ -f "$lib" ] || "$ROOT/scripts/services.sh" onnxruntime
  mkdir -p "$ROOT/target/docker"
  strip -o "$ROOT/target/docker/risksense" "$binary"
  cp -f "$lib" "$ROOT/target/docker/libonnxruntime.so"
  log "packed $binary ($(du -h "$ROOT/target/docker/risksense" | cut -f1) stripped) and ONNX Runtime $ORT_VERSION"
}

image() {
  base
  pack "${1:-release}"
  log "building risksense:latest (docker/Dockerfile, target packed)"
  podman build -q --network host --format docker -f "$ROOT/docker/Dockerfile" --target packed \
    -t docker.io/library/risksense:latest "$ROOT" >/dev/null
  log "risksense:latest is $(podman image inspect --format '{{.Size}}' risksense:latest | awk '{printf "%.0f MB", $1 / 1e6}')"
}

down() {
  if [ -d "$LOCAL/podman-compose" ]; then
    compose --profile demo down -v >/dev/null 2>&1 || true
  fi
}

# Podman 4.3 runs health checks only on request (no systemd timers here, and its
# podman-compose cannot wait on them): run the image's own check until it passes.
wait_healthy() { # container seconds
  local container="$1" seconds="$2" i
  for ((i = 0; i < seconds; i++)); do
    if podman healthcheck run "$container" >/dev/null 2>&1; then
      log "$container: healthy after ${i} s"
      return 0
    fi
    sleep 1
  done
  podman logs --tail 40 "$container" >&2 || true
  die "$container did not become healthy within $seconds s"
}

test_stack() {
  local profile="${1:-debug}"
  install
  standins
  image "$profile"
  down
  trap 'status=$?; if [ $status -ne 0 ]; then compose logs 2>&1 | tail -n 80 >&2 || true; fi; down' EXIT
  log "docker/compose.yaml --profile demo up (kafka :$KAFKA_PORT, redis :$REDIS_PORT, api :$RISKSENSE_PORT)"
  compose --profile demo up -d --no-build >"$LOCAL/compose-up.log" 2>&1 ||
    { tail -n 40 "$LOCAL/compose-up.log" >&2; die "compose up failed"; }
  wait_healthy "${PROJECT}_kafka_1" 180
  wait_healthy "${PROJECT}_redis_1" 60
  wait_healthy "${PROJECT}_risksense_1" 120

  # The image: non-root, carries the model and ONNX Runtime.
  local user
  user="$(podman exec "${PROJECT}_risksense_1" id -u)"
  [ "$user" != "0" ] || die "the risksense container runs as root"
  podman exec "${PROJECT}_risksense_1" test -f /usr/share/risksense/models/default/model.onnx ||
    die "the image has no model"

  # The demo profile's producer feeds the topic; scored rows reach Redis and the API.
  local api="http://127.0.0.1:$RISKSENSE_PORT" i scored=0
  for ((i = 0; i < 120; i++)); do
    # The API may not answer yet: a failed request is another try, not the end.
    scored="$( (curl -fsS "$api/metrics" 2>/dev/null || true) |
      awk '/^risksense_rows_scored_total/ {print int($2)}' | head -n 1)"
    [ "${scored:-0}" -ge 500 ] && break
    sleep 1
  done
  [ "${scored:-0}" -ge 500 ] || die "fewer than 500 rows scored within 120 s (${scored:-0})"
  log "scored ${scored} rows"
  # (`|| true`: head closing the pipe early must not end the script under pipefail.)
  local key id
  key="$(redis-cli -p "$REDIS_PORT" --scan --pattern 'rs:txs:*' | head -n 1 || true)"
  [ -n "$key" ] || die "no scored transactions in the stack's Redis"
  id="$(redis-cli -p "$REDIS_PORT" hrandfield "$key" 1)"
  [ -n "$id" ] || die "no transaction id in the stack's Redis ($key)"
  # Bodies are read whole before matching: `curl | grep -q` under pipefail fails when grep
  # stops reading before curl has written everything ("Failed writing body").
  local body
  body="$(curl -fsS "$api/v1/transactions/$id" || true)"
  grep -q "\"trans_num\":\"$id\"" <<<"$body" ||
    die "the API did not answer for transaction $id"
  # Alerts: what the demo profile promises on the dashboard.
  local alerts=""
  for ((i = 0; i < 60; i++)); do
    alerts="$(curl -fsS "$api/v1/alerts?limit=5" 2>/dev/null || true)"
    grep -q '"trans_num"' <<<"$alerts" && break
    sleep 1
  done
  grep -q '"trans_num"' <<<"$alerts" || die "no alert within 60 s (/v1/alerts: ${alerts:0:200})"
  curl -fsS "$api/healthz" >/dev/null || die "/healthz failed"
  body="$(curl -fsS "$api/" || true)"
  grep -qi "risksense" <<<"$body" || die "the dashboard did not answer"
  log "compose stack: transactions scored into Redis, alerts raised, the API and dashboard answer"
}

case "${1:-}" in
  install) install ;;
  base) install && base ;;
  standins) install && standins ;;
  pack) pack "${2:-release}" ;;
  image) install && image "${2:-release}" ;;
  test) test_stack "${2:-debug}" ;;
  down) down ;;
  *)
    sed -n '2,14p' "${BASH_SOURCE[0]}" >&2
    exit 2
    ;;
esac
