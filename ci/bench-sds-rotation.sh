#!/bin/bash
# Issue 19, item 4: ten certificate rotations (an SDS file moved into place once a second,
# ECDSA and RSA in turn) while `switchyard-bench rr --tls` runs 8 connections through the
# listener. Prints the run's requests and errors and the proxy's SDS and TLS counters.
#   ci/bench-sds-rotation.sh [OUT_DIR]   (after `cargo build --release --workspace`)
set -eu
cd "$(dirname "$0")/.."
O=${1:-target/sds-rotation}; mkdir -p "$O"; O=$(realpath "$O")
B=target/release/switchyard-bench; S=target/release/switchyard; C=$PWD/tests/certs
ECHO=127.0.0.1:17111; PORT=17112; ADMIN=17113
secret() {
  printf 'resources:\n- "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  name: server_cert\n  tls_certificate:\n    certificate_chain: { filename: %s }\n    private_key: { filename: %s }\n' "$C/$1.pem" "$C/$1.key" > "$O/cert.tmp"
  mv "$O/cert.tmp" "$O/cert.yaml"
}
secret server
. ci/tls-listener.sh
tls_listener_bootstrap $ADMIN $PORT 17111 "            tls_certificate_sds_secret_configs:
            - name: server_cert
              sds_config: { path_config_source: { path: $O/cert.yaml } }" \
  "node: { id: rotation, cluster: bench }
" > "$O/switchyard.yaml"
$B serve --echo $ECHO --duration 120 > "$O/serve.log" 2>&1 & SERVE=$!
$S run -c "$O/switchyard.yaml" --concurrency 1 > "$O/switchyard.log" 2>&1 & SW=$!
trap 'kill $SW $SERVE 2>/dev/null || true' EXIT
sleep 2
$B rr --target 127.0.0.1:$PORT --tls --tls-ca "$C/ca.pem" --conns 8 --duration 12 -q --json "$O/rr.json" > /dev/null & RR=$!
sleep 1
for i in $(seq 1 10); do
  if [ $((i % 2)) = 1 ]; then secret server-rsa; else secret server; fi
  sleep 1
done
wait $RR
curl -s "http://127.0.0.1:$ADMIN/stats" | grep -E "^sds\.|ssl\.(handshake|connection_error)|ssl_context_update_by_sds" || true
python3 -c "
import json; d=json.load(open('$O/rr.json'))
print('rr: requests', d['results']['requests'], 'req/s', round(d['results']['requests_per_s']), 'errors', d['errors_total'], 'p99 us', d['latency_us']['p99_us'])"
