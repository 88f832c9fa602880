#!/usr/bin/env bash
# Grows the in-tree seed corpora: fuzzes each target for SECONDS (default 60) in a scratch
# corpus, then merges into fuzz/corpus/<target>/ only the inputs that add coverage (-merge=1).
# Targets can be named after SECONDS (e.g. `fuzz/merge.sh 300 conn`); default every target.
# Review `git status fuzz/corpus` afterwards and commit what you want to keep.
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
for name in "${names[@]}"; do
    target=${name#fuzz_}
    bin=build-fuzz/fuzz_$target
    corpus=fuzz/corpus/$target
    mkdir -p "$corpus" build-fuzz/crashes/"$target"
    scratch=$(mktemp -d)
    cp -r "$corpus/." "$scratch/"
    dict=()
    [ -f "fuzz/$target.dict" ] && dict=(-dict="fuzz/$target.dict")
    echo "== fuzz_$target: fuzzing ${SECONDS_EACH}s, then merging into $corpus"
    "$bin" "${dict[@]}" -max_total_time="$SECONDS_EACH" -timeout=25 \
        -artifact_prefix="build-fuzz/crashes/$target/" "$scratch" >"build-fuzz/merge_$target.log" 2>&1 ||
        echo "== fuzz_$target stopped early (see build-fuzz/merge_$target.log); merging what it found"
    before=$(ls "$corpus" | wc -l)
    "$bin" -merge=1 "$corpus" "$scratch" >>"build-fuzz/merge_$target.log" 2>&1
    echo "== $corpus: $before -> $(ls "$corpus" | wc -l) files"
    rm -rf "$scratch"
done
