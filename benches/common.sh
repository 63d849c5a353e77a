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

