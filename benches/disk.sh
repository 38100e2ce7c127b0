#!/usr/bin/env bash
# Bytes on disk per message in the embedded queue (issue 18), through the
# real gateway: `spillway serve` on a fresh queue folder takes N requests
# with a 200-byte JSON body (post_n, 64 clients), stops (SIGTERM: the last
# connection's close checkpoints the WAL into the file), and SQLite's dbstat
# table splits the file by table and index. Prints a Markdown table.
#
#   benches/disk.sh [N] [out-dir]      # default 100000, benches/results/latest
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-100000}"
OUT="${2:-benches/results/latest}"
command -v python3 >/dev/null || { echo "python3 is needed (its sqlite3 module reads dbstat)" >&2; exit 1; }
cargo build --release -q -p spillway -p spillway-benches --bin spillway --bin post_n
BIN="${CARGO_TARGET_DIR:-target}/release"
mkdir -p "$OUT"
WORK="$(mktemp -d)"
cleanup() { kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

env SPILLWAY_SERVER__LISTEN=127.0.0.1:18380 SPILLWAY_LOG__LEVEL=warn SPILLWAY_QUEUE__BACKEND=embedded SPILLWAY_QUEUE__PATH="$WORK/data" \
  "$BIN/spillway" serve >/dev/null &
pid=$!
for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/18380) 2>/dev/null && break; sleep 0.2; done
read -r sent accepted non2xx errors secs < <("$BIN/post_n" http://127.0.0.1:18380/ingest "$N" 64 200)
kill -TERM $pid; wait $pid 2>/dev/null || true
[ "$accepted" = "$N" ] || { echo "only $accepted of $N accepted ($non2xx non-2xx, $errors errors)" >&2; exit 1; }

python3 - "$WORK/data/queue.db" "$N" <<'PY' | tee "$OUT/disk.md"
import os, sqlite3, sys
path, n = sys.argv[1], int(sys.argv[2])
db = sqlite3.connect(path)
wal = path + "-wal"
file_bytes = os.path.getsize(path) + (os.path.getsize(wal) if os.path.exists(wal) else 0)
rows = dict(db.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall())
body, attrs, ident = db.execute(
    "SELECT avg(length(body)), avg(length(attributes)), avg(length(id)) FROM messages").fetchone()
print(f"{n} requests of 200 bytes through `spillway serve` (embedded, defaults); SQLite {sqlite3.sqlite_version}")
print()
print("| what | bytes per message |")
print("|---|---|")
print(f"| request body (what the client sent) | 200 |")
print(f"| stored body (the envelope around it) | {body:.0f} |")
print(f"| attributes (JSON text) | {attrs:.0f} |")
print(f"| id | {ident:.0f} |")
for name in sorted(rows, key=rows.get, reverse=True):
    if rows[name] >= 4096 * 4:
        print(f"| pages of `{name}` | {rows[name] / n:.0f} |")
print(f"| **file, all of it** | **{file_bytes / n:.0f}** |")
print()
print(f"file / request body: {file_bytes / n / 200:.2f}")
PY
