#!/usr/bin/env bash
# Issue 18's "flat under backlog", on the gateway: `spillway serve` (embedded
# queue) under wrk on an empty queue and on one holding MESSAGES messages,
# and on each again while `spillway queue stats` (a new process) and a
# `/metrics` scrape run every 200 ms beside it (on the empty queue too, so
# what the scrapes cost at any depth is told apart from what depth adds).
# Two rounds, the order of the cases reversed in the second (the order moves the numbers on this machine:
# docs/benchmarks.md, "the store's share"). Prints a Markdown table with
# each rate as a ratio to the empty queue's in the same round.
#
#   benches/backlog.sh [messages] [seconds] [out-dir]   # default 10000000, 15, benches/results/latest
#   BACKLOG_DIR=/var/tmp/spillway-backlog benches/backlog.sh ...   # keep the filled queue for the next run
#
# Filling takes minutes (the `fill` bench binary, 1,000 messages a commit)
# and about 750 bytes of disk per message: 10 million need about 8 GB.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-10000000}"
DURATION="${2:-15}"
OUT="${3:-benches/results/latest}"
source benches/lib.sh
need_wrk
cargo build --release -q -p spillway -p spillway-benches --bin spillway --bin fill
bench_workspace "$OUT"
post_lua "$WORK/post.lua"
rm -f "$OUT"/backlog-scrapes-*.txt
DEEP="${BACKLOG_DIR:-$WORK/deep}"
mkdir -p "$DEEP"
if [ ! -f "$DEEP/queue.db" ]; then
  "$BIN/fill" "$DEEP" ingest "$N" | tee "$OUT/backlog-fill.txt"
fi
PORT=18080
export SPILLWAY_QUEUE__BACKEND=embedded SPILLWAY_LOG__LEVEL=warn
serve() {  # serve DATA_DIR: starts the gateway as a job of this shell (so the exit trap stops it), pid in SERVER
  SPILLWAY_SERVER__LISTEN=127.0.0.1:$PORT SPILLWAY_QUEUE__PATH="$1" "$BIN/spillway" serve >/dev/null &
  SERVER=$!
}
depth() {  # depth DATA_DIR -> visible messages
  SPILLWAY_QUEUE__PATH="$1" "$BIN/spillway" queue stats --json 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["ingest"]["visible"])' 2>/dev/null || echo 0
}

# scrape_loop DATA_DIR FILE MODE: every 200 ms, `spillway queue stats`
# (MODE scrape only) and a /metrics scrape; each one's time in ms and
# whether both succeeded to FILE.
scrape_loop() {
  set +e
  while true; do
    local t0 t1 t2 ok=1
    t0=$(date +%s%N)
    if [ "$3" = scrape ]; then
      SPILLWAY_QUEUE__PATH="$1" "$BIN/spillway" queue stats >/dev/null 2>&1 || ok=0
    fi
    t1=$(date +%s%N)
    curl -fs -o /dev/null "http://127.0.0.1:$PORT/metrics" || ok=0
    t2=$(date +%s%N)
    echo "$(( (t1 - t0) / 1000000 )) $(( (t2 - t1) / 1000000 )) $ok" >> "$2"
    sleep 0.2
  done
}

