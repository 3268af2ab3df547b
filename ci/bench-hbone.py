#!/usr/bin/env python3
"""HBONE (HTTP/2 CONNECT over mTLS) through a source and a destination proxy, beside mTLS and
plaintext tcp_proxy pairs: what the tunnel costs over the TLS and the plain hop.

A *pair* is two proxies in series, each with one worker (`--concurrency 1`; Envoy also
`--disable-hot-restart`), configured in Envoy's terms (the YAML of tests/hbone.rs):
  switchyard, envoy  HBONE, the same proxy on both ends: the source's tcp_proxy tunnels each
                     connection (`tunneling_config`, :authority the backend's ip:port) over a
                     pooled HTTP/2 connection (max_concurrent_streams 100, windows 4 MiB stream
                     / 16 MiB connection) with mTLS (client.pem, SNI backend.example.com, ALPN
                     h2); the destination terminates it (DownstreamTlsContext with server.pem,
                     client certificate required, the caller's SPIFFE ID matched; the CONNECT
                     subset of http_connection_manager) and delivers each stream to the backend
                     its :authority names (ORIGINAL_DST by :authority). No access log.
  <proxy>-tls        the reference without the tunnel: tcp_proxy -> the same mTLS (certificates,
                     SNI and SAN checks; no ALPN, no HTTP/2), one TLS connection per client
                     connection -> tcp_proxy to a static cluster of the backend
  <proxy>-plain      two plaintext tcp_proxies in series
  direct             no proxy: the load generator on the backend (the limit)
Backends: `switchyard-bench serve --sink` (bulk) and `--echo` (the rest). Load:
`switchyard-bench` (bench/README.md), verifying every byte.

Tests, per placement and pair (one cell: the pair started, the four tests, the pair stopped):
  bulk 1 and 8 streams   throughput --direction up to the sink (one stream per connection;
                         over HBONE all share one HTTP/2 connection): Gbit/s, and CPU-s of both
                         proxies' process trees over the run per GB moved
  rr 64 B                closed loop, 1 connection, to the echo: req/s, p50 and p99 us
  new streams/s          cps --concurrency 8 (--cps-conc): connect, 64 B exchange, close with
                         FIN (--cps-close; over HBONE a new CONNECT stream on the pooled
                         connection, ended by END_STREAM both ways; over tls a TLS handshake per
                         connection): per s, and proxies' CPU-us per stream. Not RST: a client's
                         RST becomes an RST_STREAM, and Envoy's destination answers about 1,000
                         of them on one HTTP/2 connection with GOAWAY (INTERNAL_ERROR), failing
                         the streams in flight (seen with Envoy 1.40; likely nghttp2's reset
                         rate limit, the Rapid Reset mitigation): the row would measure that.
Placements (`--concurrency 1` per proxy everywhere):
  shared  load generator, backend and both proxies on CPU 0 (`taskset -c 0`): the proxies' cost
  split   both proxies on CPU 1 (sharing it), load generator and backend on CPU 0
A SCHED_IDLE spinner (`chrt --idle 0`) runs on each CPU used, so an idle vCPU never halts
(shared/notes/performance.md; --no-spinners). Switchyard runs with its default `--placement
auto` (extra flags: --switchyard-args). Cells are interleaved (the pair order rotates every
repetition); the table shows the median and min-max over the repetitions. Per measurement the
CPU of processes not started here is recorded, and measurements it disturbed (over 0.15 CPU/s)
are counted under the table.

A run that counts errors keeps its figures, marked `!` in the table and listed under it.
A Switchyard pair whose configuration `switchyard validate` refuses (HBONE before its control
plane is merged) is skipped with the reason printed; so is an Envoy pair without Envoy.

    ci/bench-hbone.py [--quick] [--reps 3] [--duration 5] [--pairs switchyard,envoy,...]
                      [--placements shared,split] [--cps-conc 8] [--cps-close fin|rst]
                      [--port-base 16700]
                      [--switchyard-bin P] [--bench-bin P] [--envoy P] [--no-build] [--json F]

--quick: 1 repetition of 2 s (for checking). Builds `switchyard` and `switchyard-bench`
(release) first unless --no-build or both binaries are given. Needs taskset (and chrt for the
spinners). Exit 1 if any run failed or counted errors. Every process it starts is stopped by its PID.
"""

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CERTS = os.path.join(ROOT, "tests/certs")
CALLER = "spiffe://cluster.local/ns/default/sa/client"
# Columns, in table order: (id, proxy, kind); kind is hbone, tls, plain or direct.
PAIRS = [("switchyard", "switchyard", "hbone"), ("envoy", "envoy", "hbone"),
         ("switchyard-tls", "switchyard", "tls"), ("envoy-tls", "envoy", "tls"),
         ("switchyard-plain", "switchyard", "plain"), ("envoy-plain", "envoy", "plain"),
         ("direct", None, "direct")]
