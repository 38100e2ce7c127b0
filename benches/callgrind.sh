#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: the same for
# the same binary and work however busy the machine is, so a change of a
# few percent shows (wall-clock runs here move ±15 % between identical
# binaries; docs/benchmarks.md). It does not count the kernel.
#
#   benches/callgrind.sh [requests] [out-dir]     # default 20000, benches/results/callgrind
#   BIN=/path/to/spillway benches/callgrind.sh    # another build, e.g. a baseline
#   CLIENTS=128 benches/callgrind.sh              # more requests waiting per batch
#
# For each of: the HTTP ceiling; the durable ceiling (the ceiling answering
# only after a segment-log append and its fdatasync: the floor under any
# durable gateway); `spillway serve` on the memory backend (no store) and on
# the embedded queue; and the embedded queue again behind the product's
# usual CORS policy (wildcard origins with credentials, every request from
# an allowed origin, as a browser's), it starts the server under callgrind,
# warms it up with 2,000 requests, zeroes the counters, sends the requests
# (16 clients, 200-byte JSON POSTs, post_n), dumps, and prints user-space
# instructions per request, total and by the top inclusive functions.
# Builds with line tables (CARGO_PROFILE_RELEASE_DEBUG) into its own target
# folder, so the usual release build is not disturbed.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-20000}"
CLIENTS="${CLIENTS:-16}"
OUT="${2:-benches/results/callgrind}"
source benches/lib.sh
command -v valgrind >/dev/null || { echo "valgrind is needed: apt-get install -y valgrind" >&2; exit 1; }
PROF_TARGET="${PROF_TARGET:-/var/tmp/spillway-prof}"
CARGO_PROFILE_RELEASE_DEBUG=line-tables-only CARGO_TARGET_DIR="$PROF_TARGET" \
  cargo build --release -q -p spillway -p spillway-benches --bin spillway --bin post_n --bin ceiling \
  --bin durable_ceiling
BIN="${BIN:-$PROF_TARGET/release/spillway}"
TOOLS="$PROF_TARGET/release"
mkdir -p "$OUT"
WORK=$(mktemp -d)
SERVER=""
trap '[ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; rm -rf "$WORK"' EXIT
PORT=18181
URL="http://127.0.0.1:$PORT/ingest"

wait_up() {
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
    sleep 0.2
  done
  echo "the server under callgrind did not come up" >&2; exit 1
}

# profile NAME [VAR=VALUE ...] -- CMD...: one server under callgrind, the
# requests, the counts.
profile() {
  local name=$1; shift
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  local file="$OUT/$name.callgrind"
  rm -f "$file" "$file".*
  env "${envs[@]}" valgrind --tool=callgrind --callgrind-out-file="$file" "$@" >/dev/null 2>"$WORK/$name.valgrind" &
  SERVER=$!
  wait_up
  env "${POST_ENV[@]}" "$TOOLS/post_n" "$URL" 2000 16 >/dev/null
  callgrind_control -z "$SERVER" >/dev/null 2>&1
  env "${POST_ENV[@]}" "$TOOLS/post_n" "$URL" "$N" "$CLIENTS" > "$WORK/$name.post"
  callgrind_control -d "$SERVER" >/dev/null 2>&1
  # Messages per batch: valgrind runs one thread at a time, so requests pile
  # up behind the writer less than natively, and per-batch costs weigh more.
  local batch="-"
  if [ "$name" != ceiling ] && [ "$name" != durable-ceiling ]; then
    batch=$(curl -s "http://127.0.0.1:$PORT/metrics" | awk '
      /^spillway_publish_batch_size_sum/ { s += $2 } /^spillway_publish_batch_size_count/ { c += $2 }
      END { if (c > 0) printf "%.1f", s / c; else print "-" }')
  fi
  kill -TERM "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=""
  # The dump after zeroing is the file with the highest part number.
  local dump; dump=$(ls -1 "$file".* 2>/dev/null | sort -t. -k3 -n | tail -n1)
  local total; total=$(awk '/^summary:|^totals:/ {print $2; exit}' "$dump")
  local accepted; accepted=$(awk '{print $2}' "$WORK/$name.post")
  echo "$name $total $accepted $batch" >> "$WORK/rows"
  # awk reads to the end: `head` would close the pipe, and pipefail end the run.
  callgrind_annotate --inclusive=yes "$dump" 2>/dev/null | awk "NR <= 60" > "$OUT/$name.top.txt"
}

POST_ENV=()
GATEWAY=(SPILLWAY_SERVER__LISTEN="127.0.0.1:$PORT" SPILLWAY_LOG__LEVEL=warn)
profile ceiling -- "$TOOLS/ceiling" "127.0.0.1:$PORT"
profile durable-ceiling -- "$TOOLS/durable_ceiling" "127.0.0.1:$PORT" "$WORK/floor"
profile memory "${GATEWAY[@]}" SPILLWAY_QUEUE__BACKEND=memory -- "$BIN" serve
profile embedded "${GATEWAY[@]}" SPILLWAY_QUEUE__BACKEND=embedded SPILLWAY_QUEUE__PATH="$WORK/data" -- "$BIN" serve
POST_ENV=(ORIGIN="$CORS_ORIGIN")
profile embedded-cors "${GATEWAY[@]}" SPILLWAY_QUEUE__BACKEND=embedded SPILLWAY_QUEUE__PATH="$WORK/data-cors" \
  "${CORS_POLICY_ENV[@]}" -- "$BIN" serve

{
  echo "callgrind: $N requests of 200 bytes, $CLIENTS clients, after 2,000 to warm up; user-space instructions"
  echo
  echo "| server | accepted | messages per batch (whole run) | instructions per request | ratio to ceiling |"
  echo "|---|---|---|---|---|"
  awk '
    $1 == "ceiling" { c = $2 / $3 }
    { rows[NR] = $0 }
    END { for (i = 1; i <= NR; i++) { split(rows[i], f, " "); printf "| %s | %d | %s | %.0f | %.2f |\n", f[1], f[3], f[4], f[2] / f[3], (f[2] / f[3]) / c } }
  ' "$WORK/rows"
  echo
  echo "Top inclusive functions per server: $OUT/<server>.top.txt"
} | tee "$OUT/summary.md"
