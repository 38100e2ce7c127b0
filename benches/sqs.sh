#!/usr/bin/env bash
# SQS API calls per accepted message, behind docs/benchmarks.md (issue 14).
# A count, not a speed: moto is no speed reference, and AWS bills SQS by
# request. For 1, 10 and 100 concurrent clients, `spillway serve` on
# backend = "sqs" (a moto server of its own) takes exactly N requests; the
# gateway's `spillway_sqs_requests_total` before and after gives the calls.
# Then `spillway consume` drains the last queue into stdout, and its own
# counter gives the calls per drained message.
#
#   benches/sqs.sh [requests-per-level] [out-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-2000}"
OUT="${2:-benches/results/latest}"
VENV="${SPILLWAY_VENV:-/var/tmp/spillway-venv}"
[ -x "$VENV/bin/moto_server" ] || { echo "moto is needed: deploy/local/services.sh up" >&2; exit 1; }
cargo build --release -q -p spillway -p spillway-benches --bin spillway --bin post_n
BIN="${CARGO_TARGET_DIR:-target}/release"
mkdir -p "$OUT"
WORK="$(mktemp -d)"
cleanup() { kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

"$VENV/bin/python" deploy/local/sqs_server.py -H 127.0.0.1 -p 14566 >/dev/null 2>&1 &
for _ in $(seq 1 30); do (exec 3<>/dev/tcp/127.0.0.1/14566) 2>/dev/null && break; sleep 1; done
cat > "$WORK/config.toml" <<TOML
[queue]
backend = "sqs"
region = "us-east-1"
endpoint_url = "http://127.0.0.1:14566"
access_key_id = "bench"
secret_access_key = "bench"

[metrics]
consumer_listen = "127.0.0.1:18091"

[[ingest.routes]]
path = "/c1"
queue = "bench-c1"
[[ingest.routes]]
path = "/c10"
queue = "bench-c10"
[[ingest.routes]]
path = "/c100"
queue = "bench-c100"

[consumer]
queue = "bench-c100"
concurrency = 4
batch_size = 10
wait = "1s"

[consumer.sink]
type = "stdout"
TOML
calls() { curl -s "$1" | awk '/^spillway_sqs_requests_total/ {n += $NF} END {print n + 0}'; }
SPILLWAY_SERVER__LISTEN=127.0.0.1:18090 SPILLWAY_LOG__LEVEL=warn "$BIN/spillway" --config "$WORK/config.toml" serve >/dev/null &
for _ in $(seq 1 30); do curl -sf http://127.0.0.1:18090/readyz >/dev/null && break; sleep 1; done

# A scrape itself costs calls (the queue gauges read each queue's counts):
# measure that once and take it off.
s1=$(calls http://127.0.0.1:18090/metrics); s2=$(calls http://127.0.0.1:18090/metrics)
scrape=$((s2 - s1))
echo "level sent accepted non2xx errors seconds calls" > "$OUT/sqs-calls.txt"
for c in 1 10 100; do
  before=$(calls http://127.0.0.1:18090/metrics)
  line=$("$BIN/post_n" "http://127.0.0.1:18090/c$c" "$N" "$c" 200)
  after=$(calls http://127.0.0.1:18090/metrics)
  echo "$c $line $((after - before - scrape))" >> "$OUT/sqs-calls.txt"
done

# Drain bench-c100 and count the consumer's calls.
"$BIN/spillway" --config "$WORK/config.toml" consume > "$WORK/drained.jsonl" 2>/dev/null &
consumer=$!
for _ in $(seq 1 600); do
  [ "$(wc -l < "$WORK/drained.jsonl")" -ge "$N" ] && break
  sleep 0.5
done
drained=$(wc -l < "$WORK/drained.jsonl")
drain_calls=$(calls http://127.0.0.1:18091/metrics)  # one scrape: its own calls are few
kill -TERM $consumer; wait $consumer 2>/dev/null || true
echo "drain $drained $drain_calls" >> "$OUT/sqs-calls.txt"

{
  echo "(a /metrics scrape costs $scrape SQS calls itself: the queue gauges; taken off the counts above)"
  echo "moto $("$VENV/bin/python" -c 'import moto; print(moto.__version__)'), $N requests of 200 bytes per level, closed loop; $(nproc) cores; $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "| concurrent clients | accepted | SQS calls | calls per accepted message | SQS cost per 1M accepted (\$0.40 per 1M requests) |"
  echo "|---|---|---|---|---|"
  awk '$1 != "level" && $1 != "drain" { printf "| %s | %s | %s | %.3f | $%.3f |\n", $1, $3, $7, $7 / $3, 0.40 * $7 / $3 }' "$OUT/sqs-calls.txt"
  awk '$1 == "drain" { printf "| consume (4 workers, batch 10) | %s drained | %s | %.3f | $%.3f |\n", $2, $3, $3 / $2, 0.40 * $3 / $2 }' "$OUT/sqs-calls.txt"
} | tee "$OUT/sqs.md"
