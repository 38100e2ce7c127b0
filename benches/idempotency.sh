#!/usr/bin/env bash
# What an Idempotency-Key costs (issue 35): `spillway serve` on the embedded
# queue, driven by wrk with a fresh key on every request (the common case:
# every request is new), in three cases alternating ROUNDS times in one run:
#   none      - the route without `idempotency` (the baseline);
#   local     - `idempotency = { store = "local" }` (SQLite beside the gateway);
#   postgres  - `idempotency = { store = "postgres" }` (the test PostgreSQL).
# Prints a Markdown table: req/s and p99 of each, as ratios to the baseline
# of the same round, and the gateway's CPU seconds per million requests.
#
#   benches/idempotency.sh [seconds] [connections] [rounds] [out-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-15}"
CONNS="${2:-64}"
ROUNDS="${3:-2}"
OUT="${4:-benches/results/latest/idempotency}"
PG="${SPILLWAY_TEST_PG:-postgres://postgres@127.0.0.1:5432/test}"
source benches/lib.sh
need_wrk
cargo build --release -q -p spillway
bench_workspace "$OUT"
post_lua "$WORK/post.lua"
# The same body, with a key of its own per request: thread id and count.
cat > "$WORK/keyed.lua" <<'LUA'
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function init(args)
  n = 0
end
function request()
  n = n + 1
  local headers = { ["Content-Type"] = "application/json", ["Idempotency-Key"] = "k-" .. tid .. "-" .. n .. "-" .. os.time() }
  return wrk.format("POST", nil, headers, wrk.body)
end
LUA
sed -n '/^wrk.body/p' "$WORK/post.lua" > "$WORK/body.lua"
cat "$WORK/body.lua" "$WORK/keyed.lua" > "$WORK/keyed-full.lua"
TABLE="spillway_idempotency_bench_$(date +%s)"

run_case() {  # ROUND CASE -> a row
  local round="$1" case="$2" route='[{path="/ingest",queue="bench"}]' script="$WORK/post.lua"
  case "$case" in
    local) route='[{path="/ingest",queue="bench",idempotency={store="local"}}]'; script="$WORK/keyed-full.lua" ;;
    postgres) route='[{path="/ingest",queue="bench",idempotency={store="postgres"}}]'; script="$WORK/keyed-full.lua" ;;
  esac
  SPILLWAY_SERVER__LISTEN=127.0.0.1:18590 SPILLWAY_SERVER__ADMIN_LISTEN=127.0.0.1:18591 SPILLWAY_LOG__LEVEL=warn \
    SPILLWAY_QUEUE__BACKEND=embedded SPILLWAY_QUEUE__PATH="$WORK/q-$round-$case" \
    SPILLWAY_INGEST__IDEMPOTENCY__PATH="$WORK/idem-$round" SPILLWAY_INGEST__IDEMPOTENCY__POSTGRES_URL="$PG" \
    SPILLWAY_INGEST__IDEMPOTENCY__TABLE="$TABLE" SPILLWAY_CONSUMER__QUEUE=bench SPILLWAY_INGEST__ROUTES="$route" \
    "$BIN/spillway" serve >"$WORK/gw.log" 2>&1 & local pid=$!
  for _ in $(seq 1 100); do curl -fs http://127.0.0.1:18591/readyz >/dev/null && break; sleep 0.2; done
  wrk -t1 -c8 -d2s -s "$script" http://127.0.0.1:18590/ingest >/dev/null
  local cpu0 cpu1
  cpu0=$(cpu_secs $pid)
  wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -s "$script" http://127.0.0.1:18590/ingest > "$OUT/$case-r$round.txt"
  cpu1=$(cpu_secs $pid)
  kill -TERM $pid; wait $pid 2>/dev/null || true
  local rps p99 non2xx
  rps=$(awk '/Requests\/sec/ {print $2}' "$OUT/$case-r$round.txt")
  p99=$(awk '$1 == "99%" {print $2}' "$OUT/$case-r$round.txt")
  non2xx=$(awk '/Non-2xx/ {print $5}' "$OUT/$case-r$round.txt")
  echo "$round $case $rps $p99 ${non2xx:-0} $cpu0 $cpu1" >> "$WORK/rows"
  rm -rf "$WORK/q-$round-$case"
}

for round in $(seq 1 "$ROUNDS"); do
  for c in none local postgres; do run_case "$round" "$c"; done
done
psql "$PG" -qc "DROP TABLE IF EXISTS $TABLE" >/dev/null 2>&1 || true

{
  echo "\`spillway serve\` on the embedded queue, wrk ${CONNS} connections, ${DURATION}s per case, ${BODY_BYTES}-byte body, a fresh Idempotency-Key per request; $(nproc) cores; $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "| round | idempotency | req/s | req/s / baseline | p99 | non-2xx | gateway CPU-s per 1M |"
  echo "|---|---|---|---|---|---|---|"
  awk -v d="$DURATION" '{
    if ($2 == "none") base[$1] = $3
    name = ($2 == "none") ? "none (baseline)" : $2 " store"
    printf "| %s | %s | %.0f | %.2f | %s | %s | %.0f |\n", $1, name, $3, $3 / base[$1], $4, $5, ($7 - $6) / ($3 * d) * 1e6
  }' "$WORK/rows"
} | tee "$OUT/summary.md"
