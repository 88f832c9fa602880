#!/usr/bin/env bash
# Fails on an #include that goes the wrong way between the layers of src/ (docs/design-notes.md,
# "Architecture"): a file may include headers of its own layer and of the layers below it.
#   lib (pure: no libuv)  <-  core (no libuv)  <-  store (thread pool)  <-  net | sink | kafka
#   <-  main.c
# net/, sink/ and kafka/ sit side by side and meet only through core (and store): none of them
# includes another's headers. Also fails when lib/ or core/ include <uv.h>.
set -euo pipefail
cd "$(dirname "$0")/.."
rank() {
    case "$1" in
    lib) echo 0 ;;
    core) echo 1 ;;
    store) echo 2 ;;
    net | sink | kafka) echo 3 ;;
    main) echo 4 ;;
    *) echo -1 ;;
    esac
}
bad=0
while IFS= read -r f; do
    dir=${f#src/}
    layer=${dir%%/*}
    [ "$layer" = "main.c" ] && layer=main
    r=$(rank "$layer")
    if [ "$r" -lt 0 ]; then
        echo "$f: not in a known layer (lib, core, store, net)"
        bad=1
        continue
    fi
    while IFS= read -r inc; do
        target=${inc%%/*}
        tr=$(rank "$target")
        if [ "$tr" -lt 0 ] || [ "$tr" -gt "$r" ]; then
            echo "$f: includes \"$inc\" ($target is above $layer)"
            bad=1
        elif [ "$tr" -eq 3 ] && [ "$r" -eq 3 ] && [ "$target" != "$layer" ]; then
            echo "$f: includes \"$inc\" ($target and $layer meet only through core)"
            bad=1
        fi
    done < <(sed -n 's/^#include "\([^"]*\)".*/\1/p' "$f")
    if [ "$r" -le 1 ] && grep -q '^#include <uv\.h>' "$f"; then
        echo "$f: includes <uv.h> ($layer makes no libuv calls)"
        bad=1
    fi
done < <(git ls-files 'src/*.c' 'src/*.h' 'src/**/*.c' 'src/**/*.h' 2>/dev/null || find src -name '*.[ch]')
if [ "$bad" -ne 0 ]; then
    echo "== layer check: includes go the wrong way (see above)"
    exit 1
fi
echo "== layer check: ok"