PLACEMENTS = {"shared": "0", "split": "1"}  # the proxies' CPU; load and backend on CPU 0
PLACEMENT_TEXT = {
    "shared": "shared: load generator, backend and both proxies on CPU 0 (taskset -c 0)",
    "split": "split: both proxies on CPU 1 (sharing it), load generator and backend on CPU 0",
}
LOAD_CPU = "0"
TESTS = [  # (row, unit, key)
    ("bulk, 1 stream", "Gbit/s", "bulk1"),
    ("bulk, 1 stream: proxies' CPU", "CPU-s/GB", "bulk1_cpu_gb"),
    ("bulk, 8 streams", "Gbit/s", "bulk8"),
    ("bulk, 8 streams: proxies' CPU", "CPU-s/GB", "bulk8_cpu_gb"),
    ("rr 64 B, 1 conn", "req/s", "rr_rate"),
    ("rr 64 B p50", "us", "rr_p50"),
    ("rr 64 B p99", "us", "rr_p99"),
    ("new streams", "per s", "cps"),
    ("new streams: proxies' CPU", "CPU-us each", "cps_cpu_us"),
]
DISTURB_CPU = 0.15  # CPU-s per s of other processes above which a measurement is flagged
CLK_TCK = os.sysconf("SC_CLK_TCK")
PF_KTHREAD = 0x00200000


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# configurations (Envoy v3 bootstrap YAML; both proxies read the same)

def tls_down(ind):
    """A DownstreamTlsContext: server.pem, client certificate required, CALLER only."""
    return indent(f"""transport_socket:
  name: envoy.transport_sockets.tls
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
    require_client_certificate: true
    common_tls_context:
      {{alpn}}tls_certificates:
      - certificate_chain: {{ filename: {CERTS}/server.pem }}
        private_key: {{ filename: {CERTS}/server.key }}
      validation_context:
        trusted_ca: {{ filename: {CERTS}/ca.pem }}
        match_typed_subject_alt_names:
        - san_type: URI
          matcher: {{ exact: "{CALLER}" }}
""", ind)


def tls_up(ind):
    """An UpstreamTlsContext: the workload's certificate (client.pem), the server's name
    checked."""
    return indent(f"""transport_socket:
  name: envoy.transport_sockets.tls
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
    sni: backend.example.com
    common_tls_context:
      {{alpn}}tls_certificates:
      - certificate_chain: {{ filename: {CERTS}/client.pem }}
        private_key: {{ filename: {CERTS}/client.key }}
      validation_context:
        trusted_ca: {{ filename: {CERTS}/ca.pem }}
        match_typed_subject_alt_names:
        - san_type: DNS
          matcher: {{ exact: backend.example.com }}
""", ind)


def indent(text, n):
    return "".join(" " * n + line if line.strip() else line for line in text.splitlines(True))


def with_alpn(block, alpn, ind):
    """Fill the `{alpn}` slot of a TLS block: `alpn_protocols: [h2]` (its own line) or
    nothing."""
    pad = " " * (ind + 6)
    return block.replace("{alpn}", f"alpn_protocols: [h2]\n{pad}" if alpn else "")


def admin(port):
    return ("admin:\n  address: { socket_address: { address: 127.0.0.1, port_value: "
            f"{port} }} }}\nstatic_resources:\n")


def listener(name, port, chain_extra, filters):
    return (f"  - name: {name}\n"
            f"    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}\n"
            f"    filter_chains:\n    - {chain_extra.lstrip()}"
            f"{'      ' if chain_extra else ''}filters:\n{filters}")


