#!/usr/bin/env bash
# What a concurrency limit (max_concurrency) costs on the warm path: wrk against three functions
# running the same fast upstream, one replica each, taking turns round after round:
#   fast    no limit (the path every function without the key takes)
#   roomy   max_concurrency = 1000, never reached: the slot accounting alone (a lock taken
#           when a call claims its slot and when it gives it back)
#   single  max_concurrency = 1: every call waits in the line, CONNECTIONS - 1 at a time
#
#   benches/slots.sh   # defaults: DURATION=10 ROUNDS=3 THREADS=2 CONNECTIONS=64 BASE_PORT=18180
#
# Needs wrk (Debian/Ubuntu: apt-get install wrk); installs nothing.
set -euo pipefail
source "$(dirname "$0")/common.sh"
require wrk curl
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
BASE_PORT=${BASE_PORT:-18180}
GATEWAY=$((BASE_PORT + 1))
build

cat >"$WORK/defrost.toml" <<CONF
[gateway]
listen = "127.0.0.1:$GATEWAY"
max_connections = 4096

[[function]]
name = "fast"
command = ["$UPSTREAM"]
min_replicas = 1
max_replicas = 1

[[function]]
name = "roomy"
command = ["$UPSTREAM"]
min_replicas = 1
max_replicas = 1
max_concurrency = 1000

[[function]]
name = "single"
command = ["$UPSTREAM"]
min_replicas = 1
max_replicas = 1
max_concurrency = 1
CONF
start_defrost "$WORK/defrost.toml"
TARGETS=(fast roomy single)
for target in "${TARGETS[@]}"; do
  wait_http "http://127.0.0.1:$GATEWAY/function/$target"
done

echo "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s, $ROUNDS rounds, $(nproc) cores"
url_of() { echo "http://127.0.0.1:$GATEWAY/function/$1"; }
take_turns "${TARGETS[@]}"
printf "%-8s %10s %9s %9s\n" function "requests/s" "p50 ms" "p99 ms"
for target in "${TARGETS[@]}"; do
  read -r rps p50 p99 < <(median_round "$target")
  printf "%-8s %10s %9s %9s\n" "$target" "$rps" "$p50" "$p99"
done
