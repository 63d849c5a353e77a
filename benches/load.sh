#!/usr/bin/env bash
# Warm-path load test: one fast upstream, nginx in front of it, defrost in front of the same
# upstream program, and `wrk` against all three on this machine, in one run. Then the isolation
# check: the same wrk runs against defrost (and nginx, as the yardstick) while 500 requests wait
# on a cold function and 100 sit on a function that takes 1 s to answer.
#
#   benches/load.sh    # defaults: DURATION=10 ROUNDS=3 THREADS=2 CONNECTIONS=64 IDLE=1000
#                      #           SLOW=1000 BASE_PORT=18080
#   BEFORE=/path/to/an/older/defrost benches/load.sh
#                      # also measures that build's warm path, taking turns with the others,
#                      # so that a change is judged against nginx in the same run
#
# Then one round each of: a plain Python http.server function (examples/plain.py) directly,
# through nginx and through defrost; 256 connections; and the warm path with IDLE more
# keep-alive connections sitting idle on nginx and on defrost, with defrost's threads and RSS;
# then the same with SLOW connections whose request heads trickle in, a byte a second each.
#
# Needs wrk and nginx (Debian/Ubuntu: apt-get install wrk nginx-light); installs nothing.
set -euo pipefail
source "$(dirname "$0")/common.sh"
require wrk nginx curl
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
BASE_PORT=${BASE_PORT:-18080}
DIRECT=$((BASE_PORT + 1))
NGINX=$((BASE_PORT + 2))
GATEWAY=$((BASE_PORT + 3))
OLDER=$((BASE_PORT + 4))
PLAIN=$((BASE_PORT + 5))
NGINX_PLAIN=$((BASE_PORT + 6))
IDLE=${IDLE:-1000}
SLOW=${SLOW:-1000}
build

# The upstream, reached directly and through nginx (keep-alive to the upstream, as a tuned
# reverse proxy is set up).
spawn "$UPSTREAM" --port "$DIRECT"
mkdir -p "$WORK/nginx/logs"
cat >"$WORK/nginx/nginx.conf" <<CONF
worker_processes auto;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream fn { server 127.0.0.1:$DIRECT; keepalive 128; }
  upstream plain { server 127.0.0.1:$PLAIN; keepalive 128; }
  server {
    listen 127.0.0.1:$NGINX;
    location / {
      proxy_pass http://fn;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering on;
    }
  }
  server {
    listen 127.0.0.1:$NGINX_PLAIN;
    location / {
      proxy_pass http://plain;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering on;
    }
  }
}
CONF
# A function as users write them (Python's http.server, keep-alive, no socket options), reached
# directly, through nginx and through defrost.
spawn env PORT="$PLAIN" python3 "$ROOT/examples/plain.py" 2>/dev/null # wrk hangs up mid-answer
spawn nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf"

# defrost, with the same upstream program as its warm function, a cold one that becomes ready
# only after the run, and a slow one.
held_for=$((ROUNDS * 2 * DURATION + 15)) # the isolation phase, with room to spare
cold_after_ms=$(((held_for + 30) * 1000))
cat >"$WORK/defrost.toml" <<CONF
[gateway]
listen = "127.0.0.1:$GATEWAY"
max_connections = 4096  # as many as nginx's worker_connections below
ready_timeout = "$((held_for + 60))s"
shutdown_grace = "1s"  # the cold function's waiters need not be waited for
header_timeout = "60s"  # nginx's client_header_timeout: slow heads stay open on both alike

[[function]]
name = "fast"
command = ["$UPSTREAM"]
min_replicas = 1
max_replicas = 1

[[function]]
name = "cold"
command = ["$UPSTREAM", "--ready-after-ms", "$cold_after_ms"]
max_replicas = 1
startup_timeout = "$((held_for + 60))s"

[[function]]
name = "slow"
command = ["$UPSTREAM", "--delay-ms", "1000"]
max_replicas = 1

[[function]]
name = "plain"
command = ["python3", "$ROOT/examples/plain.py"]
min_replicas = 1
max_replicas = 1
CONF
start_defrost "$WORK/defrost.toml"
TARGETS=(direct nginx defrost)
if [ -n "${BEFORE:-}" ]; then
  # The same configuration but the address, so that the two builds differ in nothing else.
  sed "s/^listen = .*/listen = \"127.0.0.1:$OLDER\"/" "$WORK/defrost.toml" >"$WORK/before.toml"
  spawn env RUST_LOG=warn "$BEFORE" --config "$WORK/before.toml"
  wait_http "http://127.0.0.1:$OLDER/function/fast"
  TARGETS+=(before)