def tcp_proxy(prefix, cluster, tunnel_host=None):
    out = ("      - name: envoy.filters.network.tcp_proxy\n"
           "        typed_config:\n"
           '          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.'
           "v3.TcpProxy\n"
           f"          stat_prefix: {prefix}\n"
           f"          cluster: {cluster}\n")
    if tunnel_host:
        out += f'          tunneling_config:\n            hostname: "{tunnel_host}"\n'
    return out


def static_cluster(name, port, extra=""):
    return (f"  - name: {name}\n"
            "    type: STATIC\n"
            "    connect_timeout: 1s\n"
            "    load_assignment:\n"
            f"      cluster_name: {name}\n"
            "      endpoints:\n"
            "      - lb_endpoints:\n"
            f"        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, "
            f"port_value: {port} }} }} }}\n" + extra)


HCM = """      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: hbone
          codec_type: HTTP2
          http2_protocol_options:
            allow_connect: true
            max_concurrent_streams: 100
            initial_stream_window_size: 4194304
            initial_connection_window_size: 16777216
          upgrade_configs:
          - upgrade_type: CONNECT
          route_config:
            name: hbone
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { connect_matcher: {} }
                route:
                  cluster: pods
                  upgrade_configs:
                  - upgrade_type: CONNECT
                    connect_config: {}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""

PODS = """  - name: pods
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 1s
    original_dst_lb_config:
      use_http_header: true
      http_header_name: ":authority"
"""

H2_OPTIONS = """    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options:
            max_concurrent_streams: 100
            initial_stream_window_size: 4194304
            initial_connection_window_size: 16777216
"""


def configs(kind, p, sink, echo):
    """(source YAML, destination YAML) of a pair of `kind`; `p` its ports. The source listens
    on p.src_bulk (to the sink) and p.src_rr (to the echo)."""
    if kind == "hbone":
        down = with_alpn(tls_down(6), True, 6)
        dst = (admin(p["dst_admin"]) + "  listeners:\n"
               + listener("hbone", p["dst_hbone"], down, HCM) + "  clusters:\n" + PODS)
        up = with_alpn(tls_up(4), True, 4)
        src = (admin(p["src_admin"]) + "  listeners:\n"
               + listener("bulk", p["src_bulk"], "",
                          tcp_proxy("bulk", "tunnel", f"127.0.0.1:{sink}"))
               + listener("rr", p["src_rr"], "",
                          tcp_proxy("rr", "tunnel", f"127.0.0.1:{echo}"))
               + "  clusters:\n" + static_cluster("tunnel", p["dst_hbone"], H2_OPTIONS + up))
        return src, dst
    tls = kind == "tls"
    down = with_alpn(tls_down(6), False, 6) if tls else ""
    up = with_alpn(tls_up(4), False, 4) if tls else ""
    dst = (admin(p["dst_admin"]) + "  listeners:\n"
           + listener("bulk", p["dst_bulk"], down, tcp_proxy("bulk", "sink"))
           + listener("rr", p["dst_rr"], down, tcp_proxy("rr", "echo"))
           + "  clusters:\n" + static_cluster("sink", sink) + static_cluster("echo", echo))
    src = (admin(p["src_admin"]) + "  listeners:\n"
           + listener("bulk", p["src_bulk"], "", tcp_proxy("bulk", "next_bulk"))
           + listener("rr", p["src_rr"], "", tcp_proxy("rr", "next_rr"))
           + "  clusters:\n" + static_cluster("next_bulk", p["dst_bulk"], up)
           + static_cluster("next_rr", p["dst_rr"], up))
    return src, dst


# ---------------------------------------------------------------------------------------------
# /proc (from ci/bench-compare.py)

def read_stat(pid):
    """(ppid, cpu ticks utime+stime, starttime, flags) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    rest = s[s.rindex(")") + 2:].split()
    return int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[19]), int(rest[6])


def scan_procs():
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = read_stat(int(name))
            if st is not None:
                out[int(name)] = st
    return out


