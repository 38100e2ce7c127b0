#!/usr/bin/env bash
# The load run behind docs/benchmarks.md: wrk, 64 connections, 200-byte POST,
# against the bare axum ceiling and against `spillway serve` on the embedded
# queue, one after the other in the same run on the same machine.
#
#   benches/load.sh [seconds]        # default 20
#
# Prints requests/s for both, their ratio, and spillway's peak RSS (VmHWM).
# Needs wrk (Debian: apt-get install wrk). Builds release binaries first.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-20}"
CONNS=64
THREADS=2
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install -y wrk" >&2; exit 1; }
cargo build --release -q -p spillway -p spillway-benches --bin spillway --bin ceiling
BIN="${CARGO_TARGET_DIR:-target}/release"
WORK="$(mktemp -d)"; trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
BODY="$(head -c 160 /dev/zero | tr '\0' 'x')"
cat > "$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"event":"page_view","user":42,"pad":"$BODY"}'
wrk.headers["Content-Type"] = "application/json"
LUA
printf 'body bytes: %s\n' "$(printf '{"event":"page_view","user":42,"pad":"%s"}' "$BODY" | wc -c)"

rps() { awk '/Requests\/sec/ {print $2}'; }
run_wrk() { wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -s "$WORK/post.lua" "$1" | tee "$WORK/$2.txt" | rps; }

"$BIN/ceiling" 127.0.0.1:18090 >/dev/null & CEIL=$!
sleep 0.5
wrk -t1 -c8 -d2s -s "$WORK/post.lua" http://127.0.0.1:18090/ingest >/dev/null  # warm-up
CEIL_RPS=$(run_wrk http://127.0.0.1:18090/ingest ceiling)
kill $CEIL; wait $CEIL 2>/dev/null || true

SPILLWAY_SERVER__LISTEN=127.0.0.1:18080 SPILLWAY_LOG__LEVEL=warn \
  SPILLWAY_QUEUE__BACKEND=embedded SPILLWAY_QUEUE__PATH="$WORK/data" "$BIN/spillway" serve >/dev/null & SW=$!
sleep 1
wrk -t1 -c8 -d2s -s "$WORK/post.lua" http://127.0.0.1:18080/ingest >/dev/null  # warm-up
SW_RPS=$(run_wrk http://127.0.0.1:18080/ingest spillway)
HWM_KB=$(awk '/VmHWM/ {print $2}' /proc/$SW/status)
kill -TERM $SW; wait $SW 2>/dev/null || true

echo "--- ceiling";  grep -E 'Latency|Requests/sec|50%|99%|Non-2xx' "$WORK/ceiling.txt" || true
echo "--- spillway"; grep -E 'Latency|Requests/sec|50%|99%|Non-2xx' "$WORK/spillway.txt" || true
awk -v s="$SW_RPS" -v c="$CEIL_RPS" -v h="$HWM_KB" 'BEGIN {
  printf "ceiling %.0f req/s, spillway %.0f req/s, ratio %.2f, spillway peak RSS %.1f MiB\n", c, s, s / c, h / 1024 }'
