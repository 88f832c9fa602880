#!/usr/bin/env bash
# Runs every benchmark scenario against sluice and against nginx + nchan in the same run, and
# prints the figures and the sluice/nchan ratios. Results go to bench/out/<timestamp>/.
#
#   bench/run.sh            full profile (idle at 10,000; fanout 1,000 subs at 100 and 1,000 msg/s;
#                           stalled 50 fast + 200 stalled at 2,000 msg/s x 1 KiB for 120 s)
#   bench/run.sh --quick    smaller and shorter, for a smoke run
#
# idle and fanout run twice: with SSE subscribers and with WebSocket subscribers (sluice:
# /topics/{name} with Upgrade, format=raw; nchan: its websocket subscriber on /ws/{name}).
# Publishing is HTTP POST in both.
#
# Both servers get one core's worth of work: sluice is single-threaded, nginx runs one worker.
# The load tool runs on the same 2-core machine and competes for CPU; compare ratios, not
# absolute figures.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
if [ $QUICK = 1 ]; then
    IDLE_N=2000 FAN_N=300 FAN_D=5 ST_D=20 ST_F=20 ST_T=50
else
    IDLE_N=10000 FAN_N=1000 FAN_D=10 ST_D=120 ST_F=50 ST_T=200
fi

need=()
for p in nginx libnginx-mod-nchan; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
bash scripts/dev.sh build >/dev/null
LOAD=$ROOT/build/sluice-load
ulimit -n "$(ulimit -Hn)"

OUT=$ROOT/bench/out/$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
kv() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"; }