fi
wait_http "http://127.0.0.1:$DIRECT/"
wait_http "http://127.0.0.1:$NGINX/"
wait_http "http://127.0.0.1:$GATEWAY/function/fast"
wait_http "http://127.0.0.1:$PLAIN/"
wait_http "http://127.0.0.1:$NGINX_PLAIN/"
wait_http "http://127.0.0.1:$GATEWAY/function/plain"

threads_of() { awk '/^Threads:/ {print $2}' "/proc/$1/status"; }
rss_mb() { awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
nginx_rss_mb() {
  local kb=0
  for pid in $(pgrep -f "nginx.*$WORK/nginx"); do
    kb=$((kb + $(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")))
  done
  awk -v kb="$kb" 'BEGIN {printf "%.1f", kb / 1024}'
}

echo "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s, $ROUNDS rounds, $(nproc) cores"
declare -A URL=(
  [direct]="http://127.0.0.1:$DIRECT/"
  [nginx]="http://127.0.0.1:$NGINX/"
  [defrost]="http://127.0.0.1:$GATEWAY/function/fast"
  [before]="http://127.0.0.1:$OLDER/function/fast"
)
url_of() { echo "${URL[$1]}"; }
take_turns "${TARGETS[@]}"
read -r direct_rps direct_p50 direct_p99 < <(median_round direct)
read -r nginx_rps nginx_p50 nginx_p99 < <(median_round nginx)
read -r defrost_rps defrost_p50 defrost_p99 < <(median_round defrost)

# One round each, in turns: the plain Python function; 256 connections; and 64 while IDLE more
# keep-alive connections sit idle on both nginx and defrost, with defrost's threads and memory.
for target in plain-direct plain-nginx plain-defrost; do
  case $target in
    plain-direct) url="http://127.0.0.1:$PLAIN/" ;;
    plain-nginx) url="http://127.0.0.1:$NGINX_PLAIN/" ;;
    plain-defrost) url="http://127.0.0.1:$GATEWAY/function/plain" ;;
  esac
  measure "$url" >"$WORK/$target.result"
done
for target in direct nginx defrost; do
  measure "${URL[$target]}" 256 >"$WORK/$target-256.result"
done
cat >"$WORK/idle.py" <<'PY'
import socket, sys, time
port, count, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
held = []
for _ in range(count):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    s.recv(65536)
    held.append(s)
print("holding", len(held), flush=True)
time.sleep(3600)
PY
# Runs SCRIPT (holding COUNT connections) against nginx and against defrost, measures both
# meanwhile into $WORK/TARGET-NAME.result, and writes defrost's threads and RSS, nginx's RSS and
# the connections open at defrost's port to $WORK/NAME.footprint.
measure_holding() {
  local script=$1 count=$2 name=$3 held=()
  spawn python3 "$script" "$NGINX" "$count" /
  held+=("$LAST_PID")
  spawn python3 "$script" "$GATEWAY" "$count" /function/fast
  held+=("$LAST_PID")
  sleep 3
  for target in nginx defrost; do
    measure "${URL[$target]}" >"$WORK/$target-$name.result"
  done
  echo "$(threads_of "$DEFROST_PID") $(rss_mb "$DEFROST_PID") $(nginx_rss_mb)" \
    "$(ss -Htn state established "( sport = :$GATEWAY )" | wc -l)" >"$WORK/$name.footprint"
  kill "${held[@]}" 2>/dev/null || true
}
measure_holding "$WORK/idle.py" "$IDLE" idle
read -r idle_threads idle_rss idle_nginx_rss idle_open <"$WORK/idle.footprint"

# Slowloris: SLOW connections each send the start of a request head, then a byte a second,
# never finishing it (a connection closed on them is opened again); bounded at 10 minutes.
cat >"$WORK/slow.py" <<'PY'
import socket, sys, time
port, count, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
head = f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Slow: ".encode()
def start():
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(head)
    return s
held = [start() for _ in range(count)]
print("trickling", len(held), flush=True)
until = time.monotonic() + 600
while time.monotonic() < until:
    for i, s in enumerate(held):
        try:
            s.send(b"a")
        except OSError:
            s.close()
            held[i] = start()
        time.sleep(1 / count)
PY
sleep 1 # the idle connections' ends settle
measure_holding "$WORK/slow.py" "$SLOW" slow
read -r slow_threads slow_rss slow_nginx_rss slow_open <"$WORK/slow.footprint"

# Isolation: hold 500 requests on the cold function and 100 on the slow one, then measure the
# warm function again, taking turns with nginx as before. nginx is the yardstick for how fast
# the machine is meanwhile (other work on it can change that within a minute): the share
# kept is defrost's ratio to nginx while requests are held, over that ratio without them.
spawn wrk -t1 -c500 -d"${held_for}s" --timeout 120s "http://127.0.0.1:$GATEWAY/function/cold"
spawn wrk -t1 -c100 -d"${held_for}s" --timeout 10s "http://127.0.0.1:$GATEWAY/function/slow"
sleep 5
for round in $(seq "$ROUNDS"); do
  for target in nginx defrost; do
    echo "$(measure "${URL[$target]}")" >>"$WORK/held-$target.rounds"
  done
done
read -r held_nginx_rps held_nginx_p50 held_nginx_p99 < <(median_round held-nginx)
read -r busy_rps busy_p50 busy_p99 < <(median_round held-defrost)
held_threads=$(threads_of "$DEFROST_PID")
held_rss=$(rss_mb "$DEFROST_PID")

printf '\n%-34s %12s %10s %10s\n' "target" "requests/s" "p50 ms" "p99 ms"
printf '%-34s %12s %10s %10s\n' "upstream direct" "$direct_rps" "$direct_p50" "$direct_p99"
printf '%-34s %12s %10s %10s\n' "nginx" "$nginx_rps" "$nginx_p50" "$nginx_p99"
printf '%-34s %12s %10s %10s\n' "defrost" "$defrost_rps" "$defrost_p50" "$defrost_p99"
if [ -n "${BEFORE:-}" ]; then
  read -r before_rps before_p50 before_p99 < <(median_round before)
  printf '%-34s %12s %10s %10s\n' "defrost, $BEFORE" "$before_rps" "$before_p50" "$before_p99"
fi
printf '%-34s %12s %10s %10s\n' "nginx, meanwhile" "$held_nginx_rps" "$held_nginx_p50" "$held_nginx_p99"
printf '%-34s %12s %10s %10s\n' "defrost, 500 cold + 100 slow held" "$busy_rps" "$busy_p50" "$busy_p99"
echo
awk -v d="$defrost_rps" -v n="$nginx_rps" -v u="$direct_rps" -v dp="$defrost_p99" \
  -v np="$nginx_p99" -v b="$busy_rps" -v hn="$held_nginx_rps" 'BEGIN {
    printf "defrost/nginx throughput  %.2f\n", d / n
    printf "defrost/direct throughput %.2f\n", d / u
    printf "defrost/nginx p99         %.2f\n", dp / np
    printf "warm throughput kept while others wait: %.0f%% (%.0f%% of the earlier rounds, unadjusted)\n", 100 * (b / hn) / (d / n), 100 * b / d
  }'
