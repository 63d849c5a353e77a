# Shared by the benchmark scripts: builds, tool checks, process bookkeeping. Sourced, not run.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/defrost-bench.XXXXXX")"
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# Checks that every tool named is on PATH; says how to get the missing ones, installs nothing.
require() {
  local missing=()
  for tool in "$@"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "missing: ${missing[*]}" >&2
    echo "install them first, e.g. on Debian/Ubuntu: sudo apt-get install ${missing[*]/nginx/nginx-light}" >&2
    exit 2
  fi
}

# Release builds of defrost and of the example upstream function.
build() {
  (cd "$ROOT" && cargo build --release --quiet --bin defrost --example upstream)
  DEFROST="$ROOT/target/release/defrost"
  UPSTREAM="$ROOT/target/release/examples/upstream"
}

# Runs a command in the background, remembered for cleanup; its pid is in $LAST_PID.
spawn() {
  "$@" &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# Waits (up to 30 s) until `curl URL` succeeds.
wait_http() {
  for _ in $(seq 300); do
    curl -fs -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "no answer from $1" >&2
  exit 1
}

# Starts defrost with the config file given; waits for its health check.
start_defrost() {
  spawn env RUST_LOG="${RUST_LOG:-warn}" "$DEFROST" --config "$1"
  DEFROST_PID=$LAST_PID
  wait_http "http://$(listen_of "$1")/healthz"
}

listen_of() { sed -n 's/^listen = "\(.*\)"/\1/p' "$1"; }

# Runs wrk against a URL (THREADS, DURATION, and CONNECTIONS or the second argument); prints
# "requests/s p50_ms p99_ms".
measure() {
  wrk -t"$THREADS" -c"${2:-$CONNECTIONS}" -d"${DURATION}s" --latency "$1" >"$WORK/wrk.out"
  awk '
    function ms(v) {
      if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000
      return v
    }
    /Requests\/sec:/ {rps = $2}
    $1 == "50%" {p50 = ms($2)}
    $1 == "99%" {p99 = ms($2)}
    /Non-2xx|Socket errors/ {print "warning: " $0 > "/dev/stderr"}
    END {printf "%.0f %.3f %.3f\n", rps, p50, p99}' "$WORK/wrk.out"
}

# The median of the rounds kept in $WORK/NAME.rounds, one "requests/s p50 p99" line each.
median_round() { sort -n "$WORK/$1.rounds" | sed -n "$(((ROUNDS + 1) / 2))p"; }

# Warms each target up, then lets them take turns, round after round, so that a change in the
# machine's load (other work on it) falls on all of them alike; each round's figures go to
# $WORK/TARGET.rounds (see median_round). The order turns round too, so that no target always
# follows the same one. The script defines `url_of TARGET`.
take_turns() {
  local targets=("$@") n=$# round i target
  for target in "${targets[@]}"; do
    wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "$(url_of "$target")" >/dev/null
  done
  for round in $(seq "$ROUNDS"); do
    for i in $(seq 0 $((n - 1))); do
      target=${targets[$(((i + round) % n))]}
      measure "$(url_of "$target")" >>"$WORK/$target.rounds"
    done
  done
}
