#!/usr/bin/env bash
# The gateway against its backend's raw publisher, in one run, at the same
# concurrency, with the same 200-byte message:
#   1. raw      - the backend's own client with no HTTP and no Spillway:
#                 embedded  benches/src/bin/raw_embedded.rs (the queue's send_batch)
#                 rabbitmq  benches/src/bin/raw_lapin.rs (confirms, durable quorum queue)
#                 kafka     benches/src/bin/raw_rdkafka.rs (acks=all, idempotent)
#                 sqs       benches/src/bin/raw_sqs.rs (SendMessageBatch of 10)
#   2. bare     - benches/src/bin/ceiling.rs, an axum server that stores
#                 nothing, driven by the same wrk: what HTTP alone allows;
#                 on kafka benches/src/bin/bridge_rdkafka.rs, that server
#                 producing each body like raw_rdkafka before its 202
#   3. gateway  - `spillway serve` on that backend, driven by wrk
# alternating, ROUNDS times. Prints a Markdown table with each gateway figure
# as a ratio to the raw figure of the same round, and to the lower of raw
# and bare (no gateway can beat either), and the gateway's CPU seconds per
# million accepted requests (from /proc).
#
#   benches/publish.sh BACKEND [seconds] [concurrency] [rounds] [out-dir]
#
# Needs wrk; rabbitmq needs a RabbitMQ at $SPILLWAY_TEST_AMQP (default: the
# machine's), kafka a broker at $SPILLWAY_TEST_KAFKA (default: the Apache
# Kafka node `deploy/local/services.sh up` starts on 127.0.0.1:9092; the
# three-node cluster of `services.sh cluster kafka` is
# 127.0.0.1:29092,127.0.0.1:29094,127.0.0.1:29096, where topics get the
# cluster's replication 3 and min.insync.replicas 2), sqs an SQS endpoint at
# $SPILLWAY_TEST_ELASTICMQ (default: the ElasticMQ `services.sh up` starts).
set -euo pipefail
cd "$(dirname "$0")/.."
BACKEND="${1:?usage: benches/publish.sh embedded|rabbitmq|kafka|sqs [seconds] [concurrency] [rounds] [out-dir]}"
DURATION="${2:-10}"
# The route's format: `envelope` (the default: the JSON envelope around the
# body) or `raw` (the body's bytes alone, as the raw publisher sends them).
FORMAT="${FORMAT:-envelope}"
CONNS="${3:-64}"
ROUNDS="${4:-2}"
OUT="${5:-benches/results/latest}"
AMQP="${SPILLWAY_TEST_AMQP:-amqp://guest:guest@127.0.0.1:5672/%2f}"
KAFKA="${SPILLWAY_TEST_KAFKA:-127.0.0.1:9092}"
SQS="${SPILLWAY_TEST_ELASTICMQ:-http://127.0.0.1:9324}"
# The Kafka topics' replication: the cluster's 3 where there are three nodes.
REPLICATION=1; [[ "$KAFKA" == *,* ]] && REPLICATION=3
source benches/lib.sh
need_wrk
case "$BACKEND" in
  embedded) RAW=raw_embedded ;;
  rabbitmq) RAW=raw_lapin ;;
  kafka) RAW=raw_rdkafka ;;
  sqs) RAW=raw_sqs ;;
  *) echo "unknown backend $BACKEND: embedded, rabbitmq, kafka or sqs" >&2; exit 2 ;;
esac
cargo build --release -q -p spillway -p spillway-benches --bin spillway --bin ceiling --bin bridge_rdkafka --bin "$RAW"
bench_workspace "$OUT"
post_lua "$WORK/post.lua"
# The whole machine's busy and total jiffies, to tell "CPU-bound" from "waiting".
machine() { awk '/^cpu / {busy = $2 + $3 + $4 + $7 + $8; print busy, busy + $5 + $6}' /proc/stat; }
busy_share() { echo "$1 $2" | awk '{printf "%.0f", ($3 - $1) / ($4 - $2) * 100}'; }  # "b0 t0" "b1 t1" -> %
RUN="$(date +%s)"

raw_run() {  # raw_run ROUND -> msgs/s
  case "$BACKEND" in
    embedded) "$BIN/raw_embedded" "$WORK/raw-$1" "$CONNS" "$DURATION" "$BODY_BYTES" ;;
    rabbitmq) "$BIN/raw_lapin" "$AMQP" spillway-bench-raw "$CONNS" "$DURATION" "$BODY_BYTES" ;;
    kafka) "$BIN/raw_rdkafka" "$KAFKA" "spillway-bench-raw-$RUN" "$CONNS" "$DURATION" "$BODY_BYTES" ;;
    sqs) "$BIN/raw_sqs" "$SQS" "spillway-bench-raw-$RUN-$1" "$CONNS" "$DURATION" "$BODY_BYTES" ;;
  esac 2>/dev/null | tail -n1 | awk '{print $1}'
}

gateway_env() {  # the backend's settings, as environment overrides
  case "$BACKEND" in
    embedded) echo "SPILLWAY_QUEUE__BACKEND=embedded SPILLWAY_QUEUE__PATH=$WORK/gw-$1" ;;
    rabbitmq) echo "SPILLWAY_QUEUE__BACKEND=rabbitmq SPILLWAY_QUEUE__URL=$AMQP" ;;
    kafka) echo "SPILLWAY_QUEUE__BACKEND=kafka SPILLWAY_QUEUE__BROKERS=$KAFKA SPILLWAY_QUEUE__REPLICATION=$REPLICATION" ;;
    sqs) echo "SPILLWAY_QUEUE__BACKEND=sqs SPILLWAY_QUEUE__ENDPOINT_URL=$SQS SPILLWAY_QUEUE__REGION=us-east-1 SPILLWAY_QUEUE__ACCESS_KEY_ID=bench SPILLWAY_QUEUE__SECRET_ACCESS_KEY=bench" ;;
  esac
}

