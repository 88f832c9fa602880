#!/usr/bin/env bash
# Builds the fuzz targets and runs each for SECONDS (default 60) from a copy of its seed corpus
# (the in-tree corpus is not changed; see fuzz/merge.sh to grow it). Targets can be named after
# SECONDS (e.g. `fuzz/run.sh 10 conn http`); the default is every fuzz/fuzz_*.c. Inputs in
# fuzz/crashes/<target>/ (ones that crashed it before) are replayed first.
# Exits non-zero if any target crashed, leaked, timed out or failed an assertion; the
# reproducer is kept in build-fuzz/crashes/<target>/ and its path and the error are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-60}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
shift || true
bash fuzz/build.sh "$@"
if [ $# -gt 0 ]; then
    names=("$@")
else
    names=()
    for f in fuzz/fuzz_*.c; do names+=("$(basename "$f" .c)"); done
fi
failed=()
for name in "${names[@]}"; do
    target=${name#fuzz_}
    bin=build-fuzz/fuzz_$target
    work=$(mktemp -d)
    cp -r "fuzz/corpus/$target/." "$work/" 2>/dev/null || true
    artifacts=build-fuzz/crashes/$target
    mkdir -p "$artifacts"
    dict=()
    [ -f "fuzz/$target.dict" ] && dict=(-dict="fuzz/$target.dict")
    log=build-fuzz/fuzz_$target.log
    rc=0
    if compgen -G "fuzz/crashes/$target/*" >/dev/null; then
        # Inputs that crashed it once are replayed first: each is a regression test.
        echo "== fuzz_$target: replaying fuzz/crashes/$target/"
        "$bin" -timeout=25 fuzz/crashes/"$target"/* >"$log" 2>&1 || rc=$?
    fi
    if [ "$rc" -eq 0 ]; then
        echo "== fuzz_$target for ${SECONDS_EACH}s"
        "$bin" "${dict[@]}" -max_total_time="$SECONDS_EACH" -timeout=25 -rss_limit_mb=2048 \
            -print_final_stats=1 -artifact_prefix="$artifacts/" "$work" >"$log" 2>&1 || rc=$?
    fi
    rm -rf "$work"
    grep -E "stat::number_of_executed_units|stat::average_exec_per_sec" "$log" || true
    if [ "$rc" -ne 0 ]; then
        echo "== fuzz_$target FAILED (exit $rc); log: $log"
        grep -E -A40 "^==[0-9]+==ERROR|runtime error|^fuzz_[a-z]+: |Test unit written" "$log" |
            head -80 || tail -40 "$log"
        failed+=("$target")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "== fuzzing found failures in: ${failed[*]} (reproducers in build-fuzz/crashes/)"
    exit 1
fi
echo "== fuzzing: no failures"
