# Sourced by ci/bench-tls-burst.sh and ci/bench-sds-rotation.sh: one Switchyard bootstrap
# with a TLS-terminating listener in front of an echo backend.
#   tls_listener_bootstrap ADMIN_PORT LISTENER_PORT ECHO_PORT COMMON_TLS_CONTEXT [TOP]
# COMMON_TLS_CONTEXT is the YAML under `common_tls_context:` (12 spaces of indent); TOP goes
# first in the file (a `node:` line, for SDS). Prints the bootstrap.
tls_listener_bootstrap() {
  local admin=$1 port=$2 echo_port=$3 common=$4 top=${5:-}
  cat <<Y
${top}admin: { address: { socket_address: { address: 127.0.0.1, port_value: $admin } } }
static_resources:
  listeners:
  - name: tls
    address: { socket_address: { address: 127.0.0.1, port_value: $port } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tls
          cluster: echo
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
$common
  clusters:
  - name: echo
    load_assignment:
      cluster_name: echo
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $echo_port } } }
Y
}
