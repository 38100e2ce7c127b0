#!/usr/bin/env bash
# The RabbitMQ run behind docs/benchmarks.md: the gateway against raw lapin
# with confirms. Kept for the commands the docs quote; see benches/publish.sh.
#
#   benches/rabbitmq.sh [seconds] [concurrency] [rounds] [out-dir]
exec "$(dirname "$0")/publish.sh" rabbitmq "$@"
