#!/usr/bin/env bash
# The image without a Docker engine: the Dockerfile's runtime stage made
# from Debian's own tools, as an OCI image layout, and started once.
#
#   deploy/docker/rootfs-image.sh BINARY [OUT]
#
# 1. debootstrap makes a minimal bookworm root filesystem (once per
#    machine, kept in $SPILLWAY_TOOLS/rootfs-bookworm) and installs in it
#    what the Dockerfile's runtime stage installs (ca-certificates, zlib1g,
#    libssl3) and its user 10001.
# 2. umoci (Debian's package) builds an OCI image layout in OUT (default
#    $SPILLWAY_STATE/image): the root filesystem as one layer, BINARY at
#    /usr/local/bin/spillway as a second, and the Dockerfile's user,
#    working directory, environment, ports and entrypoint in its config.
# 3. It unpacks that image again (what a runtime gets from it) and runs
#    `spillway serve` from the unpacked root filesystem (chroot, as uid
#    10001, the embedded queue on a tmpfs-like folder), sends one POST and
#    requires 202; then it stops the server.
#
# Needs root (debootstrap, chroot, the image's file ownership). Prints the
# image's digest and the answer. tests/tests/deploy.rs runs it with the
# tests' binary. No Docker engine runs on these machines; `docker build`
# of deploy/docker/Dockerfile stays the way to the published image.
set -euo pipefail

BINARY="${1:?usage: rootfs-image.sh BINARY [OUT]}"
TOOLS="${SPILLWAY_TOOLS:-/var/tmp/spillway-tools}"
STATE="${SPILLWAY_STATE:-/var/tmp/spillway-services}"
OUT="${2:-$STATE/image}"
ROOTFS="$TOOLS/rootfs-bookworm"
PACKAGES=(ca-certificates zlib1g libssl3)

log() { echo "rootfs-image: $*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot)"
[ -x "$BINARY" ] || die "no executable at $BINARY"
apt_install() {
  local missing=()
  for p in "$@"; do command -v "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]} from Debian's packages (once per machine)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
}
apt_install debootstrap umoci curl

# 1. The root filesystem, once.
if [ ! -f "$ROOTFS/.spillway-ready" ]; then
  log "debootstrap bookworm into $ROOTFS (once per machine, a few minutes)"
  rm -rf "$ROOTFS"
  debootstrap --variant=minbase bookworm "$ROOTFS" http://deb.debian.org/debian >"$TOOLS/rootfs-debootstrap.log" 2>&1 \
    || die "debootstrap failed; see $TOOLS/rootfs-debootstrap.log"
  chroot "$ROOTFS" /bin/sh -c "apt-get install -y --no-install-recommends ${PACKAGES[*]} \
      && apt-get clean && rm -rf /var/lib/apt/lists/* \
      && groupadd --system --gid 10001 spillway \
      && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/spillway --no-create-home spillway \
      && install -d -o 10001 -g 10001 /var/lib/spillway /etc/spillway" >>"$TOOLS/rootfs-debootstrap.log" 2>&1 \
    || die "installing ${PACKAGES[*]} in the root filesystem failed; see $TOOLS/rootfs-debootstrap.log"
  touch "$ROOTFS/.spillway-ready"
fi

# 2. The OCI image.
rm -rf "$OUT" && mkdir -p "$OUT"
LAYOUT="$OUT/oci"
umoci init --layout "$LAYOUT"
umoci new --image "$LAYOUT:spillway"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
# The root filesystem, without what only the build needed.
umoci insert --image "$LAYOUT:spillway" "$ROOTFS" /
install -D -m 0755 "$BINARY" "$stage/spillway"
umoci insert --image "$LAYOUT:spillway" "$stage/spillway" /usr/local/bin/spillway
umoci config --image "$LAYOUT:spillway" \
  --config.user 10001:10001 \
  --config.workingdir /var/lib/spillway \
  --config.env SPILLWAY_SERVER__LISTEN=0.0.0.0:8080 \
  --config.env SPILLWAY_SERVER__ADMIN_LISTEN=0.0.0.0:9090 \
  --config.env SPILLWAY_LOG__FORMAT=json \
  --config.env SPILLWAY_CONFIG=/etc/spillway/spillway.toml \
  --config.exposedports 8080/tcp --config.exposedports 9090/tcp \
  --config.entrypoint /usr/local/bin/spillway --config.cmd serve
umoci gc --layout "$LAYOUT"
digest="$(sed -n 's/.*"digest":"\(sha256:[0-9a-f]*\)".*/\1/p' "$LAYOUT/index.json" | head -n1)"
log "image $LAYOUT:spillway $digest"

# 3. Unpacked as a runtime would, and started once.
umoci unpack --image "$LAYOUT:spillway" "$OUT/bundle" >/dev/null
root="$OUT/bundle/rootfs"
[ -x "$root/usr/local/bin/spillway" ] || die "the unpacked image has no /usr/local/bin/spillway"
install -d -o 10001 -g 10001 "$root/var/lib/spillway/data"
port=$(( 20000 + RANDOM % 20000 ))
admin=$(( port + 1 ))
cat >"$root/etc/spillway/spillway.toml" <<EOF
[queue]
backend = "embedded"
path = "/var/lib/spillway/data"
[[ingest.routes]]
path = "/ingest"
queue = "ingest"
EOF
# The unpacked copy is only for this run; the image layout stays.
trap 'rm -rf "$stage" "$OUT/bundle"' EXIT
env -i SPILLWAY_CONFIG=/etc/spillway/spillway.toml SPILLWAY_SERVER__LISTEN="127.0.0.1:$port" \
  SPILLWAY_SERVER__ADMIN_LISTEN="127.0.0.1:$admin" SPILLWAY_LOG__FORMAT=json \
  "$(command -v chroot)" --userspec=10001:10001 "$root" /usr/local/bin/spillway serve >"$OUT/serve.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$OUT/serve.log" >&2; die "spillway exited in the image's root filesystem"; }
  sleep 0.1
done
status="$(curl -s -o "$OUT/answer.json" -w '%{http_code}' -X POST --data '{"from":"the rootfs image"}' \
  -H 'content-type: application/json' "http://127.0.0.1:$port/ingest" || true)"
kill -TERM "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
[ "$status" = 202 ] || { cat "$OUT/serve.log" >&2; die "POST /ingest answered $status, not 202"; }
echo "image $digest answered $status $(cat "$OUT/answer.json")"
