#!/usr/bin/env bash
# Subscribe handshakes per second with no auth, HS256, ES256 and RS256 tokens (a reconnect
# storm of N clients, C in flight), and idle memory per authenticated subscriber. Starts one
# sluice per mode on 127.0.0.1, drives it with build/sluice-handshake, writes everything to
# bench/out/auth-<timestamp>/ and prints the key=value lines. Tokens are minted with PyJWT.
#
#   bash bench/auth.sh [N] [C] [ROUNDS]     (defaults 10000 200 3)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
C=${2:-200}
ROUNDS=${3:-3}
IDLE=${IDLE:-5000}
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j2 --target sluice sluice-handshake >/dev/null
out=bench/out/auth-$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
/usr/bin/python3 - "$out" <<'PY'
import json, sys, time, base64
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
out = sys.argv[1]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
secret = b"bench-secret-0123456789-0123456789-abcdef"
open(f"{out}/secret", "wb").write(secret)
e = ec.generate_private_key(ec.SECP256R1())
r = rsa.generate_private_key(public_exponent=65537, key_size=2048)
en, rn = e.public_key().public_numbers(), r.public_key().public_numbers()
keys = {"keys": [
    {"kty": "EC", "crv": "P-256", "kid": "es", "x": b64(en.x.to_bytes(32, "big")),
     "y": b64(en.y.to_bytes(32, "big"))},
    {"kty": "RSA", "kid": "rs", "n": b64(rn.n.to_bytes(256, "big")),
     "e": b64(rn.e.to_bytes(3, "big"))}]}
open(f"{out}/jwks.json", "w").write(json.dumps(keys))
claims = {"sub": "bench-user", "exp": int(time.time()) + 3600, "sluice": {"sub": ["bench/*"]}}
for name, key, alg, kid in (("hs256", secret, "HS256", None), ("es256", e, "ES256", "es"),
                            ("rs256", r, "RS256", "rs")):
    t = jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)
    open(f"{out}/{name}.token", "w").write(t + "\n")
PY
port=$((20000 + RANDOM % 20000))
results=$out/results.txt
: >"$results"
for mode in ${MODES:-none hs256 es256 rs256}; do
    cfg=$out/$mode.ini
    printf '[server]\nlisten = 127.0.0.1:%s\nmemory_limit = 512MiB\nlog_level = warn\ndata_dir = %s/data\n' \
        "$port" "$out" >"$cfg"
    printf '[limits]\nmax_connections_per_ip = 100000\nmax_connections = 100000\n' >>"$cfg"
    tok=()
    if [ "$mode" != none ]; then
        printf '[auth]\nhmac_secret_file = %s/secret\njwks_file = %s/jwks.json\n' "$out" "$out" >>"$cfg"
        tok=(--token-file "$out/$mode.token")
    fi
    # Storms on one server; each idle measurement on a fresh one, so that memory freed by
    # earlier connections (kept by malloc) does not hide what the idle ones take.
    for part in storm sse ws; do
        build/sluice --config "$cfg" 2>>"$out/$mode.stderr" &
        pid=$!
        for _ in $(seq 100); do
            curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
            sleep 0.05
        done
        if [ "$part" = storm ]; then
            for r in $(seq "$ROUNDS"); do
                line=$(build/sluice-handshake storm -n "$N" -c "$C" --port "$port" \
                    --server-pid "$pid" "${tok[@]}")
                echo "mode=$mode round=$r $line" | tee -a "$results"
            done
        else
            ws=0
            [ "$part" = ws ] && ws=1
            line=$(build/sluice-handshake idle -n "$IDLE" --ws "$ws" --port "$port" \
                --server-pid "$pid" "${tok[@]}")
            echo "mode=$mode $line" | tee -a "$results"
        fi
        kill -TERM "$pid"
        wait "$pid" || true
    done
    port=$((port + 1))
done
echo "written to $out"
