#!/usr/bin/env bash
# How fast `spillway consume` drains a RabbitMQ backlog into PostgreSQL, one
# worker against eight, in one run (issue 15): with one worker a consumer
# has one receive in progress at a time, as every consumer had before
# receives got a channel each; with eight, eight run at once.
#
#   benches/rabbitmq-drain.sh [messages] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-60000}"
ROUNDS="${2:-2}"
PG="${SPILLWAY_TEST_PG:-postgres://postgres@127.0.0.1:5432/test}"
AMQP="${SPILLWAY_TEST_AMQP:-amqp://guest:guest@127.0.0.1:5672/%2f}"
cargo build --release -q -p spillway -p spillway-benches --bin spillway --bin post_n
BIN="${CARGO_TARGET_DIR:-target}/release"
WORK="$(mktemp -d)"
cleanup() { kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
cat > "$WORK/config.toml" <<TOML
[queue]
backend = "rabbitmq"
url = "$AMQP"
[server]
listen = "127.0.0.1:18280"
[metrics]
consumer_listen = "127.0.0.1:18281"
[[ingest.routes]]
path = "/ingest"
queue = "spillway-bench-drain"
[consumer]
queue = "spillway-bench-drain"
batch_size = 100
wait = "1s"
[consumer.sink]
type = "postgres"
url = "$PG"
table = "bench_drain"
TOML
export SPILLWAY_LOG__LEVEL=warn
"$BIN/spillway" --config "$WORK/config.toml" queue purge --yes >/dev/null
echo "| round | workers | messages | seconds | messages/s |"
echo "|---|---|---|---|---|"
for round in $(seq 1 "$ROUNDS"); do
  for workers in 1 8; do
    psql "$PG" -qc "DROP TABLE IF EXISTS bench_drain" 2>/dev/null
    "$BIN/spillway" --config "$WORK/config.toml" serve >/dev/null 2>&1 & gw=$!
    for _ in $(seq 1 30); do curl -sf http://127.0.0.1:18280/readyz >/dev/null && break; sleep 0.5; done
    "$BIN/post_n" http://127.0.0.1:18280/ingest "$N" 64 200 >/dev/null
    kill -TERM $gw; wait $gw 2>/dev/null || true
    start=$(date +%s.%N)
    SPILLWAY_CONSUMER__CONCURRENCY=$workers "$BIN/spillway" --config "$WORK/config.toml" consume >/dev/null 2>&1 & c=$!
    until [ "$(psql "$PG" -tAc "SELECT count(*) FROM bench_drain" 2>/dev/null || echo 0)" -ge "$N" ]; do sleep 0.2; done
    end=$(date +%s.%N)
    kill -TERM $c; wait $c 2>/dev/null || true
    awk -v r="$round" -v w="$workers" -v n="$N" -v s="$start" -v e="$end" \
      'BEGIN { printf "| %s | %s | %s | %.1f | %.0f |\n", r, w, n, e - s, n / (e - s) }'
  done
done
psql "$PG" -qc "DROP TABLE IF EXISTS bench_drain" 2>/dev/null
