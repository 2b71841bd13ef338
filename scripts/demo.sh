#!/usr/bin/env bash
# The main command (README): builds RiskSense and runs the demo on the embedded default
# (an in-process Kafka-protocol broker; no Kafka or Redis needed). Arguments go to
# `risksense demo` (e.g. --kafka 127.0.0.1:9092 to use a real broker).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }

# Build tools for librdkafka and the ONNX Runtime library; no services are started.
scripts/services.sh deps
# The dev profile, shared with the test command (its dependencies are optimised): after
# scripts/test.sh this builds nothing. Release builds are for benchmarks only.
cargo build --locked --bin risksense
scripts/services.sh onnxruntime
exec target/debug/risksense demo "$@"