SLUICE_PID="" NGINX_PID=""
cleanup() {
    [ -n "$SLUICE_PID" ] && kill "$SLUICE_PID" 2>/dev/null || true
    [ -n "$NGINX_PID" ] && kill "$NGINX_PID" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT

start_sluice() { # memory_limit
    SPORT=$(free_port)
    cat >"$OUT/sluice.ini" <<EOF
[server]
listen = 127.0.0.1:$SPORT
memory_limit = $1
log_level = warn
[limits]
max_connections_per_ip = 1000000
[topic "*"]
max_messages = 1024
EOF
    "$ROOT/build/sluice" --config "$OUT/sluice.ini" 2>>"$OUT/sluice.log" &
    SLUICE_PID=$!
    for _ in $(seq 50); do curl -sf "http://127.0.0.1:$SPORT/healthz" >/dev/null && return; sleep 0.1; done
    echo "sluice did not start" >&2
    exit 1
}
stop_sluice() {
    kill "$SLUICE_PID"
    wait "$SLUICE_PID" || true
    SLUICE_PID=""
}

start_nchan() {
    NPORT=$(free_port)
    mkdir -p "$OUT/nginx/logs"
    sed -e "s|@PORT@|$NPORT|g" -e "s|@DIR@|$OUT/nginx|g" "$ROOT/bench/nchan.conf.template" \
        >"$OUT/nginx/nginx.conf"
    nginx -c "$OUT/nginx/nginx.conf" -p "$OUT/nginx" &
    NGINX_PID=$!
    for _ in $(seq 50); do
        curl -s -o /dev/null "http://127.0.0.1:$NPORT/" && break
        sleep 0.1
    done
    # The worker does the work; measure master + worker.
    NGINX_PIDS="$NGINX_PID,$(pgrep -P "$NGINX_PID" | paste -sd,)"
}
stop_nchan() {
    kill "$NGINX_PID"
    wait "$NGINX_PID" || true
    NGINX_PID=""
}

report() { echo "$1" | tee -a "$OUT/results.txt"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

report "# machine: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), kernel $(uname -r), $(. /etc/os-release; echo "$PRETTY_NAME")"
report "# sluice $(git rev-parse --short HEAD), nginx $(nginx -v 2>&1 | sed 's/.*\///'), nchan $(dpkg-query -W -f='${Version}' libnginx-mod-nchan)"

# ---- idle ------------------------------------------------------------------------------
idle() { # transport (sse|ws), sluice path, nchan path, load tool options...
    local t=$1 spath=$2 npath=$3 S N
    shift 3
    start_sluice 256MiB
    S=$("$LOAD" idle --port "$SPORT" -n "$IDLE_N" --sub-path "$spath" --server-pid "$SLUICE_PID" "$@") ||
        report "# WARNING: idle $t sluice: not every subscriber was accepted"
    stop_sluice
    start_nchan
    N=$("$LOAD" idle --port "$NPORT" -n "$IDLE_N" --sub-path "$npath" --server-pid "$NGINX_PIDS" "$@") ||
        report "# WARNING: idle $t nchan: not every subscriber was accepted"
    stop_nchan
    report "idle $t sluice: $S"
    report "idle $t nchan:  $N"
    report "idle $t RSS per connection: sluice $(kv "$S" rss_per_conn) B, nchan $(kv "$N" rss_per_conn) B, ratio nchan/sluice $(ratio "$(kv "$N" rss_per_conn)" "$(kv "$S" rss_per_conn)")"
}
idle sse /topics/idle /sub/idle
idle ws /topics/idle /ws/idle --ws

# ---- fanout ----------------------------------------------------------------------------
fanout() { # transport (sse|ws), rate, sluice path, nchan subscriber path, load tool options...
    local t=$1 rate=$2 spath=$3 npath=$4 S N
    shift 4
    start_sluice 256MiB
    S=$("$LOAD" fanout --port "$SPORT" -n "$FAN_N" -r "$rate" -d "$FAN_D" \
        --sub-path "$spath" --pub-path /topics/fan --server-pid "$SLUICE_PID" "$@")
    stop_sluice
    start_nchan
    N=$("$LOAD" fanout --port "$NPORT" -n "$FAN_N" -r "$rate" -d "$FAN_D" \
        --sub-path "$npath" --pub-path /pub/fan --server-pid "$NGINX_PIDS" "$@")
    stop_nchan
    [ "$(kv "$S" subscribed)" = "$FAN_N" ] || report "# WARNING: fanout $t sluice: only $(kv "$S" subscribed) of $FAN_N subscribed"
    [ "$(kv "$N" subscribed)" = "$FAN_N" ] || report "# WARNING: fanout $t nchan: only $(kv "$N" subscribed) of $FAN_N subscribed"
    report "fanout $t $FAN_N x $rate sluice: $S"
    report "fanout $t $FAN_N x $rate nchan:  $N"
    report "fanout $t $FAN_N x $rate deliveries per server CPU-second: sluice $(kv "$S" deliveries_per_cpu_s), nchan $(kv "$N" deliveries_per_cpu_s), ratio $(ratio "$(kv "$S" deliveries_per_cpu_s)" "$(kv "$N" deliveries_per_cpu_s)"); p50/p99 ms sluice $(kv "$S" p50_ms)/$(kv "$S" p99_ms), nchan $(kv "$N" p50_ms)/$(kv "$N" p99_ms)"
}
for RATE in 100 1000; do
    fanout sse "$RATE" /topics/fan /sub/fan
    fanout ws "$RATE" /topics/fan /ws/fan --ws
done

# ---- stalled ---------------------------------------------------------------------------
start_sluice 64MiB
S=$("$LOAD" stalled --port "$SPORT" -f "$ST_F" -t "$ST_T" -r 2000 --size 1024 -d "$ST_D" \
    --sub-path /topics/st --pub-path /topics/st --server-pid "$SLUICE_PID" --csv "$OUT/stalled-sluice.csv")
curl -s "http://127.0.0.1:$SPORT/metrics" >"$OUT/stalled-sluice-metrics.txt"
stop_sluice
start_nchan
N=$("$LOAD" stalled --port "$NPORT" -f "$ST_F" -t "$ST_T" -r 2000 --size 1024 -d "$ST_D" \
    --sub-path /sub/st --pub-path /pub/st --server-pid "$NGINX_PIDS" --csv "$OUT/stalled-nchan.csv")
stop_nchan
report "stalled sluice: $S"
report "stalled nchan:  $N"
report "stalled: RSS slope MB/min sluice $(kv "$S" rss_slope_mb_per_min), nchan $(kv "$N" rss_slope_mb_per_min); max RSS sluice $(kv "$S" rss_max), nchan $(kv "$N" rss_max); fast readers missing sluice $(kv "$S" fast_missing), nchan $(kv "$N" fast_missing); fast p99 ms sluice $(kv "$S" fast_p99_ms), nchan $(kv "$N" fast_p99_ms); published sluice $(kv "$S" published), nchan $(kv "$N" published)"
report "# results in $OUT"
