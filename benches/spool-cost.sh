#!/usr/bin/env bash
# What `queue.spool.on = "always"` costs (issue 34): `spillway serve` on one
# broker without a spool (the baseline) and with every message going
# through the spool, alternating, ROUNDS times, in one run:
#   1. open loop  - spillway-load at RATE/s for SECONDS: p50 and p99 at a
#                   load both keep up with;
#   2. closed loop - wrk, 64 connections, SECONDS: the most each accepts,
#                   and its p99 at that;
# and, with the spool, how many messages it held when the load stopped and
# how long the forwarder took to empty it. Prints a Markdown table with the
# spool's figures as ratios to the baseline's of the same round.
#
#   benches/spool-cost.sh rabbitmq|kafka|sqs [seconds] [rounds] [rate] [out-dir]
#
# The brokers of `deploy/local/services.sh up`: RabbitMQ at
# $SPILLWAY_TEST_AMQP, the Kafka node at 127.0.0.1:9092, ElasticMQ at
# $SPILLWAY_TEST_ELASTICMQ.
set -euo pipefail
cd "$(dirname "$0")/.."
BACKEND="${1:?usage: benches/spool-cost.sh rabbitmq|kafka|sqs [seconds] [rounds] [rate] [out-dir]}"
DURATION="${2:-20}"
ROUNDS="${3:-2}"
RATE="${4:-1000}"
OUT="${5:-benches/results/latest/spool-cost-$BACKEND}"
AMQP="${SPILLWAY_TEST_AMQP:-amqp://guest:guest@127.0.0.1:5672/%2f}"
KAFKA="${SPILLWAY_TEST_KAFKA:-127.0.0.1:9092}"
SQS="${SPILLWAY_TEST_ELASTICMQ:-http://127.0.0.1:9324}"
source benches/lib.sh
need_wrk
cargo build --release -q -p spillway -p spillway-load
bench_workspace "$OUT"
post_lua "$WORK/post.lua"
json() { python3 -c "import json,sys; v=json.load(open('$1')); print($2)"; }
RUN="$(date +%s)"
ADMIN=127.0.0.1:18391
URL=http://127.0.0.1:18390/ingest
export SPILLWAY_LOG__LEVEL=warn

backend_env() {  # the broker's settings, as environment overrides
  case "$BACKEND" in
    rabbitmq) echo "SPILLWAY_QUEUE__BACKEND=rabbitmq SPILLWAY_QUEUE__URL=$AMQP" ;;
    kafka) echo "SPILLWAY_QUEUE__BACKEND=kafka SPILLWAY_QUEUE__BROKERS=$KAFKA SPILLWAY_QUEUE__REPLICATION=1" ;;
    sqs) echo "SPILLWAY_QUEUE__BACKEND=sqs SPILLWAY_QUEUE__ENDPOINT_URL=$SQS SPILLWAY_QUEUE__REGION=us-east-1 SPILLWAY_QUEUE__ACCESS_KEY_ID=bench SPILLWAY_QUEUE__SECRET_ACCESS_KEY=bench" ;;
    *) echo "unknown backend $BACKEND: rabbitmq, kafka or sqs" >&2; exit 2 ;;
  esac
}

spooled() {  # messages in the gateway's spool now (0 without one)
  curl -fs "http://$ADMIN/metrics" | awk '/^spillway_spool_messages\{/ {s += $2} END {print s + 0}'
}

