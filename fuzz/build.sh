#!/usr/bin/env bash
# Builds fuzz targets as libFuzzer binaries (with ASan and UBSan) into build-fuzz/: the ones
# named on the command line (e.g. `fuzz/build.sh conn http`), or every fuzz/fuzz_*.c.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang >/dev/null || { sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo; $sudo apt-get install -y -qq clang >/dev/null; }
mkdir -p build-fuzz
SRC=$(ls src/*.c | grep -v src/main.c)
if [ $# -gt 0 ]; then
    targets=()
    for t in "$@"; do targets+=("fuzz/fuzz_${t#fuzz_}.c"); done
else
    targets=(fuzz/fuzz_*.c)
fi
for f in "${targets[@]}"; do
    name=$(basename "$f" .c)
    clang -g -O1 -fsanitize=fuzzer,address,undefined -DSLUICE_VERSION='"fuzz"' \
        -Isrc -I/usr/share/include/llhttp "$f" $SRC /usr/share/llhttp/{llhttp,api,http}.c \
        $(pkg-config --cflags --libs libuv inih) -lwslay -lcrypto -o "build-fuzz/$name"
    echo "built build-fuzz/$name"
done