def descendants(root, procs=None):
    procs = procs if procs is not None else scan_procs()
    children = {}
    for pid, st in procs.items():
        children.setdefault(st[0], []).append(pid)
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_cpu_s(root):
    """utime+stime (seconds) of a process and its descendants."""
    total = 0
    for pid in descendants(root):
        st = read_stat(pid)
        if st:
            total += st[1]
    return total / CLK_TCK


class Foreign:
    """CPU time of user-space processes that are not descendants of this script."""

    def __init__(self):
        self.me = os.getpid()
        self.before = self._snap()
        self.t0 = time.monotonic()

    def _snap(self):
        procs = scan_procs()
        ours = set(descendants(self.me, procs))
        return {pid: (st[1], st[2]) for pid, st in procs.items()
                if pid not in ours and not st[3] & PF_KTHREAD and st[0] != 2}

    def cpu_per_s(self):
        after = self._snap()
        ticks = 0
        for pid, (t, start) in after.items():
            b = self.before.get(pid)
            ticks += t - b[0] if b and b[1] == start else t
        return ticks / CLK_TCK / max(time.monotonic() - self.t0, 1e-3)


# ---------------------------------------------------------------------------------------------
# processes

def stop(p):
    """SIGTERM the process we started (by its PID), SIGKILL if it lingers."""
    if p is None or p.poll() is not None:
        return
    try:
        os.kill(p.pid, signal.SIGTERM)
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    except ProcessLookupError:
        pass


def port_listening(port):
    want = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if parts[1] == want and parts[3] == "0A":
                    return True
    except OSError:
        pass
    return False


def port_free(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def http_ok(port, path="/ready"):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def tail(path, n=1500):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:].strip()
    except OSError:
        return ""


class Bins:
    switchyard = bench = envoy = None
    switchyard_args = []


def start_proxy(proxy, cfg, cpu, ports, admin_port, logpath, started):
    """Start `proxy` from `cfg` on `cpu`; returns its Popen once its listeners accept and its
    admin answers /ready."""
    ts = ["taskset", "-c", cpu]
    if proxy == "switchyard":
        cmd = ts + [Bins.switchyard, "run", "-c", cfg, "--concurrency", "1",
                    "--drain-time-s", "0", "-l", "warn"] + Bins.switchyard_args
    else:
        cmd = ts + [Bins.envoy, "-c", cfg, "--concurrency", "1", "--disable-hot-restart",
                    "--log-level", "warn"]
    with open(logpath, "ab") as err:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    started.append(p)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"{proxy} ({os.path.basename(cfg)}) exited with "
                               f"{p.returncode}: {tail(logpath)}")
        if all(port_listening(x) for x in ports) and http_ok(admin_port):
            return p
        time.sleep(0.05)
    raise RuntimeError(f"{proxy} ({os.path.basename(cfg)}) not ready after 20 s: "
                       f"{tail(logpath)}")


def probe(bulk_port, rr_port):
    """One 64 B exchange through the rr path and one byte into the sink through the bulk path
    (each end to end, so HBONE's pooled HTTP/2 connection is up before anything is measured)."""
    msg = os.urandom(64)
    with socket.create_connection(("127.0.0.1", rr_port), timeout=5) as s:
        s.sendall(msg)
        got = b""
        while len(got) < len(msg):
            chunk = s.recv(len(msg) - len(got))
            if not chunk:
                raise RuntimeError(f"probe: the echo path (port {rr_port}) closed after "
                                   f"{len(got)} of {len(msg)} bytes")
            got += chunk
        if got != msg:
            raise RuntimeError(f"probe: the echo path (port {rr_port}) returned other bytes")
    with socket.create_connection(("127.0.0.1", bulk_port), timeout=5) as s:
        s.sendall(b"x")
        s.shutdown(socket.SHUT_WR)
        if s.recv(1):
            raise RuntimeError(f"probe: the sink path (port {bulk_port}) sent bytes back")


# ---------------------------------------------------------------------------------------------
# measurements

