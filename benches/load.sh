#!/usr/bin/env bash
# The load run behind docs/benchmarks.md: wrk, 200-byte JSON POST, against
#   1. ceiling   - a bare axum server that reads the body and answers 202 (no storage)
#   1b. durable-ceiling - the same server, answering after the body is appended to a
#                  segment log and fdatasync'd (group commit): the floor under any
#                  durable gateway on this machine, not a queue
#   2. memory    - `spillway serve` on the memory backend (everything but the disk)
#   3. embedded  - `spillway serve` on the embedded queue (fsync'd group commits)
# one after the other, in the same run, on the same machine, at 64 connections
# and at 256. Prints a Markdown table with each figure as a ratio to the
# ceiling and to the durable ceiling, and each server's peak RSS (VmHWM).
#
#   benches/load.sh [seconds] [out-dir]     # default 15 s, benches/results/latest
#   REST=20 benches/load.sh ...             # pause before each spillway case
#   NOSYNC_FLOOR=1 benches/load.sh ...      # also the durable ceiling without its fdatasync
#   PIN=1 benches/load.sh ...               # servers on CPU 1, wrk (one thread) on CPU 0
#   CORS=1 benches/load.sh ...              # the gateway behind the usual CORS policy
#                                           # (wildcard origins, credentials), every
#                                           # request from an allowed Origin
#
# Needs wrk (Debian: apt-get install wrk). Builds release binaries first.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-15}"
OUT="${2:-benches/results/latest}"
source benches/lib.sh
need_wrk
cargo build --release -q -p spillway -p spillway-benches --bin spillway --bin ceiling --bin durable_ceiling
bench_workspace "$OUT"
post_lua "$WORK/post.lua"
CORS_ENV=()
if [ -n "${CORS:-}" ]; then
  echo "wrk.headers[\"Origin\"] = \"$CORS_ORIGIN\"" >> "$WORK/post.lua"
  CORS_ENV=("${CORS_POLICY_ENV[@]}")
fi


# PIN=1: the server under test and the load generator each get a core of
# their own, so they do not take turns on both (taskset).
SERVER_CPU=(); WRK=(wrk -t2)
if [ -n "${PIN:-}" ]; then SERVER_CPU=(taskset -c 1); WRK=(taskset -c 0 wrk -t1); fi

# run_case NAME URL PID CONNS -> appends "name conns rps p50 p99 rss_kib cpu_us_per_req" to $WORK/rows
run_case() {
  local name=$1 url=$2 pid=$3 conns=$4
  "${WRK[@]}" -c8 -d2s -s "$WORK/post.lua" "$url" >/dev/null   # warm-up
  local t0 t1
  t0=$(cpu_secs "$pid")
  "${WRK[@]}" -c"$conns" -d"${DURATION}s" --latency -s "$WORK/post.lua" "$url" > "$OUT/$name-c$conns.txt"
  t1=$(cpu_secs "$pid")
  local rps p50 p99 rss reqs cpu
  rps=$(awk '/Requests\/sec/ {print $2}' "$OUT/$name-c$conns.txt")
  reqs=$(awk '/requests in/ {print $1}' "$OUT/$name-c$conns.txt")
  p50=$(awk '$1 == "50%" {print $2}' "$OUT/$name-c$conns.txt")
  p99=$(awk '$1 == "99%" {print $2}' "$OUT/$name-c$conns.txt")
  rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  cpu=$(awk -v t0="$t0" -v t1="$t1" -v n="$reqs" 'BEGIN { printf "%.1f", (t1 - t0) * 1e6 / n }')
  echo "$name $conns $rps $p50 $p99 $rss $cpu" >> "$WORK/rows"
}

