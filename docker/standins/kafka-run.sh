#!/usr/bin/env bash
# The stand-in's start: as the official image, every KAFKA_* variable is a broker setting
# (KAFKA_LOG_DIRS -> log.dirs; `__` -> `-`, `___` -> `_`), CLUSTER_ID formats the storage.
set -euo pipefail
props=/opt/kafka/config/server.properties
: >"$props"
while IFS='=' read -r name _; do
  case "$name" in
    KAFKA_HEAP_OPTS | KAFKA_OPTS | KAFKA_JVM_PERFORMANCE_OPTS | KAFKA_LOG4J_OPTS) continue ;;
    KAFKA_*) ;;
    *) continue ;;
  esac
  key="${name#KAFKA_}"
  key="${key,,}"
  key="${key//___/§}"
  key="${key//__/-}"
  key="${key//_/.}"
  key="${key//§/_}"
  printf '%s=%s\n' "$key" "${!name}" >>"$props"
done < <(env)
# shellcheck disable=SC2206 # the heap options are words
java_args=(${KAFKA_HEAP_OPTS:--Xmx512m -Xms512m} -Djava.awt.headless=true
  -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties -cp "/opt/kafka/libs/*")
log_dir="$(sed -n 's/^log\.dirs=//p' "$props")"
if [ ! -f "${log_dir:-/tmp/kraft-combined-logs}/meta.properties" ]; then
  java "${java_args[@]}" kafka.tools.StorageTool format --ignore-formatted \
    -t "${CLUSTER_ID:-5L6g3nShT-eMCtK--X86sw}" -c "$props"
fi
exec java "${java_args[@]}" kafka.Kafka "$props"
