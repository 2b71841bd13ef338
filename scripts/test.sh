#!/usr/bin/env bash
# The test command (README, CI): installs and starts what the tests need, then runs them.
#   - build tools, Apache Kafka (KRaft), Redis and ONNX Runtime: scripts/services.sh up
#   - Chromium, wrk and playwright-core for the dashboard test: scripts/services.sh test-tools
#   - cargo test --workspace, against the real broker and Redis
#   - the reference-data tests when ../shared/data is present
# Extra arguments go to `cargo test` (e.g. scripts/test.sh -p risksense-engine).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }

scripts/services.sh up
scripts/services.sh test-tools
export RISKSENSE_KAFKA_BROKERS="127.0.0.1:${RISKSENSE_KAFKA_PORT:-9092}"
export RISKSENSE_REDIS_URL="redis://127.0.0.1:${RISKSENSE_REDIS_PORT:-6379}"

cargo build --workspace --tests --locked
# Put ONNX Runtime beside the freshly built binaries (the binary also finds .local/).
scripts/services.sh onnxruntime

cargo test --workspace --locked "$@"

if [ -d ../shared/data ]; then
  echo "[test] ../shared/data is present: running the reference-data tests"
  # --workspace keeps the feature set of the build above (-p would rebuild the dependencies).
  cargo test --workspace --locked --test reference_data -- --ignored
else
  echo "[test] NOTE: ../shared/data is absent: the reference-data tests (engine/tests/reference_data.rs) were not run"
fi