# The bare axum 202 server under the same wrk: the most any HTTP gateway
# reaches here, whatever its backend (on 2 cores shared with wrk, HTTP
# alone can cap the gateway below a raw publisher that has no HTTP).
# On Kafka it is bridge_rdkafka instead: that server producing each body
# with the raw producer's settings before its 202, the floor under any
# HTTP-to-Kafka gateway.
BARE=ceiling; [ "$BACKEND" = kafka ] && BARE=bridge_rdkafka
ceiling_run() {  # ROUND -> req/s
  case "$BARE" in
    ceiling) "$BIN/ceiling" 127.0.0.1:18083 >/dev/null 2>&1 & ;;
    bridge_rdkafka) "$BIN/bridge_rdkafka" 127.0.0.1:18083 "$KAFKA" "spillway-bench-bridge-$RUN-$1" >/dev/null 2>&1 & ;;
  esac
  local cpid=$!
  for _ in $(seq 1 100); do curl -fs -o /dev/null -X POST -d '{}' http://127.0.0.1:18083/ingest && break; sleep 0.1; done
  wrk -t2 -c"$CONNS" -d"${DURATION}s" -s "$WORK/post.lua" http://127.0.0.1:18083/ingest 2>/dev/null | awk '/Requests\/sec/ {print $2}'
  kill -TERM $cpid; wait $cpid 2>/dev/null || true
}

for round in $(seq 1 "$ROUNDS"); do
  ceiling=$(ceiling_run "$round")
  m0=$(machine)
  raw=$(raw_run "$round")
  m1=$(machine)
  raw_busy=$(busy_share "$m0" "$m1")
  # A fresh queue per round on Kafka and SQS: each round starts on empty queues.
  queue="spillway-bench-gw"; [ "$BACKEND" = kafka ] || [ "$BACKEND" = sqs ] && queue="spillway-bench-gw-$RUN-$round"
  env $(gateway_env "$round") SPILLWAY_SERVER__LISTEN=127.0.0.1:18082 SPILLWAY_LOG__LEVEL=warn \
    SPILLWAY_CONSUMER__QUEUE="$queue" SPILLWAY_INGEST__ROUTES="[{path=\"/ingest\",queue=\"$queue\",format=\"$FORMAT\"}]" \
    "$BIN/spillway" serve >/dev/null & pid=$!
  for _ in $(seq 1 100); do curl -fs http://127.0.0.1:18082/readyz >/dev/null && break; sleep 0.2; done
  wrk -t1 -c8 -d2s -s "$WORK/post.lua" http://127.0.0.1:18082/ingest >/dev/null
  cpu0=$(cpu_secs $pid)
  m0=$(machine)
  wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -s "$WORK/post.lua" http://127.0.0.1:18082/ingest > "$OUT/$BACKEND-gw-c$CONNS-r$round.txt"
  cpu1=$(cpu_secs $pid)
  m1=$(machine)
  gw_busy=$(busy_share "$m0" "$m1")
  kill -TERM $pid; wait $pid 2>/dev/null || true
  gw=$(awk '/Requests\/sec/ {print $2}' "$OUT/$BACKEND-gw-c$CONNS-r$round.txt")
  non2xx=$(awk '/Non-2xx/ {print $5}' "$OUT/$BACKEND-gw-c$CONNS-r$round.txt")
  p99=$(awk '$1 == "99%" {print $2}' "$OUT/$BACKEND-gw-c$CONNS-r$round.txt")
  echo "$round $raw $gw ${non2xx:-0} $p99 $cpu0 $cpu1 $raw_busy $gw_busy $ceiling" >> "$WORK/rows"
  if [ "$BACKEND" = rabbitmq ] || [ "$BACKEND" = sqs ]; then
    env $(gateway_env "$round") "$BIN/spillway" queue purge --yes --queue "$queue" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK/raw-$round" "$WORK/gw-$round"
done

case "$BACKEND" in
  embedded) broker="the embedded queue (SQLite, synchronous=FULL)" ;;
  rabbitmq) broker="RabbitMQ $(rabbitmqctl version 2>/dev/null || echo '?')" ;;
  kafka) broker="Apache Kafka at $KAFKA (acks=all, replication $REPLICATION)" ;;
  sqs) broker="SQS at $SQS" ;;
esac
{
  echo "$broker: ${CONNS} concurrent senders, ${DURATION}s per case, ${BODY_BYTES}-byte body; $(nproc) cores; $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "| round | raw $RAW, msg/s | bare HTTP $BARE, req/s | gateway, req/s | gateway / raw | gateway / min(raw, bare) | gateway non-2xx | gateway p99 | gateway CPU-s per 1M | machine busy, raw / gateway |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  awk -v d="$DURATION" '{ m = ($2 < $10 ? $2 : $10); printf "| %s | %.0f | %.0f | %.0f | %.2f | %.2f | %s | %s | %.0f | %s %% / %s %% |\n", $1, $2, $10, $3, $3 / $2, $3 / m, $4, $5, ($7 - $6) / ($3 * d) * 1e6, $8, $9 }' "$WORK/rows"
} | tee "$OUT/$BACKEND-publish-c$CONNS.md"