case_run() {  # case_run NAME ROUND DATA_DIR [scrape|metrics]
  local name=$1 round=$2 dir=$3 scrape=${4:-} pid spid=
  mkdir -p "$dir"
  local before; before=$(depth "$dir")
  serve "$dir"; pid=$SERVER; sleep 1
  wrk -t1 -c8 -d2s -s "$WORK/post.lua" "http://127.0.0.1:$PORT/ingest" >/dev/null   # warm-up
  if [ -n "$scrape" ]; then scrape_loop "$dir" "$OUT/backlog-scrapes-$name-r$round.txt" "$scrape" & spid=$!; fi
  local t0 t1
  t0=$(cpu_secs "$pid")
  wrk -t2 -c64 -d"${DURATION}s" --latency -s "$WORK/post.lua" "http://127.0.0.1:$PORT/ingest" \
    > "$OUT/backlog-$name-r$round.txt"
  t1=$(cpu_secs "$pid")
  if [ -n "$spid" ]; then kill "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true; fi
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  local f="$OUT/backlog-$name-r$round.txt" rps reqs p50 p99 cpu
  rps=$(awk '/Requests\/sec/ {print $2}' "$f")
  reqs=$(awk '/requests in/ {print $1}' "$f")
  p50=$(awk '$1 == "50%" {print $2}' "$f")
  p99=$(awk '$1 == "99%" {print $2}' "$f")
  cpu=$(awk -v t0="$t0" -v t1="$t1" -v n="$reqs" 'BEGIN { printf "%.1f", (t1 - t0) * 1e6 / n }')
  echo "$round $name ${before:-0} $rps $p50 $p99 $cpu" >> "$WORK/rows"
}

# Each empty case starts on a fresh folder. ONLY_METRICS=1: the deep queue
# alone, with and without a /metrics scrape every 200 ms (no CLI process),
# to tell the scrape's own cost from the new process's.
for round in 1 2; do
  if [ -n "${ONLY_METRICS:-}" ]; then
    if [ "$round" = 1 ]; then
      case_run empty 1 "$WORK/empty-1a"; case_run deep 1 "$DEEP"; case_run deep-metrics 1 "$DEEP" metrics
    else
      case_run deep-metrics 2 "$DEEP" metrics; case_run deep 2 "$DEEP"; case_run empty 2 "$WORK/empty-2a"
    fi
  elif [ "$round" = 1 ]; then
    case_run empty 1 "$WORK/empty-1a"; case_run deep 1 "$DEEP"
    case_run deep-scraped 1 "$DEEP" scrape; case_run empty-scraped 1 "$WORK/empty-1b" scrape
  else
    case_run empty-scraped 2 "$WORK/empty-2a" scrape; case_run deep-scraped 2 "$DEEP" scrape
    case_run deep 2 "$DEEP"; case_run empty 2 "$WORK/empty-2b"
  fi
  rm -rf "$WORK"/empty-*
done

{
  echo "wrk: 2 threads, 64 connections, ${DURATION}s per case, ${BODY_BYTES}-byte JSON POST; $(nproc) cores; $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "| round | queue | messages queued at the start | req/s | ratio to empty | p50 | p99 | server CPU per request |"
  echo "|---|---|---|---|---|---|---|---|"
  awk '
    $2 == "empty" { empty[$1] = $4 }
    { rows[NR] = $0 }
    END {
      for (i = 1; i <= NR; i++) {
        split(rows[i], f, " ")
        printf "| %s | %s | %s | %.0f | %.2f | %s | %s | %s µs |\n", f[1], f[2], f[3], f[4], f[4] / empty[f[1]], f[5], f[6], f[7]
      }
    }' "$WORK/rows"
  echo
  for s in "$OUT"/backlog-scrapes-*.txt; do
    [ -f "$s" ] || continue
    r=$(basename "$s" .txt); r=${r#backlog-scrapes-}
    case "$r" in *metrics*) only_metrics=1 ;; *) only_metrics=0 ;; esac
    awk -v r="$r" -v om="$only_metrics" '{ n++; q += $1; m += $2; bad += ($3 != 1); if ($1 > qmax) qmax = $1; if ($2 > mmax) mmax = $2 }
      END {
        if (om) printf "%s: %d scrapes (%d failed); /metrics mean %.0f ms, max %d ms\n", r, n, bad, m / n, mmax
        else printf "%s: %d scrapes (%d failed); `queue stats` (a new process) mean %.0f ms, max %d ms; /metrics mean %.0f ms, max %d ms\n", r, n, bad, q / n, qmax, m / n, mmax
      }' "$s"
  done
} | tee "$OUT/backlog-summary.md"
