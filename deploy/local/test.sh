#!/usr/bin/env bash
# Runs every test against real services: installs and starts what is missing
# (deploy/local/services.sh), builds the binaries the end-to-end tests
# spawn, then runs the whole workspace's tests and the fuzz targets.
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/local/services.sh up
# The three-node clusters the node-loss tests kill a node of.
deploy/local/services.sh cluster kafka
deploy/local/services.sh cluster rabbitmq-fresh
# An empty Kafka test broker for each run, unless one is given.
[ -n "${SPILLWAY_TEST_KAFKA:-}" ] || deploy/local/services.sh fresh-kafka
export PATH="${SPILLWAY_TOOLS:-/var/tmp/spillway-tools}/bin:$PATH"
deploy/local/prune-target.sh
cargo build --locked -p spillway -p spillway-load
cargo test --locked --workspace
# Every fuzz target for a bounded time from its seed corpus (docs/testing.md).
deploy/local/fuzz.sh
