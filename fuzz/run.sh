#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) from a copy of its seed corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-60}
bash fuzz/build.sh
for bin in build-fuzz/fuzz_*; do
    name=$(basename "$bin")
    target=${name#fuzz_}
    work=$(mktemp -d)
    cp -r "fuzz/corpus/$target/." "$work/" 2>/dev/null || true
    dict=()
    [ -f "fuzz/$target.dict" ] && dict=(-dict="fuzz/$target.dict")
    echo "== $name for ${SECONDS_EACH}s"
    "$bin" "${dict[@]}" -max_total_time="$SECONDS_EACH" -print_final_stats=1 "$work" 2>&1 |
        grep -E "stat::number_of_executed_units|ERROR|SUMMARY|Done" || true
    rm -rf "$work"
done
