#!/usr/bin/env bash
# A zero-loss drill (issue 17): builds release binaries, makes a fresh sink
# table and queue folder, and runs a scenario of benches/scenarios with
# spillway-load, which starts the processes, sends the load, injects the
# faults, restarts what it killed, and verifies every accepted request in
# PostgreSQL. Exits non-zero if anything accepted was lost.
#
#   benches/drill.sh embedded|rabbitmq|rabbitmq-spool|rabbitmq-spool-full|rabbitmq-cluster|kafka|kafka-spool|sqs|sqs-spool [out-dir]
#
# kafka, kafka-spool and rabbitmq-cluster run on the three-node clusters of
# deploy/local/services.sh, which this brings up first.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME="${1:?embedded, rabbitmq, rabbitmq-spool, rabbitmq-cluster, kafka, kafka-spool, sqs or sqs-spool}"
OUT="${2:-benches/results/latest/drill-$NAME}"
# DRILL_NO_BUILD=1: run the release binaries as they are (built from a
# tree that is being edited meanwhile, they would be rebuilt from it).
[ -n "${DRILL_NO_BUILD:-}" ] || cargo build --release -q -p spillway -p spillway-load
BIN="${CARGO_TARGET_DIR:-target}/release"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export SPILLWAY="$BIN/spillway"
export DRILL_DATA="$WORK/data"
mkdir -p "$DRILL_DATA"
deploy/local/services.sh up
case "$NAME" in
  kafka|kafka-spool) deploy/local/services.sh cluster kafka ;;
  rabbitmq-cluster) deploy/local/services.sh cluster rabbitmq ;;
esac
export DRILL_PG="${SPILLWAY_TEST_PG:-postgres://postgres@127.0.0.1:5432/test}"
export DRILL_AMQP="${SPILLWAY_TEST_AMQP:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export DRILL_TABLE="drill_${NAME//-/_}"
export SPILLWAY_LOG__LEVEL=warn
psql "$DRILL_PG" -qc "DROP TABLE IF EXISTS $DRILL_TABLE" >/dev/null
"$BIN/spillway-load" drill "benches/scenarios/$NAME-drill.toml" --out "$OUT"
