#!/usr/bin/env bash
# Runs every test against real services: starts what is missing, builds the
# binaries the end-to-end tests spawn, then runs the whole workspace's tests.
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/local/services.sh up
cargo build --locked -p spillway -p spillway-load
cargo test --locked --workspace
