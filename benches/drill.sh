#!/usr/bin/env bash
# A zero-loss drill (issue 17): builds release binaries, makes a fresh sink
# table and queue folder, and runs a scenario of benches/scenarios with
# spillway-load, which starts the processes, sends the load, injects the
# faults, restarts what it killed, and verifies every accepted request in
# PostgreSQL. Exits non-zero if anything accepted was lost.
#
#   benches/drill.sh embedded|rabbitmq|kafka [out-dir]
#
# kafka runs a tansu of its own (installed by deploy/local/services.sh up) on
# port 19092 with its data in the drill's temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME="${1:?embedded, rabbitmq or kafka}"
OUT="${2:-benches/results/latest/drill-$NAME}"
cargo build --release -q -p spillway -p spillway-load
BIN="${CARGO_TARGET_DIR:-target}/release"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export SPILLWAY="$BIN/spillway"
export DRILL_DATA="$WORK/data"
mkdir -p "$DRILL_DATA"
export TANSU="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
export DRILL_PG="${SPILLWAY_TEST_PG:-postgres://postgres@127.0.0.1:5432/test}"
export DRILL_AMQP="${SPILLWAY_TEST_AMQP:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export DRILL_TABLE="drill_${NAME}"
export SPILLWAY_LOG__LEVEL=warn
psql "$DRILL_PG" -qc "DROP TABLE IF EXISTS $DRILL_TABLE" >/dev/null
"$BIN/spillway-load" drill "benches/scenarios/$NAME-drill.toml" --out "$OUT"