def bench(mode, target, duration, extra, tmp):
    path = os.path.join(tmp, "run.json")
    if os.path.exists(path):
        os.unlink(path)
    cmd = ["taskset", "-c", LOAD_CPU, Bins.bench, mode, "--target", f"127.0.0.1:{target}",
           "--duration", str(duration), "-q", "--json", path] + [str(x) for x in extra]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60,
                         stdin=subprocess.DEVNULL)
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, ValueError):
        raise RuntimeError(f"{mode}: no report (exit {out.returncode}): "
                           f"{out.stderr.strip()[-500:]}") from None
    err = None
    if out.returncode != 0 or report["errors_total"]:
        counts = {k: v for k, v in report["errors"].items() if v}
        err = (f"{mode}: {report['errors_total']} errors {counts} (exit {out.returncode}): "
               f"{report['error_samples'][:2]}")
    return report, err


def measure(mode, target, duration, extra, tmp, proxies):
    """One switchyard-bench run: (report, proxies' CPU-s over it, other processes' CPU/s,
    error text or None). Raises when there is no report or a proxy died."""
    foreign = Foreign()
    cpu0 = sum(tree_cpu_s(p.pid) for p in proxies)
    report, err = bench(mode, target, duration, extra, tmp)
    cpu = sum(tree_cpu_s(p.pid) for p in proxies) - cpu0
    for p in proxies:
        if p.poll() is not None:
            raise RuntimeError(f"a proxy exited during {mode} ({p.returncode})")
    return report, cpu, foreign.cpu_per_s(), err


def run_cell(pair, cpu, ports, env, args, tmp, started):
    """Start the pair (none for direct), run the four tests, stop it. Returns
    ({metric: value}, {test: other processes' CPU/s}, [errors], {metrics of erring runs})."""
    pid, proxy, kind = pair
    res, disturb, errors, flagged = {}, {}, [], set()

    def failed(err, keys):
        if err:
            errors.append(err)
            flagged.update(keys)
    procs = []
    try:
        if kind == "direct":
            bulk, rr = env["sink"], env["echo"]
        else:
            p = ports[pid]
            d = os.path.join(tmp, pid)
            dst = start_proxy(proxy, os.path.join(d, "destination.yaml"), cpu,
                              [p["dst_hbone"]] if kind == "hbone" else [p["dst_bulk"], p["dst_rr"]],
                              p["dst_admin"], os.path.join(d, "destination.log"), started)
            procs.append(dst)
            src = start_proxy(proxy, os.path.join(d, "source.yaml"), cpu,
                              [p["src_bulk"], p["src_rr"]], p["src_admin"],
                              os.path.join(d, "source.log"), started)
            procs.append(src)
            bulk, rr = p["src_bulk"], p["src_rr"]
        try:
            probe(bulk, rr)
        except (RuntimeError, OSError) as e:
            logs = "; ".join(f"{n}.log: {tail(os.path.join(tmp, pid, n + '.log'), 300) or '-'}"
                             for n in ("source", "destination")) if procs else ""
            raise RuntimeError(f"{e} ({logs})" if logs else str(e)) from None
        for conns in (1, 8):
            key = f"bulk{conns}"
            try:
                report, cpu_s, disturb[key], err = measure(
                    "throughput", bulk, args.duration,
                    ["--conns", conns, "--direction", "up"], tmp, procs)
                failed(err, (key, f"{key}_cpu_gb"))
                r = report["results"]
                res[key] = r["gbit_s"]
                if procs and r["bytes_sent"]:
                    res[f"{key}_cpu_gb"] = cpu_s / (r["bytes_sent"] / 1e9)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                errors.append(f"{key}: {e}")
        try:
            report, _, disturb["rr"], err = measure("rr", rr, args.duration,
                                                    ["--conns", 1, "--msg", 64], tmp, procs)
            failed(err, ("rr_rate", "rr_p50", "rr_p99"))
            lat = report["latency_us"]
            res["rr_rate"] = report["results"]["requests_per_s"]
            res["rr_p50"], res["rr_p99"] = lat["p50_us"], lat["p99_us"]
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            errors.append(f"rr: {e}")
        try:
            report, cpu_s, disturb["cps"], err = measure(
                "cps", rr, args.duration,
                ["--concurrency", args.cps_conc, "--msg", 64, "--close", args.cps_close],
                tmp, procs)
            failed(err, ("cps", "cps_cpu_us"))
            r = report["results"]
            res["cps"] = r["connections_per_s"]
            if procs and r["connections"]:
                res["cps_cpu_us"] = cpu_s * 1e6 / r["connections"]
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            errors.append(f"cps: {e}")
    except (RuntimeError, OSError) as e:
        errors.append(f"start: {e}")
    finally:
        for p in reversed(procs):  # the source first, then the destination
            stop(p)
    return res, disturb, errors, flagged


