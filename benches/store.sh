#!/usr/bin/env bash
# Issue 18's store question: what one durable send costs in the SQLite
# embedded queue against the append-only segment-log prototype, on the same
# work (CONCURRENCY senders, each waiting for its message to be durable; the
# gateway's 510-byte envelope and its two attributes), alternating, ROUNDS
# times. Prints a Markdown table: rate and process CPU per message, each as
# a ratio to SQLite's in the same round.
#
#   benches/store.sh [seconds] [concurrency] [rounds] [out-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-8}"
CONNS="${2:-64}"
ROUNDS="${3:-3}"
OUT="${4:-benches/results/latest}"
BYTES=510
cargo build --release -q -p spillway-benches --bin raw_embedded --bin raw_segment
BIN="${CARGO_TARGET_DIR:-target}/release"
mkdir -p "$OUT"
WORK="$(mktemp -d -p /var/tmp)"   # the same disk the queue uses by default, not a tmpfs
trap 'rm -rf "$WORK"' EXIT
{
  echo "$CONNS senders, ${DURATION}s each, ${BYTES}-byte messages; $(nproc) cores; $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "| round | SQLite msg/s | segment msg/s | rate ratio | SQLite CPU µs/msg | segment CPU µs/msg | CPU ratio |"
  echo "|---|---|---|---|---|---|---|"
  for round in $(seq 1 "$ROUNDS"); do
    read -r erate ecpu < <("$BIN/raw_embedded" "$WORK/e$round" "$CONNS" "$DURATION" "$BYTES" 2>/dev/null | tail -n1)
    read -r srate scpu < <("$BIN/raw_segment" "$WORK/s$round" "$CONNS" "$DURATION" "$BYTES" 2>/dev/null | tail -n1)
    echo "$round $erate $srate $ecpu $scpu" |
      awk '{printf "| %s | %s | %s | %.2f | %s | %s | %.2f |\n", $1, $2, $3, $3 / $2, $4, $5, $5 / $4}'
    rm -rf "$WORK/e$round" "$WORK/s$round"
  done
} | tee "$OUT/store.md"