show() { read -r rps p50 p99 <"$WORK/$2.result"; printf '%-34s %12s %10s %10s\n' "$1" "$rps" "$p50" "$p99"; }
printf '\n%-34s %12s %10s %10s\n' "plain Python function, -c$CONNECTIONS" "requests/s" "p50 ms" "p99 ms"
show "directly" plain-direct
show "through nginx" plain-nginx
show "through defrost" plain-defrost
printf '\n%-34s %12s %10s %10s\n' "fast upstream, -c256" "requests/s" "p50 ms" "p99 ms"
show "upstream direct" direct-256
show "nginx" nginx-256
show "defrost" defrost-256
printf '\n%-34s %12s %10s %10s\n' "-c$CONNECTIONS, $IDLE idle keep-alive too" "requests/s" "p50 ms" "p99 ms"
show "nginx" nginx-idle
show "defrost" defrost-idle
echo "with them: defrost $idle_threads threads, ${idle_rss} MB resident ($idle_open connections open at its port); nginx ${idle_nginx_rss} MB resident (all processes)"
printf '\n%-34s %12s %10s %10s\n' "-c$CONNECTIONS, $SLOW slow heads too" "requests/s" "p50 ms" "p99 ms"
show "nginx" nginx-slow
show "defrost" defrost-slow
echo "with them: defrost $slow_threads threads, ${slow_rss} MB resident ($slow_open connections open at its port); nginx ${slow_nginx_rss} MB resident (all processes)"
echo "while 500 cold + 100 slow requests were held: defrost $held_threads threads, ${held_rss} MB resident"
if [ -n "${BEFORE:-}" ]; then
  awk -v d="$defrost_rps" -v n="$nginx_rps" -v o="$before_rps" 'BEGIN {
    printf "older build/nginx throughput %.2f (this build %.2f)\n", o / n, d / n
  }'
fi
