#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time, starting from
# the checked-in seed corpus, and fails on the first crash (a panic is a
# crash: each target asserts its invariants).
#
#   deploy/local/fuzz.sh                 # every target, FUZZ_SECONDS (45) each
#   FUZZ_SECONDS=600 deploy/local/fuzz.sh origins framing
#
# cargo-fuzz is installed once into $SPILLWAY_TOOLS (crates.io); the targets
# build with the nightly toolchain (libFuzzer needs its instrumentation)
# into a fixed folder of their own, without a sanitizer: the project's code
# forbids `unsafe`, so a crash here is a panic, which needs none, and the
# broker clients' C code builds once, fast. What a run adds to the corpus
# stays in $FUZZ_WORK, not in the repository; a crash's input is saved
# there and named in the output.
set -euo pipefail
cd "$(dirname "$0")/../.."
TOOLS="${SPILLWAY_TOOLS:-/var/tmp/spillway-tools}"
export PATH="$TOOLS/bin:$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${SPILLWAY_FUZZ_TARGET:-/var/tmp/spillway-fuzz-target}"
SECONDS_EACH="${FUZZ_SECONDS:-45}"
WORK="${FUZZ_WORK:-/var/tmp/spillway-fuzz-work}"
CARGO_FUZZ_VERSION=0.13.2

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION into $TOOLS (once per machine)" >&2
  cargo install --quiet --locked --root "$TOOLS" cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
rustup toolchain list | grep -q '^nightly' || {
  echo "fuzz: the nightly toolchain is missing: rustup toolchain install nightly" >&2
  exit 1
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir fuzz)
echo "fuzz: building ${targets[*]}" >&2
cargo +nightly fuzz build --fuzz-dir fuzz --sanitizer none -O >&2
for t in "${targets[@]}"; do
  corpus="$WORK/corpus/$t"
  mkdir -p "$corpus" "$WORK/artifacts/$t"
  cp -n fuzz/corpus/"$t"/* "$corpus"/ 2>/dev/null || true
  echo "fuzz: $t for ${SECONDS_EACH} s" >&2
  # A dictionary of the format's tokens, where the target has one.
  dict=()
  [ -f "fuzz/dict/$t.dict" ] && dict=(-dict="fuzz/dict/$t.dict")
  if ! cargo +nightly fuzz run --fuzz-dir fuzz --sanitizer none -O "$t" "$corpus" -- "${dict[@]}" \
      -max_total_time="$SECONDS_EACH" -artifact_prefix="$WORK/artifacts/$t/" -print_final_stats=1 \
      >"$WORK/$t.log" 2>&1; then
    tail -n 40 "$WORK/$t.log" >&2
    echo "fuzz: $t CRASHED; the input is in $WORK/artifacts/$t/ (replay: cargo +nightly fuzz run --fuzz-dir fuzz --sanitizer none $t <file>)" >&2
    exit 1
  fi
  grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb' "$WORK/$t.log" | tr '\n' ' ' >&2 || true
  echo >&2
done
echo "fuzz: ${#targets[@]} targets, no crash" >&2
