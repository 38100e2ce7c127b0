# Sourced by the bench scripts that drive the gateway with wrk: the common
# start (wrk present, release build, output and work folders, cleanup) and
# the one request body every load figure in docs/benchmarks.md uses.

# The CORS case of callgrind.sh and `CORS=1 load.sh`: the product's usual
# policy (wildcard origins, credentials), as the gateway's environment, and
# the allowed Origin every request of that case carries, as a browser's.
CORS_ORIGIN=https://app.test.com
CORS_POLICY_ENV=(SPILLWAY_INGEST__CORS__ALLOWED_ORIGINS='["https://*.test.com", "https://test.com"]'
  SPILLWAY_INGEST__CORS__ALLOW_CREDENTIALS=true)

# wrk from Debian's packages, installed once when missing (the machines
# start with none).
need_wrk() {
  command -v wrk >/dev/null && return
  echo "installing wrk (apt-get)" >&2
  { apt-get install -y -q wrk >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q wrk >/dev/null 2>&1; }; } \
    || { echo "wrk is needed and apt-get could not install it: apt-get install -y wrk" >&2; exit 1; }
}

# bench_workspace OUT -> sets BIN, creates OUT and WORK, kills background
# jobs and removes WORK on exit.
bench_workspace() {
  BIN="${CARGO_TARGET_DIR:-target}/release"
  mkdir -p "$1"
  WORK="$(mktemp -d -p "${TMPDIR:-/tmp}")"
  trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
}

# post_lua FILE -> writes wrk's script for the 200-byte JSON POST and sets
# BODY_BYTES to the body's size.
post_lua() {
  local pad
  pad="$(head -c 160 /dev/zero | tr '\0' 'x')"
  cat > "$1" <<LUA
wrk.method = "POST"
wrk.body = '{"event":"page_view","user":42,"pad":"$pad"}'
wrk.headers["Content-Type"] = "application/json"
LUA
  BODY_BYTES=$(printf '{"event":"page_view","user":42,"pad":"%s"}' "$pad" | wc -c)
}

# cpu_secs PID -> the process's user + system CPU seconds so far (/proc).
cpu_secs() {
  awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"
}
