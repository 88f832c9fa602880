#!/usr/bin/env bash
# Builds every fuzz/fuzz_*.c as a libFuzzer binary (with ASan and UBSan) into build-fuzz/.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang >/dev/null || { sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo; $sudo apt-get install -y -qq clang >/dev/null; }
mkdir -p build-fuzz
SRC=$(ls src/*/*.c)
for f in fuzz/fuzz_*.c; do
    name=$(basename "$f" .c)
    clang -g -O1 -fsanitize=fuzzer,address,undefined -DSLUICE_VERSION='"fuzz"' \
        -Isrc -I/usr/share/include/llhttp "$f" $SRC /usr/share/llhttp/{llhttp,api,http}.c \
        $(pkg-config --cflags --libs libuv inih) -lwslay -lcrypto -o "build-fuzz/$name"
    echo "built build-fuzz/$name"
done
