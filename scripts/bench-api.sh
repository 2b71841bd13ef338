#!/usr/bin/env bash
# The API benchmark (BENCHMARKS.md): wrk against `risksense serve` with Redis on this
# machine. Fills Redis with a short `risksense demo` against the real broker first.
#   GET /v1/transactions/{id}   random ids of the stored transactions
#   POST /v1/score              10 transactions per request, cache hits vs misses
# Needs: scripts/services.sh up; scripts/services.sh test-tools (wrk); a release build
# (RISKSENSE_BENCH_BIN=path: another build, for side-by-side runs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN="${RISKSENSE_BENCH_BIN:-target/release/risksense}"
PREFIX="benchapi$$"
PORT="${RISKSENSE_BENCH_PORT:-18090}"
DURATION="${RISKSENSE_BENCH_SECONDS:-15}"
SCRATCH=target/bench/api
mkdir -p "$SCRATCH"
command -v wrk >/dev/null || { echo "wrk not found: scripts/services.sh test-tools" >&2; exit 1; }

echo "[bench-api] filling Redis (prefix $PREFIX) with a 20 s demo at 5,000 tx/s"
"$BIN" demo --kafka 127.0.0.1:9092 --redis redis://127.0.0.1:6379/ --prefix "$PREFIX" \
  --topic "$PREFIX" --rate 5000 --duration 20 --http 127.0.0.1:0 >/dev/null 2>&1
# Records are fields of per-bucket, per-period hashes (store/src/layout.rs).
redis-cli --scan --pattern "$PREFIX:txs:*" | while read -r key; do redis-cli hkeys "$key"; done \
  > "$SCRATCH/ids.txt"
echo "[bench-api] $(wc -l < "$SCRATCH/ids.txt") transaction ids"

"$BIN" serve --redis redis://127.0.0.1:6379/ --prefix "$PREFIX" --http "127.0.0.1:$PORT" >/dev/null 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -sf "127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done

python3 - "$SCRATCH/body.json" <<'PY'
import csv, json, sys
ints = {"cc_num", "zip", "city_pop", "unix_time", "is_fraud"}
floats = {"amt", "lat", "long", "merch_lat", "merch_long"}
rows = list(csv.DictReader(open("data/fixtures/sparkov-2019h1-head3000.csv")))[:10]
out = [{k: (int(v) if k in ints else float(v) if k in floats else v) for k, v in r.items() if k} for r in rows]
json.dump(out, open(sys.argv[1], "w"))
PY

run() {
  echo; echo "== $1"; shift
  "$@" | grep -E "Requests/sec|Latency  |50%|99%|Non-2xx"
}
run "GET /v1/transactions/{id}: wrk -t2 -c64 -d${DURATION}s --latency" \
  env WRK_IDS="$SCRATCH/ids.txt" wrk -t2 -c64 -d"${DURATION}s" --latency -s scripts/bench/lookup.lua "http://127.0.0.1:$PORT"
run "POST /v1/score, 10 transactions, cache hits: wrk -t2 -c16 -d${DURATION}s --latency" \
  env WRK_BODY="$SCRATCH/body.json" wrk -t2 -c16 -d"${DURATION}s" --latency -s scripts/bench/score.lua "http://127.0.0.1:$PORT"
run "POST /v1/score, 10 transactions, cache misses: wrk -t2 -c16 -d${DURATION}s --latency" \
  env WRK_BODY="$SCRATCH/body.json" WRK_MISS=1 wrk -t2 -c16 -d"${DURATION}s" --latency -s scripts/bench/score.lua "http://127.0.0.1:$PORT"
echo; curl -s "127.0.0.1:$PORT/metrics" | grep -E "^risksense_score_cache_(hits|misses)_total"
