#!/usr/bin/env bash
# Starts what the tests need and is missing, idempotently: safe to run again
# and again, on a fresh machine or one where everything is already up.
#
#   deploy/local/services.sh up      # start / install what is missing
#   deploy/local/services.sh status  # say what is there
#
# Needed today: PostgreSQL (the postgres sink test), RabbitMQ (the rabbitmq
# backend's conformance kit), moto (an SQS server, for the sqs backend) and
# Chromium (the browser CORS test), tansu (a Kafka-protocol broker, for
# the kafka backend) and kubectl (the manifests' check; checked, not
# installed: see up_kubectl).
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

AMQP_PORT="${SPILLWAY_TEST_AMQP_PORT:-5672}"

have_rabbit() { (exec 3<>"/dev/tcp/127.0.0.1/$AMQP_PORT") 2>/dev/null; }

up_rabbit() {
  if have_rabbit; then log "RabbitMQ is up"; return; fi
  if ! command -v rabbitmq-server >/dev/null; then
    log "installing RabbitMQ from Debian's packages (once per machine)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq rabbitmq-server >/dev/null
  fi
  log "starting RabbitMQ"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  for _ in $(seq 1 60); do have_rabbit && break; sleep 1; done
  have_rabbit || { log "RabbitMQ did not come up at 127.0.0.1:$AMQP_PORT; start it (rabbitmq-server -detached) or set SPILLWAY_TEST_AMQP"; exit 1; }
  # The AMQP port opens before the broker takes connections.
  rabbitmq-diagnostics -q check_running >/dev/null 2>&1 || sleep 5
}

# The management plugin's HTTP API: the rabbitmq backend reads the count of
# held (unacknowledged) messages from it. Shipped with the broker, disabled
# by default; enabling it needs no restart.
have_rabbit_management() { (exec 3<>"/dev/tcp/127.0.0.1/15672") 2>/dev/null; }

up_rabbit_management() {
  if have_rabbit_management; then log "RabbitMQ management API is up"; return; fi
  log "enabling RabbitMQ's management plugin"
  rabbitmq-plugins enable rabbitmq_management >/dev/null
  for _ in $(seq 1 60); do have_rabbit_management && break; sleep 1; done
  have_rabbit_management || { log "the management API did not come up on 127.0.0.1:15672; run: rabbitmq-plugins enable rabbitmq_management"; exit 1; }
}

# Python tools the tests drive, in a venv at a fixed path so it is made once
# per machine and reused: pika (the AMQP interop test), moto (the SQS server),
# boto3 (the SQS interop test), confluent-kafka (the Kafka interop test) and
# kubernetes-validate (the manifests' check, deploy/kustomize/check.py: it
# carries the Kubernetes schemas, so it works offline).
VENV="${SPILLWAY_VENV:-/var/tmp/spillway-venv}"
PY_PACKAGES=(pika==1.3.2 "moto[server]==5.2.5" boto3==1.44.8 confluent-kafka==2.12.1 kubernetes-validate==1.37.0)

