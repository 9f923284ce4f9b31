#!/usr/bin/env bash
# A smoke run of the fuzz targets: builds them (cargo-fuzz, nightly, AddressSanitizer), then runs
# each for a short, bounded time from its committed seeds (seeds/<target>) plus whatever
# corpus/<target> has gathered. Fails, naming the target and the crash input, if any finds a
# crash, a hang or a leak. Usage: bash fuzz/smoke.sh [target…]
#   FUZZ_SECONDS   seconds per target (default 20)
# To fuzz one target for longer: cargo +nightly fuzz run <target> -- -max_total_time=3600
set -euo pipefail
cd "$(dirname "$0")"
seconds=${FUZZ_SECONDS:-20}

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz smoke: the nightly toolchain is missing (cargo-fuzz needs it: rustup toolchain install nightly)" >&2
  exit 1
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz smoke: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
# The fuzz crate's lock file is committed; refuse to run against one that needs changes.
cargo metadata --locked --format-version 1 >/dev/null

start=$SECONDS
cargo +nightly fuzz build
echo "fuzz smoke: built in $((SECONDS - start)) s"

if (($#)); then targets=("$@"); else mapfile -t targets < <(cargo +nightly fuzz list); fi
logs=$(mktemp -d)
failed=()
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  seeds=()
  [[ -d "seeds/$target" ]] && seeds=("seeds/$target")
  printf 'fuzz smoke: %-20s %3d s … ' "$target" "$seconds"
  if cargo +nightly fuzz run "$target" "corpus/$target" "${seeds[@]}" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=30 -print_final_stats=1 \
    >"$logs/$target.log" 2>&1; then
    grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$logs/$target.log" | tail -1 || echo "done"
  else
    echo "FAILED"
    failed+=("$target")
    echo "---- $target: the end of its log ($logs/$target.log) ----"
    tail -n 80 "$logs/$target.log"
    echo "---- the input that failed is kept under fuzz/artifacts/$target/; reproduce it with:"
    echo "     cargo +nightly fuzz run $target fuzz/artifacts/$target/<file>"
  fi
done
echo "fuzz smoke: ${#targets[@]} targets in $((SECONDS - start)) s (build included)"
if ((${#failed[@]})); then
  echo "fuzz smoke: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz smoke: no crashes"
