#!/usr/bin/env bash
# The fixed target folder ($CARGO_TARGET_DIR) grows with every build: old
# test binaries and incremental state pile up (68 GB filled this machine's
# disk once, and the linker died with a bus error). When less than 20 GiB
# is free, drop what cargo rebuilds on its own: incremental state, and test
# and binary executables not rebuilt in the last day. Libraries stay, so
# the dependencies are not compiled again.
set -euo pipefail
target="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target"
avail_kb="$(df -Pk "$target" | awk 'NR == 2 {print $4}')"
if [ "${avail_kb:-0}" -lt $(( 20 * 1024 * 1024 )) ]; then
  echo "prune-target: $(( avail_kb / 1024 / 1024 )) GiB free; pruning $target" >&2
  rm -rf "$target"/debug/incremental "$target"/release/incremental
  for deps in "$target"/debug/deps "$target"/release/deps; do
    [ -d "$deps" ] || continue
    find "$deps" -maxdepth 1 -type f -mtime +0 \
      ! -name '*.rlib' ! -name '*.rmeta' ! -name '*.so' ! -name '*.d' ! -name '*.o' -delete
  done
fi