have_venv() { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import pika, moto, boto3, flask, confluent_kafka, kubernetes_validate' 2>/dev/null; }

up_venv() {
  if have_venv; then log "Python venv is ready at $VENV"; return; fi
  log "making the Python venv at $VENV (once per machine)"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "${PY_PACKAGES[@]}"
  have_venv || { log "the venv at $VENV lacks pika, moto, boto3, confluent-kafka or kubernetes-validate; remove it and run this again"; exit 1; }
}

# kubectl renders the manifests with its built-in kustomize (v5: the
# `labels` field and the preStop `sleep` action). Debian's kubernetes-client
# is 1.20, too old, so it is not installed from there: say what is needed.
have_kubectl() { kubectl kustomize --help >/dev/null 2>&1; }

up_kubectl() {
  if have_kubectl; then log "kubectl is installed: $(command -v kubectl)"; return; fi
  log "kubectl is missing: install kubectl 1.27 or newer (from the Kubernetes or Google Cloud apt repository) and put it on PATH"
  exit 1
}

# moto's SQS server, from the venv, in the background. It keeps everything in
# memory: a restart starts empty, which the tests never rely on.
SQS_PORT="${SPILLWAY_TEST_SQS_PORT:-4566}"
MOTO_LOG="${SPILLWAY_MOTO_LOG:-/var/tmp/spillway-moto.log}"

have_moto() { (exec 3<>"/dev/tcp/127.0.0.1/$SQS_PORT") 2>/dev/null; }

# Not `moto_server` itself: deploy/local/sqs_server.py is moto with a race in
# ReceiveMessage fixed (two receives at once could share a message).
SQS_SERVER="$(cd "$(dirname "$0")" && pwd)/sqs_server.py"

up_moto() {
  # A plain moto_server an earlier version of this script started has the
  # race: replace it.
  if have_moto && pkill -f "bin/moto_server -H 127.0.0.1 -p $SQS_PORT\$" 2>/dev/null; then
    log "stopping the plain moto_server on $SQS_PORT (it lacks sqs_server.py's fix)"
    for _ in $(seq 1 30); do have_moto || break; sleep 1; done
  fi
  if have_moto; then log "the SQS server is up on 127.0.0.1:$SQS_PORT"; return; fi
  log "starting moto (SQS, with sqs_server.py's fix) on 127.0.0.1:$SQS_PORT, log in $MOTO_LOG"
  setsid nohup "$VENV/bin/python" "$SQS_SERVER" -H 127.0.0.1 -p "$SQS_PORT" >"$MOTO_LOG" 2>&1 < /dev/null &
  for _ in $(seq 1 30); do have_moto && break; sleep 1; done
  have_moto || { log "moto did not come up on 127.0.0.1:$SQS_PORT; see $MOTO_LOG, or set SPILLWAY_TEST_SQS"; exit 1; }
}

# tansu, a Kafka-protocol broker written in Rust, from the crate registry:
# about 7-11 minutes to build once, then cached in ~/.cargo/bin. It keeps its
# data in SQLite in a fixed folder; the sqlite URL must be relative to it.
KAFKA_PORT="${SPILLWAY_TEST_KAFKA_PORT:-9092}"
TANSU_VERSION=0.6.0
TANSU_DIR="${SPILLWAY_TANSU_DIR:-/var/tmp/spillway-tansu}"
TANSU_BIN="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"

have_tansu_bin() { [ -x "$TANSU_BIN" ] && "$TANSU_BIN" --version 2>/dev/null | grep -q "$TANSU_VERSION"; }
have_kafka() { (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null; }

up_tansu() {
  if have_kafka; then log "the Kafka broker is up on 127.0.0.1:$KAFKA_PORT"; return; fi
  if ! have_tansu_bin; then
    log "installing tansu $TANSU_VERSION with cargo (once per machine, about 10 minutes)"
    cargo install tansu --version "$TANSU_VERSION" --locked --features libsql,dynostore >/var/tmp/spillway-tansu-install.log 2>&1 \
      || { log "cargo install tansu failed; see /var/tmp/spillway-tansu-install.log"; exit 1; }
  fi
  mkdir -p "$TANSU_DIR"
  log "starting tansu (Kafka) on 127.0.0.1:$KAFKA_PORT, data and log in $TANSU_DIR"
  (cd "$TANSU_DIR" && setsid nohup "$TANSU_BIN" broker \
      --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --storage-engine sqlite://tansu.db >tansu.log 2>&1 < /dev/null &)
  for _ in $(seq 1 30); do have_kafka && break; sleep 1; done
  have_kafka || { log "tansu did not come up on 127.0.0.1:$KAFKA_PORT; see $TANSU_DIR/tansu.log, or set SPILLWAY_TEST_KAFKA"; exit 1; }
}

# The test broker starts each test run empty. tansu never deletes a topic
# (deleting one crashes it, docs/backends.md), so every run's random topics
# and every benchmark's records pile up in its SQLite file, and a tansu with
# thousands of topics and half a gigabyte answers the kit too slowly. Only
# a tansu this script started (on our port, our data folder) is replaced.
fresh_tansu() {
  if pkill -9 -f "tansu broker --listener-url tcp://127.0.0.1:$KAFKA_PORT " 2>/dev/null; then
    for _ in $(seq 1 30); do have_kafka || break; sleep 0.2; done
  fi
  if have_kafka; then log "something else serves 127.0.0.1:$KAFKA_PORT; leaving it as it is"; return; fi
  rm -f "$TANSU_DIR"/tansu.db "$TANSU_DIR"/tansu.db-shm "$TANSU_DIR"/tansu.db-wal
  up_tansu
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
  if have_rabbit; then log "RabbitMQ: up"; else log "RabbitMQ: down"; fi
  if have_rabbit_management; then log "RabbitMQ management: up"; else log "RabbitMQ management: off"; fi
  if have_venv; then log "Python venv: $VENV"; else log "Python venv: missing"; fi
  if have_moto; then log "SQS (moto): up on $SQS_PORT"; else log "SQS (moto): down"; fi
  if [ -x "$(chromium_bin)" ]; then log "Chromium: $(chromium_bin)"; else log "Chromium: missing"; fi
  if have_kubectl; then log "kubectl: $(command -v kubectl)"; else log "kubectl: missing"; fi
  if have_kafka; then log "Kafka (tansu): up on $KAFKA_PORT"; elif have_tansu_bin; then log "Kafka (tansu): installed, down"; else log "Kafka (tansu): not installed"; fi
}

case "${1:-up}" in
  up) up_pg; up_rabbit; up_rabbit_management; up_venv; up_moto; up_chromium; up_kubectl; up_tansu ;;
  fresh-kafka) fresh_tansu ;;
  status) status ;;
  *) echo "usage: $0 up|fresh-kafka|status" >&2; exit 2 ;;
esac
