#!/bin/bash
# Issue 19, item 5: full TLS handshakes at 500/s beside an established rr connection on the
# same (single) Switchyard worker, and the control that says what the load generator's own
# handshake work adds. Proxy alone on CPU 1; backend and load generator on CPU 0.
#   ci/bench-tls-burst.sh [OUT_DIR] [REPS]   (after `cargo build --release --workspace`)
# Prints, per repetition, the rr p50/p99 idle and during the burst, through the proxy and
# (control) straight to the backend.
#
# CPU 0 has no room to keep the load generator's own handshake work (chain verification,
# key exchange: most of a full handshake's cost is the client's) away from the rr client it
# shares the CPU with. So the rr client and the echo backend run at real-time priority
# (`chrt -f 50`): the handshaking client only gets CPU 0 when they are idle, and cannot
# delay a request or its echo there. What the burst still adds to the rr p99 through the
# proxy is then the proxy's own (its one worker on CPU 1), which the control confirms: the
# direct rr p99 should not move.
set -eu
cd "$(dirname "$0")/.."
O=${1:-target/tls-burst}; REPS=${2:-3}
mkdir -p "$O"
B=target/release/switchyard-bench; S=target/release/switchyard; C=tests/certs
ECHO=127.0.0.1:17101; PORT=17102; ADMIN=17103
. ci/tls-listener.sh
tls_listener_bootstrap $ADMIN $PORT 17101 "            tls_certificates:
            - certificate_chain: { filename: $PWD/$C/server.pem }
              private_key: { filename: $PWD/$C/server.key }" > "$O/switchyard.yaml"
taskset -c 0 chrt -f 50 $B serve --echo $ECHO --duration 600 > "$O/serve.log" 2>&1 & SERVE=$!
taskset -c 1 $S run -c "$O/switchyard.yaml" --concurrency 1 > "$O/switchyard.log" 2>&1 & SW=$!
trap 'kill $SW $SERVE 2>/dev/null || true' EXIT
sleep 2
T="--tls --tls-ca $C/ca.pem"
rr() { taskset -c 0 chrt -f 50 $B rr --target "$1" $2 --conns 1 --rate 2000 --duration 8 -q --json "$3" > /dev/null; }
for rep in $(seq 1 "$REPS"); do
  for path in proxy direct; do
    if [ $path = proxy ]; then target=127.0.0.1:$PORT; tls=$T; else target=$ECHO; tls=; fi
    rr $target "$tls" "$O/$path-idle-$rep.json"
    taskset -c 0 $B cps --target 127.0.0.1:$PORT $T --concurrency 4 --rate 500 --duration 10 -q --json "$O/$path-cps-$rep.json" > /dev/null & CPS=$!
    sleep 1
    rr $target "$tls" "$O/$path-burst-$rep.json"
    wait $CPS
  done
done
python3 - "$O" "$REPS" <<'PY'
import json, sys
out, reps = sys.argv[1], int(sys.argv[2])
lat = lambda f: json.load(open(f))["latency_us"]
for rep in range(1, reps + 1):
    for path in ("proxy", "direct"):
        i, b = lat(f"{out}/{path}-idle-{rep}.json"), lat(f"{out}/{path}-burst-{rep}.json")
        c = json.load(open(f"{out}/{path}-cps-{rep}.json"))
        print(f"rep {rep} {path:6} p50 {i['p50_us']:.0f} -> {b['p50_us']:.0f} us, "
              f"p99 {i['p99_us']:.0f} -> {b['p99_us']:.0f} us ({b['p99_us'] / i['p99_us']:.1f}x); "
              f"handshakes {c['results']['connections_per_s']:.0f}/s, errors {c['errors_total']}")
PY
