#!/usr/bin/env bash
# Builds fuzz targets as libFuzzer binaries (with ASan and UBSan) into build-fuzz/: the ones
# named on the command line (e.g. `fuzz/build.sh conn http`), or every fuzz/fuzz_*.c. The
# sources under src/*/ (not main.c) and llhttp are compiled once and linked into each target.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v clang >/dev/null; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang >/dev/null
fi
if [ $# -gt 0 ]; then
    targets=()
    for t in "$@"; do targets+=("fuzz/fuzz_${t#fuzz_}.c"); done
else
    targets=(fuzz/fuzz_*.c)
fi
CFLAGS=(-g -O1 -DSLUICE_VERSION='"fuzz"' -Isrc -I/usr/share/include/llhttp
        $(pkg-config --cflags libuv inih))
SAN=address,undefined
# A report of undefined behaviour must stop the run as a crash does, not scroll past.
RECOVER=-fno-sanitize-recover=undefined
LIBS=($(pkg-config --libs libuv inih) -lwslay -lcrypto -lcurl -lrdkafka)
obj=build-fuzz/obj
rm -rf "$obj"
mkdir -p "$obj"
# Objects are named after their directory too: llhttp has an http.c, and so does src/.
srcs=$(ls src/*/*.c; ls /usr/share/llhttp/{llhttp,api,http}.c)
echo "$srcs" | xargs -P "$(nproc 2>/dev/null || echo 2)" -I{} sh -c \
    'f={}; o='"$obj"'/$(basename "$(dirname "$f")")_$(basename "$f" .c).o;
     clang "$@" -fsanitize=fuzzer-no-link,'"$SAN"' '"$RECOVER"' -c "$f" -o "$o"' sh "${CFLAGS[@]}"
for f in "${targets[@]}"; do
    name=$(basename "$f" .c)
    # A target that defines __wrap_NAME replaces NAME in the sources it links (-Wl,--wrap).
    wraps=$(grep -o '__wrap_[A-Za-z0-9_]*' "$f" | sort -u | sed 's/^__wrap_/-Wl,--wrap=/' || true)
    clang "${CFLAGS[@]}" -fsanitize=fuzzer,$SAN $RECOVER "$f" "$obj"/*.o "${LIBS[@]}" $wraps \
        -o "build-fuzz/$name"
    echo "built build-fuzz/$name"
done
