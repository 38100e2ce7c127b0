#!/usr/bin/env bash
# Runs every test against real services: starts what is missing, builds the
# binaries the end-to-end tests spawn, then runs the whole workspace's tests.
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/local/services.sh up
# An empty Kafka test broker for each run (see fresh_tansu in services.sh).
[ -n "${SPILLWAY_TEST_KAFKA:-}" ] || deploy/local/services.sh fresh-kafka
cargo build --locked -p spillway -p spillway-load
cargo test --locked --workspace
