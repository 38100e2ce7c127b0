#!/usr/bin/env bash
# Issue 18's "drain >= accept", at the same time on one machine: `spillway
# serve` (embedded queue) under wrk at full speed, and `spillway consume`
# draining the same queue into PostgreSQL with its defaults, both running
# through the whole window. Reports, per round: requests accepted per second,
# rows written per second over the same window, their ratio, and the
# backlog left when wrk stops (and how long the consumer then takes to
# empty it). Drain >= accept holds when the backlog does not grow.
#
# Each round runs two arrangements, alternating which goes first:
# `separate` (a `spillway consume` process beside `spillway serve`, sharing
# the queue file) and `in serve` (`server.consume = true`: the consumer
# inside the gateway's process, sharing its writer thread).
#
#   benches/pipeline.sh [seconds] [connections] [rounds] [out-dir]
#
# Needs wrk, psql and the PostgreSQL at $SPILLWAY_TEST_PG (default: the
# machine's, as deploy/local/services.sh sets it up).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-30}"
CONNS="${2:-64}"
ROUNDS="${3:-2}"
OUT="${4:-benches/results/latest}"
PG="${SPILLWAY_TEST_PG:-postgres://postgres@127.0.0.1:5432/test}"
export PGOPTIONS="--client-min-messages=warning"
source benches/lib.sh
need_wrk
cargo build --release -q -p spillway --bin spillway
TMPDIR=/var/tmp bench_workspace "$OUT"   # the queue's data on the disk, not a tmpfs
post_lua "$WORK/post.lua"
rows() { psql "$PG" -tAc "SELECT count(*) FROM $1" 2>/dev/null || echo 0; }
# one_case ROUND MODE: prints one table row.
one_case() {
  local round=$1 mode=$2 table="spillway_pipeline_$$_$1_${2// /_}" consume=false
  [ "$mode" = "in serve" ] && consume=true
  psql "$PG" -qc "DROP TABLE IF EXISTS $table" >/dev/null
  cat > "$WORK/spillway.toml" <<TOML
[server]
listen = "127.0.0.1:18083"
consume = $consume
[log]
level = "warn"
[queue]
backend = "embedded"
path = "$WORK/data-$round-${mode// /_}"
[[ingest.routes]]
path = "/ingest"
queue = "events"
[consumer]
queue = "events"
[consumer.sink]
type = "postgres"
url = "$PG"
table = "$table"
TOML
  "$BIN/spillway" --config "$WORK/spillway.toml" serve >/dev/null 2>&1 & gw=$!
  for _ in $(seq 1 100); do curl -fs http://127.0.0.1:18083/readyz >/dev/null && break; sleep 0.2; done
  co=
  if [ "$consume" = false ]; then
    "$BIN/spillway" --config "$WORK/spillway.toml" consume >/dev/null 2>&1 & co=$!
  fi
  # Warm up both sides, then measure from an empty queue.
  wrk -t1 -c8 -d2s -s "$WORK/post.lua" http://127.0.0.1:18083/ingest >/dev/null
  for _ in $(seq 1 100); do [ "$(rows "$table")" -ge 1 ] && break; sleep 0.2; done
  sleep 2
  local r0 r1 t0 t1 reqs bad backlog e0 e1
  r0=$(rows "$table"); t0=$(date +%s.%N)
  wrk -t2 -c"$CONNS" -d"${DURATION}s" -s "$WORK/post.lua" http://127.0.0.1:18083/ingest > "$WORK/wrk.txt"
  t1=$(date +%s.%N); r1=$(rows "$table")
  reqs=$(awk '/requests in/ {print $1}' "$WORK/wrk.txt")
  bad=$(awk '/Non-2xx/ {print $NF}' "$WORK/wrk.txt"); bad=${bad:-0}
  left() {
    "$BIN/spillway" --config "$WORK/spillway.toml" queue stats --json 2>/dev/null \
      | python3 -c 'import json,sys; q=json.load(sys.stdin)["events"]; print(q["visible"] + q["delayed"] + q["in_flight"])'
  }
  backlog=$(left)
  # How long the consumer then needs to empty the queue (at most 5 minutes).
  e0=$(date +%s.%N)
  for _ in $(seq 1 600); do [ "$(left)" = 0 ] && break; sleep 0.5; done
  e1=$(date +%s.%N)
  echo "$round|$mode|$reqs|$bad|$r0|$r1|$t0|$t1|$backlog|$e0|$e1" | awk -F'|' '{
    secs = $8 - $7; acc = ($3 - $4) / secs; dr = ($6 - $5) / secs
    printf "| %s | %s | %.0f | %.0f | %.2f | %s | %.1f s |\n", $1, $2, acc, dr, dr / acc, $9, $11 - $10 }'
  kill -TERM $gw $co; wait $gw $co 2>/dev/null || true
  psql "$PG" -qc "DROP TABLE IF EXISTS $table" >/dev/null
}
{
  echo "wrk 2 threads, $CONNS connections, ${DURATION}s; consumer defaults into PostgreSQL; $(nproc) cores; $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "| round | consumer | accepted/s | drained/s | drained / accepted | backlog at the end | emptied after |"
  echo "|---|---|---|---|---|---|---|"
  for round in $(seq 1 "$ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then
      one_case "$round" separate; one_case "$round" "in serve"
    else
      one_case "$round" "in serve"; one_case "$round" separate
    fi
  done
} | tee "$OUT/pipeline.md"