# ---------------------------------------------------------------------------------------------
# output

def fmt(values, unit):
    if not values:
        return None
    med, lo, hi = statistics.median(values), min(values), max(values)
    if unit in ("req/s", "per s"):
        one = lambda v: f"{v / 1000:.1f}"
        med_s, range_s = one(med) + "k", f" ({one(lo)}-{one(hi)}k)"
    else:
        digits = {"Gbit/s": 2, "CPU-s/GB": 2}.get(unit, 0)
        med_s, range_s = f"{med:.{digits}f}", f" ({lo:.{digits}f}-{hi:.{digits}f})"
    return med_s + (range_s if len(values) > 1 else "")


def which(cmd):
    """What `cmd` prints (ci/envoy-bin: the real Envoy binary), or None if it fails."""
    out = subprocess.run(cmd, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def first_line(cmd):
    try:
        o = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return (o.stdout + o.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("--quick", action="store_true", help="1 repetition of 2 s (checking)")
    ap.add_argument("--reps", type=int, help="repetitions (default 3; --quick 1)")
    ap.add_argument("--duration", type=float, help="seconds per test (default 5; --quick 2)")
    ap.add_argument("--pairs", default=",".join(p[0] for p in PAIRS),
                    help="comma list of columns (default all): "
                         + ", ".join(p[0] for p in PAIRS))
    ap.add_argument("--placements", default="shared,split")
    ap.add_argument("--cps-conc", type=int, default=8,
                    help="concurrent connectors of the new-streams test (default 8)")
    ap.add_argument("--cps-close", choices=["fin", "rst"], default="fin",
                    help="how the new-streams test closes (default fin; see above)")
    ap.add_argument("--port-base", type=int, default=16700)
    ap.add_argument("--switchyard-bin", help="default target/release/switchyard")
    ap.add_argument("--bench-bin", help="default target/release/switchyard-bench")
    ap.add_argument("--envoy", help="the Envoy binary (default: ci/envoy-bin's answer)")
    ap.add_argument("--switchyard-args", default="", metavar="FLAGS",
                    help="extra flags for every `switchyard run` (e.g. --placement own)")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--no-spinners", action="store_true")
    ap.add_argument("--json", help="write every sample here")
    args = ap.parse_args()
    args.reps = args.reps or (1 if args.quick else 3)
    args.duration = args.duration or (2 if args.quick else 5)
    if args.duration == int(args.duration):
        args.duration = int(args.duration)
    wanted = [x.strip() for x in args.pairs.split(",") if x.strip()]
    unknown = set(wanted) - {p[0] for p in PAIRS}
    if unknown:
        ap.error(f"--pairs: unknown {sorted(unknown)}")
    pairs = [p for p in PAIRS if p[0] in wanted]
    placements = [x for x in args.placements.split(",") if x in PLACEMENTS]
    if len(os.sched_getaffinity(0) & {0, 1}) < 2 and "split" in placements:
        placements.remove("split")
        log("bench-hbone: CPUs 0 and 1 are not both usable: the split placement is skipped")
    if not placements:
        ap.error("--placements: none of shared, split")
    # SIGTERM unwinds like ^C, so the processes started below are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    sy_bin = args.switchyard_bin or os.path.join(ROOT, "target/release/switchyard")
    bench_bin = args.bench_bin or os.path.join(ROOT, "target/release/switchyard-bench")
    if not args.no_build and not (args.switchyard_bin and args.bench_bin):
        log("bench-hbone: cargo build --release -p switchyard -p switchyard-bench")
        subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "switchyard",
                        "-p", "switchyard-bench"], cwd=ROOT, check=True)
    if not os.access(bench_bin, os.X_OK):
        sys.exit(f"bench-hbone: {bench_bin} missing (build it, or --bench-bin)")
    envoy = args.envoy or which([os.path.join(ROOT, "ci/envoy-bin")])

    tmp = tempfile.mkdtemp(prefix="bench-hbone.")
    # Run copies: others may rebuild target/release while this runs, and every cell must run
    # the same binaries.
    os.makedirs(os.path.join(tmp, "bin"))
    Bins.bench = shutil.copy2(bench_bin, os.path.join(tmp, "bin"))
    if os.access(sy_bin, os.X_OK):
        Bins.switchyard = shutil.copy2(sy_bin, os.path.join(tmp, "bin"))
    Bins.envoy = envoy
    Bins.switchyard_args = shlex.split(args.switchyard_args)

    b = args.port_base
    env = {"sink": b, "echo": b + 1}
    ports = {}
    for i, (pid, _, _) in enumerate(PAIRS):
        base = b + 10 * (i + 1)
        ports[pid] = dict(src_admin=base, src_bulk=base + 1, src_rr=base + 2,
                          dst_admin=base + 3, dst_hbone=base + 4, dst_bulk=base + 5,
                          dst_rr=base + 6)

    # Which pairs can run: configs written, Switchyard's validated, binaries present.
    skipped = {}
    for pid, proxy, kind in pairs:
        if kind == "direct":
            continue
        d = os.path.join(tmp, pid)
        os.makedirs(d)
        src, dst = configs(kind, ports[pid], env["sink"], env["echo"])
        for name, text in (("source.yaml", src), ("destination.yaml", dst)):
            with open(os.path.join(d, name), "w") as f:
                f.write(text)
        if proxy == "envoy" and not (envoy and os.access(envoy, os.X_OK)):
            skipped[pid] = "no Envoy binary (ci/install-deps, or --envoy)"
        elif proxy == "switchyard" and not Bins.switchyard:
            skipped[pid] = f"{sy_bin} missing"
        elif proxy == "switchyard":
            for name in ("destination.yaml", "source.yaml"):
                out = subprocess.run([Bins.switchyard, "validate", "-c", os.path.join(d, name)],
                                     capture_output=True, text=True, timeout=60)
                if out.returncode != 0:
                    why = " ".join((out.stdout + out.stderr).split())[:400]
                    skipped[pid] = f"`switchyard validate` refuses its {name}: {why}"
                    break
    for pid, why in skipped.items():
        log(f"bench-hbone: {pid}: skipped: {why}")
    runnable = [p for p in pairs if p[0] not in skipped]
    busy = [x for x in [env["sink"], env["echo"]]
            + [v for p in runnable if p[2] != "direct" for v in ports[p[0]].values()]
            if not port_free(x)]
    if busy:
        sys.exit(f"bench-hbone: ports in use: {busy} (pick another --port-base)")

    meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": " ".join(sys.argv),
            "reps": args.reps, "duration_s": args.duration, "cps_concurrency": args.cps_conc,
            "cps_close": args.cps_close,
            "placements": {p: PLACEMENT_TEXT[p] for p in placements},
            "spinners": not args.no_spinners, "switchyard_args": args.switchyard_args,
            "switchyard": f"{sy_bin} ({first_line([sy_bin, '--version'])}, built "
                          f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(os.path.getmtime(sy_bin)))})"
                          if os.path.exists(sy_bin) else None,
            "envoy": first_line([envoy, "--version"]).split("version: ")[-1] if envoy else None,
            "skipped": skipped, "loadavg_before": os.getloadavg()[0]}
    samples = {}  # (placement, pair, key) -> [values]
    flagged = set()  # (placement, pair, key) with a value from a run that counted errors
    disturbed = []  # "placement/pair/rep/test: CPU/s"
    errors = []
    n_meas = 0
    started = []
    t0 = time.monotonic()
    try:
        cpus = sorted({LOAD_CPU, *[PLACEMENTS[p] for p in placements]})
        if not args.no_spinners:
            for cpu in cpus:
                started.append(subprocess.Popen(
                    ["taskset", "-c", cpu, "chrt", "--idle", "0", "sh", "-c",
                     "while :; do :; done"], stdin=subprocess.DEVNULL))
        backend = subprocess.Popen(
            ["taskset", "-c", LOAD_CPU, Bins.bench, "serve", "--sink",
             f"127.0.0.1:{env['sink']}", "--echo", f"127.0.0.1:{env['echo']}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(backend)
        deadline = time.monotonic() + 10
        while not (port_listening(env["sink"]) and port_listening(env["echo"])):
            if backend.poll() is not None or time.monotonic() > deadline:
                sys.exit("bench-hbone: switchyard-bench serve did not start")
            time.sleep(0.05)
        log(f"bench-hbone: {args.reps} rep(s) of {args.duration} s, placements {placements}, "
            f"pairs {[p[0] for p in runnable]}; load average {os.getloadavg()[0]:.2f}")
        for rep in range(args.reps):
            k = rep % len(runnable) if runnable else 0
            order = runnable[k:] + runnable[:k]
            for placement in placements:
                for pair in order:
                    res, dist, errs, bad = run_cell(pair, PLACEMENTS[placement], ports, env,
                                                    args, tmp, started)
                    flagged.update((placement, pair[0], k) for k in bad)
                    for key, v in res.items():
                        samples.setdefault((placement, pair[0], key), []).append(v)
                    n_meas += len(dist)
                    for test, c in dist.items():
                        if c > DISTURB_CPU:
                            disturbed.append(f"{placement}/{pair[0]}/rep{rep + 1}/{test}: "
                                             f"{c:.2f}")
                    for e in errs:
                        errors.append(f"{placement}/{pair[0]}/rep{rep + 1}: {e}")
                        log(f"bench-hbone: {placement} {pair[0]}: {e}")
                    log(f"rep {rep + 1}/{args.reps} {placement:6} {pair[0]:16} "
                        + " ".join(f"{key}={v:.2f}" for key, v in res.items()))
            if backend.poll() is not None:
                raise RuntimeError(f"switchyard-bench serve exited ({backend.returncode})")
    finally:
        for p in reversed(started):
            stop(p)
        shutil.rmtree(tmp, ignore_errors=True)

    meta.update(loadavg_after=os.getloadavg()[0], wall_s=round(time.monotonic() - t0),
                disturbed=disturbed, errors=errors)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta,
                       "samples": [{"placement": p, "pair": c, "metric": k, "values": v,
                                    "with_errors": (p, c, k) in flagged}
                                   for (p, c, k), v in samples.items()]}, f, indent=1)
    cols = [p[0] for p in pairs]
    print(f"\n{args.reps} interleaved run(s) of {args.duration} s per test; median (min-max); "
          f"every proxy `--concurrency 1`; new streams: cps, {args.cps_conc} concurrent, 64 B, "
          f"{args.cps_close.upper()} close; load average before: {meta['loadavg_before']:.2f}, "
          f"after: {meta['loadavg_after']:.2f} (with our spinners; other work on the machine "
          "skews every figure).")
    for p in placements:
        print(f"- {PLACEMENT_TEXT[p]}")
    print(f"- spinners (SCHED_IDLE) on CPUs {','.join(cpus)}: {'yes' if not args.no_spinners else 'no'}; "
          f"Switchyard: {meta['switchyard']}{' ' + args.switchyard_args if args.switchyard_args else ''}; "
          f"Envoy {meta['envoy']}")
    print()
    print("| placement | test | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for placement in placements:
        for name, unit, key in TESTS:
            cells = []
            for c in cols:
                if c in skipped:
                    cells.append("skipped")
                    continue
                v = fmt(samples.get((placement, c, key)), unit)
                if v and (placement, c, key) in flagged:
                    v += " !"
                cells.append(v if v else "n/a" if c == "direct" and "cpu" in key else "error")
            print(f"| {placement} | {name} ({unit}) | " + " | ".join(cells) + " |")
    print()
    for pid, why in skipped.items():
        print(f"- {pid}: skipped: {why}")
    print(f"- measurements disturbed by other processes (> {DISTURB_CPU} CPU/s): "
          f"{len(disturbed)} of {n_meas}" + (f" ({'; '.join(disturbed[:8])})" if disturbed else ""))
    if errors:
        print((f"- `!`: a run behind the figure counted errors. " if flagged else "- ")
              + f"Errors: {len(errors)}: " + "; ".join(errors[:5]))
        sys.exit(1)


if __name__ == "__main__":
    main()