# start_spillway BACKEND [BINARY]: starts the gateway as a job of this
# shell (so the exit trap stops it if a run fails), its pid in SERVER.
# BASELINE_BIN (a spillway binary built from another commit) adds an
# `embedded-baseline` row to each round (BASELINE_NAME renames it; the
# binary may be a script that sets an environment variable and `exec`s
# spillway, for a setting's variant), so a change is measured against
# what it replaced in the same run.
start_spillway() {
  local backend=$1 bin=${2:-} extra=()
  [ -n "$bin" ] || bin="$BIN/spillway"
  [ "$backend" = embedded ] && extra=(SPILLWAY_QUEUE__PATH="$WORK/data-$RANDOM")
  env SPILLWAY_SERVER__LISTEN=127.0.0.1:18080 SPILLWAY_LOG__LEVEL=warn SPILLWAY_QUEUE__BACKEND="$backend" "${extra[@]}" "${CORS_ENV[@]}" \
    "${SERVER_CPU[@]}" "$bin" serve >/dev/null &
  SERVER=$!
}

# A case run right after an embedded one was measured up to 1.6x costlier
# per request than the same case run first (docs/benchmarks.md, "the
# store's share"), so: REST seconds of pause before each case, and with a
# BASELINE_BIN the baseline runs before `embedded` at 64 connections and
# after it at 256, so neither always follows the other.
REST="${REST:-0}"
spillway_case() {  # spillway_case NAME BACKEND CONNS [BINARY]
  sleep "$REST"
  local pid; start_spillway "$2" "${4:-}"; pid=$SERVER; sleep 1
  run_case "$1" http://127.0.0.1:18080/ingest "$pid" "$3"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
}
# bare_case NAME CONNS CMD...: one of the baseline servers, listening on
# 127.0.0.1:18090, started, measured, stopped.
bare_case() {
  local name=$1 conns=$2 pid; shift 2
  "${SERVER_CPU[@]}" "$@" >/dev/null & pid=$!; sleep 0.5
  run_case "$name" http://127.0.0.1:18090/ingest "$pid" "$conns"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
for conns in 64 256; do
  bare_case ceiling $conns "$BIN/ceiling" 127.0.0.1:18090
  for mode in sync ${NOSYNC_FLOOR:+nosync}; do
    name=durable-ceiling; [ "$mode" = sync ] || name=durable-ceiling-$mode
    bare_case "$name" $conns "$BIN/durable_ceiling" 127.0.0.1:18090 "$WORK/floor-$mode-$conns" "$mode"
  done
  spillway_case memory memory $conns
  if [ -n "${BASELINE_BIN:-}" ] && [ "$conns" = 64 ]; then
    spillway_case "${BASELINE_NAME:-embedded-baseline}" embedded $conns "$BASELINE_BIN"
  fi
  spillway_case embedded embedded $conns
  if [ -n "${BASELINE_BIN:-}" ] && [ "$conns" != 64 ]; then
    spillway_case "${BASELINE_NAME:-embedded-baseline}" embedded $conns "$BASELINE_BIN"
  fi
done

{
  echo "load: ${WRK[*]}, ${DURATION}s per case, ${BODY_BYTES}-byte JSON POST; $(nproc) cores; $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "| server | connections | req/s | ratio to ceiling | p50 | p99 | peak RSS | server CPU per request | CPU ratio to ceiling | req/s vs durable ceiling | CPU vs durable ceiling |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  awk '
    $1 == "ceiling" { ceil[$2] = $3; ceilcpu[$2] = $7 }
    $1 == "durable-ceiling" { floor[$2] = $3; floorcpu[$2] = $7 }
    { rows[NR] = $0 }
    END {
      for (i = 1; i <= NR; i++) {
        split(rows[i], f, " ")
        printf "| %s | %s | %.0f | %.2f | %s | %s | %.1f MiB | %.1f µs | %.2f | %.2f | %.2f |\n", f[1], f[2], f[3], f[3] / ceil[f[2]], f[4], f[5], f[6] / 1024, f[7], f[7] / ceilcpu[f[2]], f[3] / floor[f[2]], f[7] / floorcpu[f[2]]
      }
    }' "$WORK/rows"
} | tee "$OUT/summary.md"
