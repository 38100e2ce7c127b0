#!/usr/bin/env bash
# Starts what the tests need and is missing, idempotently: safe to run again
# and again, on a fresh machine or one where everything is already up.
#
#   deploy/local/services.sh up      # start / install what is missing
#   deploy/local/services.sh status  # say what is there
#
# Needed today: PostgreSQL (the postgres sink test) and Chromium (the browser
# CORS test). RabbitMQ, tansu (Kafka) and moto (SQS) join this script with
# their backends.
set -euo pipefail

PG_URL="${SPILLWAY_TEST_PG:-postgres://postgres@127.0.0.1:5432/test}"

log() { printf 'services: %s\n' "$*" >&2; }

have_pg() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

up_pg() {
  if have_pg; then log "PostgreSQL is up"; return; fi
  log "starting PostgreSQL"
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
  for _ in $(seq 1 30); do have_pg && break; sleep 1; done
  have_pg || { log "PostgreSQL did not come up at 127.0.0.1:5432; install it or set SPILLWAY_TEST_PG"; exit 1; }
  # The tests use the database `test`; create it where it is missing.
  psql "${PG_URL%/*}/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" 2>/dev/null | grep -q 1 \
    || psql "${PG_URL%/*}/postgres" -c "CREATE DATABASE test" >/dev/null 2>&1 || true
}

chromium_bin() { echo "${SPILLWAY_CHROMIUM:-/usr/bin/chromium}"; }

up_chromium() {
  if [ -x "$(chromium_bin)" ]; then log "Chromium is installed"; return; fi
  log "installing Chromium from Debian's packages (once per machine)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq chromium >/dev/null
  [ -x "$(chromium_bin)" ] || { log "Chromium did not install; set SPILLWAY_CHROMIUM to a Chromium binary"; exit 1; }
}

status() {
  if have_pg; then log "PostgreSQL: up"; else log "PostgreSQL: down"; fi
  if [ -x "$(chromium_bin)" ]; then log "Chromium: $(chromium_bin)"; else log "Chromium: missing"; fi
}

case "${1:-up}" in
  up) up_pg; up_chromium ;;
  status) status ;;
  *) echo "usage: $0 up|status" >&2; exit 2 ;;
esac
