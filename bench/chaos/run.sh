#!/usr/bin/env bash
# The chaos suite: every scenario in bench/chaos/ against a real sluice, each judged by its own
# VERDICT line. Prints every VERDICT and exits non-zero if any scenario failed (or crashed).
#
#   bash bench/chaos/run.sh            full profile (about 50 minutes; stalled also runs its
#                                      A/B against nginx + nchan, installed if missing)
#   bash bench/chaos/run.sh --short    CI profile (about 6 minutes on 2 cores)
#   ... --only hostile[,flood...]      only the scenarios named (either profile)
#
# Scenarios: noreaders, hol, flood, stalled, ghosts, churn, hostile, audio, endpoints (each when
# present). CSVs,
# charts and logs go to bench/out/chaos-<timestamp>/<scenario>/ (or $CHAOS_OUT/<scenario>/).
# The binaries are build/sluice and build/sluice-load (built here unless SLUICE_BIN is set).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
ROOT=$PWD

SHORT=""
ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
    --short) SHORT=--short ;;
    --only)
        [ $# -ge 2 ] || { sed -n '2,14p' "$0"; exit 2; }
        ONLY=",$2,"
        shift
        ;;
    *)
        sed -n '2,14p' "$0"
        exit 2
        ;;
    esac
    shift
done
PY=/usr/bin/python3

if [ -z "${SLUICE_BIN:-}" ]; then
    bash scripts/dev.sh build >/dev/null || exit 1
fi
if [ -z "$SHORT" ] && { [ -z "$ONLY" ] || [[ $ONLY == *,stalled,* ]]; }; then
    # the A/B of stalled needs nginx + nchan
    need=()
    for p in nginx libnginx-mod-nchan; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            need+=("$p")
    done
    if [ ${#need[@]} -gt 0 ]; then
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo=sudo
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
fi
command -v gnuplot >/dev/null 2>&1 || echo "# note: gnuplot is not installed: no charts"
ulimit -n "$(ulimit -Hn)"

export CHAOS_OUT=${CHAOS_OUT:-$ROOT/bench/out/chaos-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$CHAOS_OUT"
echo "# chaos suite ${SHORT:-full profile}: sluice $(git rev-parse --short HEAD 2>/dev/null)," \
    "$(nproc) cores; results in $CHAOS_OUT"

if [ -n "$SHORT" ]; then
    PLAN=("noreaders --short" "hol --short" "flood --short" "stalled --short"
          "ghosts --short" "churn --short" "hostile --short" "audio --short"
          "endpoints --short")
    LIMIT=600
else
    PLAN=("noreaders" "hol" "flood" "stalled --ab" "ghosts" "churn" "hostile" "audio"
          "endpoints")
    LIMIT=3600
fi

verdicts=()
failed=0
t_start=$(date +%s)
for item in "${PLAN[@]}"; do
    read -r name args <<<"$item"
    [ -z "$ONLY" ] || [[ $ONLY == *,$name,* ]] || continue
    script=bench/chaos/$name.py
    [ -f "$script" ] || { echo "# $name: not present, skipped"; continue; }
    t0=$(date +%s)
    log=$CHAOS_OUT/$name.log
    # shellcheck disable=SC2086
    timeout --signal=TERM --kill-after=30 "$LIMIT" "$PY" "$script" $args >"$log" 2>&1
    rc=$?
    v=$(grep '^VERDICT ' "$log" | tail -1)
    if [ -z "$v" ]; then
        v="VERDICT $name FAIL crashed exit=$rc log=$log"
        tail -20 "$log" | sed 's/^/#   /'
    elif [ $rc -ne 0 ] && ! grep -q "^VERDICT [^ ]* FAIL" <<<"$v"; then
        v="$v (but exit=$rc)"
    fi
    grep -q "^VERDICT [^ ]* PASS" <<<"$v" && [ $rc -eq 0 ] || failed=1
    echo "$v ($(($(date +%s) - t0)) s)"
    verdicts+=("$v")
done

if [ -n "$ONLY" ] && [ ${#verdicts[@]} -eq 0 ]; then
    echo "# chaos suite: no scenario of this profile matches --only ${ONLY:1:-1}"
    exit 2
fi
echo "# chaos suite: ${#verdicts[@]} scenarios in $(($(date +%s) - t_start)) s;" \
    "$([ $failed = 0 ] && echo "all passed" || echo "FAILED: $(printf '%s\n' "${verdicts[@]}" |
        awk '$3 != "PASS" { printf "%s ", $2 }')")"
exit $failed
