#!/usr/bin/env bash
# The one entry point for building, running and testing sluice on Debian/Ubuntu.
#   scripts/dev.sh deps    install what building and running need and is missing (apt-get, as root)
#   scripts/dev.sh test-deps  deps, and what the tests need (test packages, npm modules)
#   scripts/dev.sh build   deps, then a release build in build/
#   scripts/dev.sh run     build, then run sluice on its embedded defaults (127.0.0.1:8080)
#   scripts/dev.sh test    deps, format and layer checks, then unit + black-box tests on a
#                          normal build and on an AddressSanitizer + UndefinedBehaviorSanitizer
#                          build (Kafka black-box tests: normal build only), the chaos suite's short profile (bench/chaos/run.sh) on the
#                          normal build and its hostile-clients scenario on the sanitizer build,
#                          then every fuzz target for FUZZ_SECONDS (default 6: 13 targets, 78 s) each
set -euo pipefail
cd "$(dirname "$0")/.."

# What building and running need; the tests need TEST_PACKAGES as well.
PACKAGES=(build-essential cmake pkg-config libuv1-dev node-llhttp libinih-dev libssl-dev
          libwslay-dev libcmocka-dev libcurl4-openssl-dev
          librdkafka-dev)
TEST_PACKAGES=(python3 python3-pytest python3-aiohttp python3-websockets python3-jwt
               python3-cryptography curl clang-format
               clang iproute2 procps chromium gnuplot-nox)
JOBS=$(nproc 2>/dev/null || echo 2)

apt_install() { # packages...
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$p")
    done
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    if [ ${#missing[@]} -gt 0 ]; then
        echo "== installing: ${missing[*]}"
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
}

deps() {
    apt_install "${PACKAGES[@]}"
}

test_deps() {
    apt_install "${PACKAGES[@]}" "${TEST_PACKAGES[@]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    # npm dependencies of the headless-browser test (test/browser: playwright-core, no browser
    # download; it drives the Debian chromium above)
    if [ ! -d test/browser/node_modules ]; then
        if ! command -v npm >/dev/null 2>&1; then
            echo "== installing: npm"
            $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
            $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                --no-install-recommends npm >/dev/null
        fi
        echo "== npm ci in test/browser"
        (cd test/browser && npm ci --no-audit --no-fund)
    fi
}

build_dir() { # dir, extra cmake args...
    local dir=$1
    shift
    cmake -S . -B "$dir" -DSLUICE_WERROR=ON "$@" >/dev/null
    cmake --build "$dir" -j"$JOBS"
}

format_check() {
    local bad
    bad=$(git ls-files '*.c' '*.h' 2>/dev/null | while read -r f; do
        clang-format --dry-run --Werror "$f" >/dev/null 2>&1 || echo "$f"
    done)
    if [ -n "$bad" ]; then
        echo "== not clang-formatted:"
        echo "$bad"
        return 1
    fi
    echo "== clang-format: ok"
}

suite() { # build dir, label
    local dir=$1 label=$2
    echo "== [$label] unit tests"
    (cd "$dir" && ctest --output-on-failure -j"$JOBS")
    echo "== [$label] black-box tests"
    SLUICE_BIN="$PWD/$dir/sluice" /usr/bin/python3 -m pytest test/integ -q -p no:cacheprovider \
        ${PYTEST_ARGS:-}
}

case "${1:-}" in
deps) deps ;;
test-deps) test_deps ;;
build)
    deps
    build_dir build -DCMAKE_BUILD_TYPE=RelWithDebInfo
    ;;
run)
    deps
    build_dir build -DCMAKE_BUILD_TYPE=RelWithDebInfo
    shift
    exec ./build/sluice "$@"
    ;;
test)
    test_deps
    format_check
    bash scripts/check-layers.sh
    build_dir build -DCMAKE_BUILD_TYPE=RelWithDebInfo
    suite build normal
    echo "== [normal] chaos suite (short profile)"
    SLUICE_BIN="$PWD/build/sluice" bash bench/chaos/run.sh --short
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
        build_dir build-asan -DCMAKE_BUILD_TYPE=Debug -DSLUICE_SANITIZE=ON
    # The Kafka black-box tests mostly wait on the mock cluster's group joins and timers: they
    # run on the normal build only, which keeps the whole command near 25 minutes (the Kafka
    # unit tests run under the sanitizers with the others).
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
        PYTEST_ARGS="--ignore=test/integ/test_kafka_ops.py --ignore=test/integ/test_kafka.py ${PYTEST_ARGS:-}" \
        suite build-asan asan+ubsan
    # Some of what hostile clients try (buffer overruns inside an allocation's slack, leaks)
    # shows only under the sanitizers.
    echo "== [asan+ubsan] chaos suite: hostile clients (short profile)"
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
        SLUICE_BIN="$PWD/build-asan/sluice" bash bench/chaos/run.sh --short --only hostile
    echo "== fuzz targets, ${FUZZ_SECONDS:-6}s each"
    bash fuzz/run.sh "${FUZZ_SECONDS:-6}"
    echo "== all tests passed"
    ;;
*)
    sed -n '2,11p' "$0"
    exit 2
    ;;
esac