# case ROUND none|always -> a row: case round open_p50 open_p99 open_2xx_share wrk_rps wrk_p99 wrk_non2xx left drain_s
run_case() {
  local round="$1" case="$2" queue="spillway-bench-spool-$RUN-$1-$2" spool_env=""
  [ "$case" = always ] && spool_env="SPILLWAY_QUEUE__SPOOL__PATH=$WORK/spool-$round SPILLWAY_QUEUE__SPOOL__ON=always"
  env $(backend_env) $spool_env SPILLWAY_SERVER__LISTEN=127.0.0.1:18390 SPILLWAY_SERVER__ADMIN_LISTEN=$ADMIN \
    SPILLWAY_CONSUMER__QUEUE="$queue" SPILLWAY_INGEST__ROUTES="[{path=\"/ingest\",queue=\"$queue\"}]" \
    "$BIN/spillway" serve >"$WORK/gw-$round-$case.log" 2>&1 & local pid=$!
  for _ in $(seq 1 150); do curl -fs "http://$ADMIN/readyz" >/dev/null && break; sleep 0.2; done
  wrk -t1 -c8 -d2s -s "$WORK/post.lua" "$URL" >/dev/null
  wait_empty 60 >/dev/null
  "$BIN/spillway-load" run --url "$URL" --rate "$RATE" --duration "${DURATION}s" --quiet --out "$OUT/$case-r$round-open" >/dev/null
  local r="$OUT/$case-r$round-open/results.json"
  local p50 p99 share
  p50=$(json "$r" "v['latency']['p50_ms']"); p99=$(json "$r" "v['latency']['p99_ms']")
  share=$(json "$r" "v['accepted'] / max(1, v['sent'])")
  wait_empty 120 >/dev/null
  wrk -t2 -c64 -d"${DURATION}s" --latency -s "$WORK/post.lua" "$URL" > "$OUT/$case-r$round-wrk.txt"
  local left drain
  left=$(spooled)
  drain=$(wait_empty 300)
  kill -TERM $pid; wait $pid 2>/dev/null || true
  local rps wp99 non2xx
  rps=$(awk '/Requests\/sec/ {print $2}' "$OUT/$case-r$round-wrk.txt")
  wp99=$(awk '$1 == "99%" {print $2}' "$OUT/$case-r$round-wrk.txt")
  non2xx=$(awk '/Non-2xx/ {print $5}' "$OUT/$case-r$round-wrk.txt")
  [ "$BACKEND" = rabbitmq ] && env $(backend_env) "$BIN/spillway" queue purge --yes --queue "$queue" >/dev/null 2>&1 || true
  echo "$case $round $p50 $p99 $share $rps $wp99 ${non2xx:-0} $left $drain" >> "$WORK/rows"
}

wait_empty() {  # MAX_SECONDS -> seconds until the spool is empty
  local t0 n
  t0=$(date +%s.%N)
  for _ in $(seq 1 $(( $1 * 5 ))); do
    n=$(spooled)
    [ "${n:-0}" = 0 ] && break
    sleep 0.2
  done
  python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')"
}

for round in $(seq 1 "$ROUNDS"); do
  run_case "$round" none
  run_case "$round" always
done

case "$BACKEND" in
  rabbitmq) broker="RabbitMQ $(rabbitmqctl version 2>/dev/null || echo '?') (quorum queue, publisher confirms)" ;;
  kafka) broker="Apache Kafka at $KAFKA (acks=all, one node)" ;;
  sqs) broker="ElasticMQ at $SQS" ;;
esac
{
  echo "$broker: \`spillway serve\` without a spool and with \`queue.spool.on = \"always\"\`, alternating; open loop at $RATE/s (spillway-load) and closed loop (wrk, 64 connections), ${DURATION}s each, ${BODY_BYTES}-byte body; $(nproc) cores; $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "| round | spool | p50 at $RATE/s | p99 at $RATE/s | p99 / baseline | accepted at $RATE/s | wrk req/s | wrk req/s / baseline | wrk p99 | non-2xx | spool when wrk stopped | emptied after |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
  awk '{
    if ($1 == "none") { bp99[$2] = $4; brps[$2] = $6 }
    sp = ($1 == "none") ? "none (baseline)" : "always"
    left = ($1 == "none") ? "–" : $9; drain = ($1 == "none") ? "–" : $10 " s"
    printf "| %s | %s | %.2f ms | %.2f ms | %.2f | %.1f %% | %.0f | %.2f | %s | %s | %s | %s |\n", $2, sp, $3, $4, $4 / bp99[$2], $5 * 100, $6, $6 / brps[$2], $7, $8, left, drain
  }' "$WORK/rows"
} | tee "$OUT/summary.md"
