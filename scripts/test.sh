#!/usr/bin/env bash
# The test command (README, CI): installs and starts what the tests need, then runs them.
#   - build tools, Apache Kafka (KRaft), Redis and ONNX Runtime: scripts/services.sh up
#   - Chromium, wrk and playwright-core for the dashboard test: scripts/services.sh test-tools
#   - cargo test --workspace, against the real broker and Redis (and the Redis Cluster)
#   - the stream tests again with the Redis Cluster as the result store
#   - the reference-data tests when ../shared/data is present
#   - the Docker image and docker/compose.yaml, end to end with podman: scripts/docker.sh test
# Extra arguments go to `cargo test` (e.g. scripts/test.sh -p risksense-engine).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }

# The whole run takes about 10 GB of disk (the debug build 6.4 GB, the image, the services'
# data); Redis stops accepting writes when its disk fills, and the tests then fail far from
# the cause. Say so up front.
read -r free_gb mount < <(df -Pk . | awk 'NR == 2 { print int($4 / 1048576), $6 }')
if [ "${free_gb:-0}" -lt 12 ]; then
  echo "[test] WARNING: only ${free_gb} GB free on ${mount}; the test run needs about 10 GB" >&2
fi

scripts/services.sh up
scripts/services.sh test-tools
export RISKSENSE_KAFKA_BROKERS="127.0.0.1:${RISKSENSE_KAFKA_PORT:-9092}"
export RISKSENSE_REDIS_URL="redis://127.0.0.1:${RISKSENSE_REDIS_PORT:-6379}"
cluster_ports="${RISKSENSE_REDIS_CLUSTER_PORTS:-7001 7002 7003}"
cluster_nodes="$(for port in ${cluster_ports//,/ }; do printf '127.0.0.1:%s,' "$port"; done)"
export RISKSENSE_REDIS_CLUSTER_URL="redis+cluster://${cluster_nodes%,}/"

cargo build --workspace --tests --locked
# Put ONNX Runtime beside the freshly built binaries (the binary also finds .local/).
scripts/services.sh onnxruntime

cargo test --workspace --locked "$@"

if [ $# -eq 0 ]; then
  # The stream tests again with the three-shard Redis Cluster as the result store: end to
  # end, two instances in one group, dead letters and kill -9 recovery. (The shard restart
  # mid-stream ran above, against the cluster; the private-Redis restart is single-only.)
  echo "[test] the stream tests again, against the Redis Cluster"
  RISKSENSE_REDIS_URL="$RISKSENSE_REDIS_CLUSTER_URL" \
    cargo test --workspace --locked --test stream --test stream_recovery -- \
    --skip redis_restarting_mid_stream --skip a_cluster_shard_restarting
fi

if [ -d ../shared/data ]; then
  echo "[test] ../shared/data is present: running the reference-data tests"
  # --workspace keeps the feature set of the build above (-p would rebuild the dependencies).
  cargo test --workspace --locked --test reference_data -- --ignored
else
  echo "[test] NOTE: ../shared/data is absent: the reference-data tests (engine/tests/reference_data.rs) were not run"
fi

if [ $# -eq 0 ]; then
  # The image of this build and the compose stack, run for real (podman; no Docker engine).
  echo "[test] the Docker image and docker/compose.yaml, with podman"
  scripts/docker.sh test debug
else
  echo "[test] NOTE: arguments given: the Docker image and compose test (scripts/docker.sh test) was not run"
fi
