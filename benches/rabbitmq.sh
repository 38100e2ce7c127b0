#!/usr/bin/env bash
# The RabbitMQ run behind docs/benchmarks.md: in one run, at the same
# concurrency, two ways to get a 200-byte message confirmed by a durable
# quorum queue on the machine's RabbitMQ:
#   1. raw      - benches/src/bin/raw_lapin.rs: lapin publishers with confirms, no HTTP
#   2. gateway  - `spillway serve` on backend = "rabbitmq", driven by wrk
# alternating, ROUNDS times. Prints a Markdown table with each gateway figure
# as a ratio to the raw figure of the same round, and the gateway's CPU
# seconds per million accepted requests (from /proc).
#
#   benches/rabbitmq.sh [seconds] [concurrency] [rounds] [out-dir]
#
# Needs wrk and a RabbitMQ at $SPILLWAY_TEST_AMQP (default: the machine's).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
CONNS="${2:-64}"
ROUNDS="${3:-2}"
OUT="${4:-benches/results/latest}"
AMQP="${SPILLWAY_TEST_AMQP:-amqp://guest:guest@127.0.0.1:5672/%2f}"
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install -y wrk" >&2; exit 1; }
cargo build --release -q -p spillway -p spillway-benches --bin spillway --bin raw_lapin
BIN="${CARGO_TARGET_DIR:-target}/release"
mkdir -p "$OUT"
WORK="$(mktemp -d)"
cleanup() { kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
PAD="$(head -c 160 /dev/zero | tr '\0' 'x')"
cat > "$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"event":"page_view","user":42,"pad":"$PAD"}'
wrk.headers["Content-Type"] = "application/json"
LUA
BODY_BYTES=$(printf '{"event":"page_view","user":42,"pad":"%s"}' "$PAD" | wc -c)
cpu_secs() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }  # utime + stime, at 100 Hz

for round in $(seq 1 "$ROUNDS"); do
  raw=$("$BIN/raw_lapin" "$AMQP" spillway-bench-raw "$CONNS" "$DURATION" "$BODY_BYTES" 2>/dev/null | tail -n1)
  env SPILLWAY_SERVER__LISTEN=127.0.0.1:18082 SPILLWAY_LOG__LEVEL=warn SPILLWAY_QUEUE__BACKEND=rabbitmq \
    SPILLWAY_QUEUE__URL="$AMQP" SPILLWAY_CONSUMER__QUEUE=spillway-bench-gw \
    SPILLWAY_INGEST__ROUTES='[{path="/ingest",queue="spillway-bench-gw"}]' \
    "$BIN/spillway" serve >/dev/null & pid=$!
  sleep 2
  wrk -t1 -c8 -d2s -s "$WORK/post.lua" http://127.0.0.1:18082/ingest >/dev/null
  cpu0=$(cpu_secs $pid)
  wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -s "$WORK/post.lua" http://127.0.0.1:18082/ingest > "$OUT/rabbitmq-gw-c$CONNS-r$round.txt"
  cpu1=$(cpu_secs $pid)
  kill -TERM $pid; wait $pid 2>/dev/null || true
  gw=$(awk '/Requests\/sec/ {print $2}' "$OUT/rabbitmq-gw-c$CONNS-r$round.txt")
  non2xx=$(awk '/Non-2xx/ {print $5}' "$OUT/rabbitmq-gw-c$CONNS-r$round.txt")
  p99=$(awk '$1 == "99%" {print $2}' "$OUT/rabbitmq-gw-c$CONNS-r$round.txt")
  echo "$round $raw $gw ${non2xx:-0} $p99 $cpu0 $cpu1" >> "$WORK/rows"
  "$BIN/spillway" queue purge --yes --queue spillway-bench-gw >/dev/null 2>&1 || true
done

{
  echo "RabbitMQ $(rabbitmqctl version 2>/dev/null || echo '?'): ${CONNS} concurrent senders, ${DURATION}s per case, ${BODY_BYTES}-byte body; $(nproc) cores; $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "| round | raw lapin, msg/s | gateway, req/s | gateway / raw | gateway non-2xx | gateway p99 | gateway CPU-s per 1M |"
  echo "|---|---|---|---|---|---|---|"
  awk -v d="$DURATION" '{ printf "| %s | %.0f | %.0f | %.2f | %s | %s | %.0f |\n", $1, $2, $3, $3 / $2, $4, $5, ($7 - $6) / ($3 * d) * 1e6 }' "$WORK/rows"
} | tee "$OUT/rabbitmq-summary.md"
