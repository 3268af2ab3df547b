#!/usr/bin/env python3
"""Side by side: direct (the limit) vs Switchyard vs nginx stream vs HAProxy vs Envoy.

Plus the floor: `switchyard-bench forward`, a blocking read/write thread per direction, the
least work a user-space hop can do. What it adds over direct is the kernel's share of any
proxy (extra sockets, copies, wake-ups); what a proxy adds over it is the proxy's own. It runs
S1-S3 only (it spawns threads per connection, so S4/S5 would not measure a floor; it relays
plain TCP only, so no S7 or S8).

Loopback (127.0.0.1 only), each proxy with exactly one worker, two placements:
  shared  load generator, backends and proxy all on CPU 0 (`taskset -c 0`): the proxy's CPU cost
  split   load generator and backends on CPU 0, the proxy alone on CPU 1
A SCHED_IDLE spinner (`chrt --idle 0`, a busy loop) runs on each CPU for the whole run, so an
idle vCPU never halts and a cross-vCPU wake-up costs the same for every contender
(shared/notes/performance.md). Load: `switchyard-bench` (bench/README.md), backends
`switchyard-bench serve --echo --sink`.

Scenarios (full run; --quick runs a subset, once, shorter):
  S1 bulk            throughput --direction up (to the sink), 1 and 4 connections: Gbit/s
  S2 latency         rr, 1 connection, 64 B and 4 KiB, closed loop; and open loop (64 conns)
                     at 25/50/75% of direct's closed-loop maximum with 64 conns (per placement)
  S3 rr throughput   rr closed loop, 64 B, 64 and 256 connections: req/s and req per proxy CPU-s
  S4 connections/s   cps, 64 B exchange, RST close, 1, 8 and 32 concurrent connectors
  S5 idle memory     idle --conns 1000 / 5000: proxy RSS delta / N, on a fresh proxy each time
  S6 routing         cps, 8 concurrent, through a 90/10 split over two clusters (Envoy's
                     weighted_clusters; nginx split_clients; HAProxy rand() use_backend) and
                     through a source-IP hash over 4 endpoints (MAGLEV; nginx and HAProxy:
                     their consistent hash, ketama); direct: straight to the echo backend
  S7 udp             udp, 8 sessions (client ports), 64 B and 1,400 B datagrams at fixed rates
                     (--udp-rates, default 4,000 and 20,000/s; direct carries both without loss
                     on 2 vCPUs) to `serve --udp-echo`: echoed datagrams/s, loss %, p50/p99
                     round trip (from each datagram's actual send), proxy CPU-s per million
                     round trips; 4,000/s for a lightly loaded proxy's latency, 20,000/s for
                     loss and CPU per datagram. Each UDP proxy runs from its own peer
                     config (bench/peers/*-udp.*), started after the TCP one in the same cell:
                     Switchyard, nginx (stream `listen ... udp`), Envoy (udp_proxy). HAProxy
                     has no UDP proxying: n/a. Every proxy's UDP listener socket has 4 MiB
                     buffers (Switchyard by default; nginx rcvbuf/sndbuf; Envoy socket_options).
  S8 tls             TLS termination, plaintext to the same sink and echo: for an ECDSA P-256
                     and an RSA-2048 certificate (tests/certs), bulk up 1 and 4 connections
                     (Gbit/s, proxy CPU-s per GB), rr 64 B with 64 connections (S3's count;
                     req/s, req per proxy CPU-s), and cps 8 concurrent with full handshakes and
                     with resumed ones (handshakes/s, proxy CPU-ms per handshake, handshakes per
                     proxy CPU-s, share resumed). Client: `switchyard-bench --tls` (TLS 1.3,
                     TLS_AES_128_GCM_SHA256, X25519 only, so every contender negotiates the
                     same; `--tls-resume` for the resumed rows, none offered for the full ones).
                     A full row with any resumed handshake, or a resumed row with under 90%
                     resumed, counts as an error. Each proxy runs from its TLS peer config
                     (bench/peers/*-tls.*) after its TCP one in the same cell; direct is
                     `switchyard-bench serve --tls-cert --tls-key` (rustls on CPU 0: the floor
                     of the TLS cost). The floor: n/a (it relays plain TCP only).
  S9 proxy protocol  the client sends a PROXY protocol v2 header first on every connection
                     (`switchyard-bench --proxy-protocol v2`, as a load balancer in front would)
                     to a listener that reads it (Switchyard and Envoy: the proxy_protocol
                     listener filter; nginx: `listen ... proxy_protocol`; HAProxy: `bind ...
                     accept-proxy`), relayed to the echo: cps 8 concurrent and rr 64 B with 64
                     connections (S3's count). Direct: the same loads to the echo without a
                     header (the limit). The floor: n/a (it reads no header).
  S10 rbac           cps 8 concurrent through an allow list of 1, 100 and 10,000 entries, each
                     one client address, the loopback's (the client's) last in the order the
                     proxy reads them (Switchyard and Envoy: the network RBAC filter, ALLOW, one
                     `remote_ip` policy each, loopback's named last; HAProxy: `tcp-request
                     connection reject unless { src -f list }`; nginx: `allow` lines then `deny
                     all`). Direct: the echo without a list (the limit). The floor: n/a.
  S11 sni routing    cps 8 concurrent of TLS clients (`--tls --tls-sni backend.example.com`,
                     full handshakes) through a listener that routes by the ClientHello's SNI
                     among 10,000 names, without terminating TLS, to the TLS echo (S8's ECDSA
                     `serve --tls-cert`; the other 9,999 names lead elsewhere). Switchyard and
                     Envoy: a tls_inspector and 10,000 filter chains, one server name each, the
                     client's last; HAProxy: `req.ssl_sni` through a map of 10,000 names;
                     nginx: `ssl_preread` and a map of 10,000 names. Direct: the TLS echo. The
                     floor: n/a.

Hygiene: contenders interleaved (order rotated each repetition); before each cell (one
contender x placement x repetition) the machine must be idle (/proc/stat idle > 90% over 1 s,
our spinners' time counted as idle), else it waits (up to --max-wait) and records it; during
each measurement the CPU time of processes that are not ours is measured, and a measurement
disturbed by more than --disturb-cpu CPU-seconds per second is re-run (up to 2 times).
Proxy CPU is utime+stime of the proxy's process tree (/proc/PID/stat), RSS is VmRSS.

    ci/bench-compare.py [--quick] [--reps N] [--no-build] [--no-install] [--port-base 16100]
                     [--only switchyard,nginx] [--placements shared,split] [--out bench/results]
                     [--scenarios S1,S8 | --scenario tls] [--udp-rates 4000,20000] [--counters]

--counters adds, for rr and cps cells, what each request (or connection) costs the proxy:
system calls and context switches of all its threads (`perf stat -e raw_syscalls:sys_enter,
context-switches`, attached for the measurement), and for Switchyard io_uring_enter calls
(`server.worker_loops`) and completions per enter (`server.worker_completions`).

S7 alone (HAProxy and the floor have no UDP cell, so leave them out):
    ci/bench-compare.py --quick --no-install --only switchyard,nginx,envoy --scenario udp

Writes bench/results/<date>-<mode>.{json,md,png} (the chart only when S1 or S2 ran). Exit 1 if
any run reported errors (or a contender could not start), 0 otherwise. Every process it starts
is stopped by its PID, also on Ctrl-C / SIGTERM; its temporary directory is removed at the end.
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROXY = os.path.join(ROOT, "target/release/switchyard")
BENCH = os.path.join(ROOT, "target/release/switchyard-bench")
PEERS = os.path.join(ROOT, "bench/peers")
VENV_PLOT = os.path.join(ROOT, ".venv-bench")
CONTENDERS = ["direct", "floor", "switchyard", "nginx", "haproxy", "envoy"]
PROXIES = CONTENDERS[1:]
# The floor (`switchyard-bench forward`: a blocking thread per direction) is a reference for
# what any user-space hop costs, not a proxy: it spawns threads per connection, so the
# connect-heavy (S4) and idle-memory (S5) scenarios would measure that, not a floor.
FLOOR_SKIPS = ("S4", "S5", "S6", "S7", "S8", "S9", "S10", "S11")
# S7 (UDP): who cannot take part, and why (recorded in each cell and shown as n/a).
UDP_NA = {"floor": "switchyard-bench forward relays TCP only",
          "haproxy": "HAProxy has no UDP proxying"}
UDP_CONFIGS = {"switchyard": "switchyard-udp.yaml", "nginx": "nginx-udp.conf",
               "envoy": "envoy-udp.yaml"}
SCENARIOS = {"S1": "bulk", "S2": "latency", "S3": "rr", "S4": "cps", "S5": "idle",
             "S6": "routing", "S7": "udp", "S8": "tls", "S9": "proxy", "S10": "rbac",
             "S11": "sni"}
# S11: the server names routed by SNI; the client's (a name of tests/certs/server.pem) last.
SNI_NAMES = 10000
SNI_CLIENT_NAME = "backend.example.com"
# S10: the allow lists' sizes, each with a listener of its own in every peer config.
RBAC_SIZES = (1, 100, 10000)
# S8 (TLS termination): each proxy's TLS peer config, who cannot take part, the certificates
# (tests/certs: ECDSA P-256 and RSA-2048 leaves for localhost/127.0.0.1, signed by ca.pem) and
# the per-contender port of each listener.
TLS_CONFIGS = {"switchyard": "switchyard-tls.yaml", "nginx": "nginx-tls.conf",
               "haproxy": "haproxy-tls.cfg", "envoy": "envoy-tls.yaml"}
TLS_NA = {"floor": "switchyard-bench forward relays plain TCP only"}
CERTS_DIR = os.path.join(ROOT, "tests/certs")
TLS_CERTS = {"ECDSA": ("EC", "server"), "RSA": ("RSA", "server-rsa")}  # name: (key, file stem)
TLS_CA = os.path.join(CERTS_DIR, "ca.pem")
# A resumed row below this share of resumed handshakes means the peer did not resume.
TLS_RESUMED_MIN_PCT = 90.0
COLOURS = {"direct": (119, 119, 119), "floor": (188, 189, 34), "switchyard": (214, 39, 40),
           "nginx": (44, 160, 44), "haproxy": (31, 119, 180), "envoy": (148, 103, 189)}
PLACEMENTS = {"shared": "0", "split": "1"}  # the proxy's CPU; load and backends on CPU 0
LOAD_CPU = "0"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PF_KTHREAD = 0x00200000

FULL = dict(reps=5, bulk_s=1.5, rr_s=1.0, cps_s=1.0, hold_s=1.0,
            s1_conns=[1, 4], s2_msgs=[64, 4096], open_msgs=[64], open_fracs=[25, 50, 75],
            open_conns=8, s3_conns=[64, 256], s4_conc=[1, 8, 32], s5_conns=[1000, 5000],
            udp_s=1.5, udp_sizes=[64, 1400], udp_sessions=8, udp_drain="500ms",
            tls_certs=["ECDSA", "RSA"], tls_bulk_conns=[1, 4], tls_rr_conns=64, tls_cps_conc=8)
QUICK = dict(reps=1, bulk_s=1.0, rr_s=0.6, cps_s=0.6, hold_s=0.5,
             s1_conns=[1, 4], s2_msgs=[64, 4096], open_msgs=[64], open_fracs=[50],
             open_conns=8, s3_conns=[64], s4_conc=[1, 32], s5_conns=[1000],
             udp_s=1.0, udp_sizes=[64, 1400], udp_sessions=8, udp_drain="500ms",
             tls_certs=["ECDSA", "RSA"], tls_bulk_conns=[1, 4], tls_rr_conns=64, tls_cps_conc=8)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# /proc helpers

def read_stat(pid):
    """(ppid, cpu ticks utime+stime, starttime, flags) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    rest = s[s.rindex(")") + 2:].split()
    # rest[0] is field 3 (state): ppid=4 flags=9 utime=14 stime=15 starttime=22
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
    """utime+stime (seconds) of a process and its descendants (nginx: master + worker)."""
    total = 0
    for pid in descendants(root):
        st = read_stat(pid)
        if st:
            total += st[1]
    return total / CLK_TCK


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kib(root):
    return sum(rss_kib(p) for p in descendants(root))


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
        wall = max(time.monotonic() - self.t0, 1e-3)
        return ticks / CLK_TCK / wall


def cpu_times():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return idle, sum(v[:8])


def idle_fraction(spinners, seconds=1.0):
    """/proc/stat idle share over `seconds`, counting our SCHED_IDLE spinners' time as idle."""
    spin0 = sum(read_stat(p.pid)[1] for p in spinners if read_stat(p.pid))
    i0, t0 = cpu_times()
    time.sleep(seconds)
    i1, t1 = cpu_times()
    spin1 = sum(read_stat(p.pid)[1] for p in spinners if read_stat(p.pid))
    total = max(t1 - t0, 1)
    return min(1.0, (i1 - i0 + spin1 - spin0) / total)


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


# ---------------------------------------------------------------------------------------------
# processes

class Procs:
    """Every process this script starts, stopped by PID (descendants too) at the end."""

    def __init__(self):
        self.live = []

    def start(self, cmd, **kw):
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                             stdout=kw.pop("stdout", subprocess.DEVNULL),
                             stderr=kw.pop("stderr", subprocess.DEVNULL), **kw)
        self.live.append(p)
        return p

    def stop(self, p, sig=signal.SIGTERM):
        if p is None:
            return
        kids = [d for d in descendants(p.pid) if d != p.pid] if p.poll() is None else []
        if p.poll() is None:
            try:
                os.kill(p.pid, sig)
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
            except ProcessLookupError:
                pass
        for k in kids:  # e.g. an nginx worker whose master died first
            st = read_stat(k)
            if st is not None:
                try:
                    os.kill(k, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if p in self.live:
            self.live.remove(p)

    def stop_all(self):
        for p in reversed(list(self.live)):
            try:
                self.stop(p)
            except Exception as e:  # keep stopping the others
                log(f"bench-compare: stopping {p.pid}: {e}")


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


def udp_bound(port):
    """A UDP socket bound to 127.0.0.1:port and not connected (a listener)."""
    want = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/udp") as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if parts[1] == want and parts[2] == "00000000:0000":
                    return True
    except OSError:
        pass
    return False


def port_free(port, kind=socket.SOCK_STREAM):
    s = socket.socket(socket.AF_INET, kind)
    if kind == socket.SOCK_STREAM:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no obstacle
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


class Exited(RuntimeError):
    """A process exited while we waited for it to get ready (e.g. it rejected its config)."""


def wait_until(cond, proc, what, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise Exited(f"{what} exited with status {proc.returncode}")
        if cond():
            return
        time.sleep(0.02)
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s")


def http_ok(port, path="/ready"):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# contenders

class Env:
    def __init__(self, args, tmp, procs):
        self.args, self.tmp, self.procs = args, tmp, procs
        b = args.port_base
        self.sink, self.echo = b, b + 1
        # S6's hash spreads over four echo backends (the first is `echo`).
        self.echos = [b + 1, b + 2, b + 3, b + 4]
        self.udp_echo = b + 5  # S7: `serve --udp-echo`
        self.ports = {}
        for i, name in enumerate(PROXIES):
            base = b + 20 * (i + 1)
            self.ports[name] = dict(BULK_PORT=base, RR_PORT=base + 1, ADMIN_PORT=base + 2,
                                    WEIGHTED_PORT=base + 3, HASH_PORT=base + 4,
                                    UDP_PORT=base + 5, TLS_EC_BULK_PORT=base + 6,
                                    TLS_EC_RR_PORT=base + 7, TLS_RSA_BULK_PORT=base + 8,
                                    TLS_RSA_RR_PORT=base + 9, PROXY_PORT=base + 10,
                                    SNI_PORT=base + 14,
                                    **{f"RBAC_{n}_PORT": base + 11 + i
                                       for i, n in enumerate(RBAC_SIZES)})
        # S8 direct: `serve --tls-*` (sink, echo) per certificate.
        self.tls_direct = {"ECDSA": (b + 6, b + 7), "RSA": (b + 8, b + 9)}
        self.envoy = None

    def all_ports(self):
        """TCP ports this run listens on."""
        out = [self.sink, *self.echos]
        for sink, echo in self.tls_direct.values():
            out += [sink, echo]
        for p in self.ports.values():
            out += [v for k, v in p.items() if k != "UDP_PORT"]
        return out

    def udp_ports(self):
        return [self.udp_echo] + [p["UDP_PORT"] for p in self.ports.values()]

    def udp_target(self, contender):
        """S7: the proxy's UDP listener; direct: the UDP echo."""
        if contender == "direct":
            return f"127.0.0.1:{self.udp_echo}"
        return f"127.0.0.1:{self.ports[contender]['UDP_PORT']}"

    def targets(self, contender):
        """(bulk address, rr address) to load."""
        if contender == "direct":
            return f"127.0.0.1:{self.sink}", f"127.0.0.1:{self.echo}"
        p = self.ports[contender]
        return f"127.0.0.1:{p['BULK_PORT']}", f"127.0.0.1:{p['RR_PORT']}"

    def tls_target(self, contender, cert, bulk):
        """S8: the TLS listener for `cert` (bulk: to the sink; else to the echo)."""
        if contender == "direct":
            sink, echo = self.tls_direct[cert]
            return f"127.0.0.1:{sink if bulk else echo}"
        key = f"TLS_{TLS_CERTS[cert][0]}_{'BULK' if bulk else 'RR'}_PORT"
        return f"127.0.0.1:{self.ports[contender][key]}"

    def tls_files(self, name):
        """Certificate and key paths for the TLS peer configs, and for HAProxy's `crt` one PEM
        with both (written into the contender's temporary directory)."""
        out = {}
        for key, stem in TLS_CERTS.values():
            cert, pkey = (os.path.join(CERTS_DIR, f"{stem}.{x}") for x in ("pem", "key"))
            both = os.path.join(self.tmp, name, f"{stem}-with-key.pem")
            with open(both, "w") as f, open(cert) as c, open(pkey) as k:
                f.write(c.read() + k.read())
            out.update({f"CERT_{key}": cert, f"KEY_{key}": pkey, f"CERT_KEY_{key}": both})
        return out

    def proxy_target(self, contender):
        """S9: the listener that reads a PROXY header; direct: the echo (no header)."""
        if contender == "direct":
            return f"127.0.0.1:{self.echo}"
        return f"127.0.0.1:{self.ports[contender]['PROXY_PORT']}"

    def rbac_target(self, contender, size):
        """S10: the listener behind an allow list of `size` entries; direct: the echo."""
        if contender == "direct":
            return f"127.0.0.1:{self.echo}"
        return f"127.0.0.1:{self.ports[contender][f'RBAC_{size}_PORT']}"

    def rbac_lists(self, tmp):
        """S10's allow lists for the peer configs: `size - 1` decoy client addresses
        (10.1.x.y) and the loopback last. Envoy's and Switchyard's RBAC policies as one YAML
        flow map (Envoy reads policies in name order: the loopback's, `zzzz-loopback`, is the
        last it tries); HAProxy's `src -f` files; nginx's `allow` files."""
        out = {}
        for size in RBAC_SIZES:
            decoys = [f"10.1.{i >> 8 & 255}.{i & 255}" for i in range(size - 1)]
            policy = ("{{ permissions: [{{ any: true }}], principals: [{{ remote_ip: "
                      "{{ address_prefix: {}, prefix_len: {} }} }}] }}")
            entries = [f'"p{i:05}": ' + policy.format(a, 32) for i, a in enumerate(decoys)]
            entries.append('"zzzz-loopback": ' + policy.format("127.0.0.0", 8))
            out[f"RBAC_POLICIES_{size}"] = "{ " + ", ".join(entries) + " }"
            hap = os.path.join(tmp, f"allow-{size}.lst")
            with open(hap, "w") as f:
                f.write("".join(f"{a}\n" for a in decoys) + "127.0.0.0/8\n")
            ngx = os.path.join(tmp, f"allow-{size}.nginx")
            with open(ngx, "w") as f:
                f.write("".join(f"allow {a};\n" for a in decoys)
                        + "allow 127.0.0.0/8;\ndeny all;\n")
            out[f"RBAC_LIST_{size}"] = hap
            out[f"RBAC_NGINX_{size}"] = ngx
        return out

    def sni_target(self, contender):
        """S11: the listener routing by SNI; direct: the TLS echo."""
        if contender == "direct":
            return f"127.0.0.1:{self.tls_direct['ECDSA'][1]}"
        return f"127.0.0.1:{self.ports[contender]['SNI_PORT']}"

    def sni_routes(self, tmp):
        """S11's routes: for Envoy and Switchyard, 10,000 filter chains (YAML, indented as
        `filter_chains` items), one server name each, the decoys to `echo`, the client's name
        (last) to `echo_tls`; HAProxy's and nginx's maps of the same names."""
        names = [f"svc-{i:05}.example.com" for i in range(SNI_NAMES - 1)] + [SNI_CLIENT_NAME]
        route = lambda n: "echo_tls" if n == SNI_CLIENT_NAME else "echo"
        tcp = ('"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.'
               'TcpProxy')
        chains = "".join(
            f"    - filter_chain_match: {{ server_names: [\"{n}\"] }}\n"
            f"      filters:\n"
            f"      - name: envoy.filters.network.tcp_proxy\n"
            f"        typed_config: {{ {tcp}, stat_prefix: sni, cluster: {route(n)} }}\n"
            for n in names)
        hap = os.path.join(tmp, "sni.map")
        with open(hap, "w") as f:
            f.write("".join(f"{n} {route(n)}\n" for n in names))
        ngx = os.path.join(tmp, "sni.nginx")
        with open(ngx, "w") as f:
            f.write("".join(f"{n} {route(n)};\n" for n in names))
        return {"SNI_CHAINS": chains.rstrip("\n"), "SNI_MAP": hap, "SNI_NGINX_MAP": ngx,
                "ECHO_TLS_PORT": self.tls_direct["ECDSA"][1]}

    def route_target(self, contender, route):
        """S6: the listener that splits (`weighted`) or hashes (`hash`); direct: the echo."""
        if contender == "direct":
            return f"127.0.0.1:{self.echo}"
        key = {"weighted": "WEIGHTED_PORT", "hash": "HASH_PORT"}[route]
        return f"127.0.0.1:{self.ports[contender][key]}"

    def render(self, name, fname):
        with open(os.path.join(PEERS, fname)) as f:
            text = f.read()
        vals = dict(self.ports[name], SINK_PORT=self.sink, ECHO_PORT=self.echo,
                    ECHO2_PORT=self.echos[1], ECHO3_PORT=self.echos[2],
                    ECHO4_PORT=self.echos[3], UDP_ECHO_PORT=self.udp_echo,
                    TMP=os.path.join(self.tmp, name))
        os.makedirs(vals["TMP"], exist_ok=True)
        vals.update(self.tls_files(name))
        vals.update(self.rbac_lists(vals["TMP"]))
        vals.update(self.sni_routes(vals["TMP"]))
        for k, v in vals.items():
            text = text.replace("{{" + k + "}}", str(v))
        if re.search(r"\{\{[A-Z_]+\}\}", text):
            raise RuntimeError(f"{fname}: unfilled placeholder")
        out = os.path.join(self.tmp, name, fname)
        with open(out, "w") as f:
            f.write(text)
        return out

    def start_proxy(self, name, cpu, udp=False, tls=False):
        """Start a contender pinned to `cpu`; returns its Popen once it accepts. With `udp`,
        from its UDP peer config (S7), ready once its UDP listener is bound; with `tls`, from
        its TLS peer config (S8), ready once its four TLS listeners accept."""
        d = os.path.join(self.tmp, name)
        ts = ["taskset", "-c", cpu]
        if udp and name not in UDP_CONFIGS:
            raise ValueError(f"{name}: no UDP config")
        if tls and name not in TLS_CONFIGS:
            raise ValueError(f"{name}: no TLS config")

        def config(plain):
            return self.render(name, TLS_CONFIGS[name] if tls else
                               UDP_CONFIGS[name] if udp else plain)
        if name == "floor":
            p = self.ports[name]
            cmd = ts + [BENCH, "forward",
                        "--listen", f"127.0.0.1:{p['BULK_PORT']}", "--target", f"127.0.0.1:{self.sink}",
                        "--listen", f"127.0.0.1:{p['RR_PORT']}", "--target", f"127.0.0.1:{self.echo}"]
            os.makedirs(d, exist_ok=True)
        elif name == "switchyard":
            cfg = config("switchyard.yaml")
            cmd = ts + [PROXY, "run", "-c", cfg, "--concurrency", "1", "--drain-time-s", "0",
                        "-l", "warn"] + shlex.split(self.args.switchyard_args)
        elif name == "nginx":
            cfg = config("nginx.conf")
            cmd = ts + ["nginx", "-p", d + "/", "-c", cfg, "-e", os.path.join(d, "error.log")]
        elif name == "haproxy":
            cfg = config("haproxy.cfg")
            cmd = ts + ["haproxy", "-db", "-f", cfg]
        elif name == "envoy":
            cfg = config("envoy.yaml")
            cmd = ts + [self.envoy, "-c", cfg, "--concurrency", "1", "--disable-hot-restart",
                        "--log-level", "warn"]
        else:
            raise ValueError(name)
        err = open(os.path.join(d, "stderr.log"), "ab")
        p = self.procs.start(cmd, stderr=err, stdout=err)
        err.close()
        ports = self.ports[name]
        what = f"{name} (UDP config)" if udp else f"{name} (TLS config)" if tls else name
        try:
            if udp:
                wait_until(lambda: udp_bound(ports["UDP_PORT"]), p, what)
            elif tls:
                wait_until(lambda: all(port_listening(v) for k, v in ports.items()
                                       if k.startswith("TLS_")), p, what)
            else:
                wait_until(lambda: port_listening(ports["BULK_PORT"])
                           and port_listening(ports["RR_PORT"]), p, what)
            if name in ("switchyard", "envoy"):
                wait_until(lambda: http_ok(ports["ADMIN_PORT"]), p, what)
        except RuntimeError as e:
            self.procs.stop(p)
            with open(os.path.join(d, "stderr.log"), errors="replace") as f:
                tail = f.read()[-2000:]
            raise type(e)(f"{e}\n{tail}") from None
        return p


# ---------------------------------------------------------------------------------------------
# counters (--counters): what each request costs the proxy in system calls and wake-ups

PERF_EVENTS = "raw_syscalls:sys_enter,context-switches,cpu-migrations"


class Counters:
    """`perf stat` attached to the proxy (all its threads) for one measurement, and for
    Switchyard its own loop counters from the admin: system calls, context switches (each one
    a sleep and a wake-up of a proxy thread), io_uring_enter calls and completions."""

    def __init__(self, pid, admin_port):
        self.admin_port = admin_port
        self.before = switchyard_loop_stats(admin_port) if admin_port else None
        self.out = tempfile.NamedTemporaryFile(prefix="perf-", suffix=".csv", delete=False)
        self.perf = subprocess.Popen(
            ["perf", "stat", "-x", ",", "-e", PERF_EVENTS, "-p", str(pid), "-o", self.out.name],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def finish(self):
        """Totals over the measurement: {event: count}."""
        self.perf.send_signal(signal.SIGINT)
        try:
            self.perf.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.perf.kill()
            self.perf.wait()
        totals = {}
        with open(self.out.name) as f:
            for line in f:
                parts = line.strip().split(",")
                if len(parts) > 2 and parts[0].replace(".", "").isdigit():
                    totals[parts[2]] = float(parts[0])
        os.unlink(self.out.name)
        if self.before is not None:
            after = switchyard_loop_stats(self.admin_port)
            for k, v in after.items():
                totals[k] = v - self.before.get(k, 0)
        return totals


def switchyard_loop_stats(port):
    """server.worker_loops and server.worker_completions from Switchyard's admin."""
    out = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats?filter=^server.worker_",
                                timeout=2) as r:
        for line in r.read().decode().splitlines():
            name, _, value = line.partition(": ")
            if name in ("server.worker_loops", "server.worker_completions"):
                out[name] = int(value)
    return out


def per_unit(totals, units):
    """Counters per request (rr) or per connection (cps)."""
    if not units:
        return {}
    out = {}
    for event, key in (("raw_syscalls:sys_enter", "syscalls_per"),
                       ("context-switches", "cswitch_per"),
                       ("server.worker_loops", "enters_per")):
        if event in totals:
            out[key] = totals[event] / units
    loops = totals.get("server.worker_loops")
    if loops:
        out["completions_per_enter"] = totals.get("server.worker_completions", 0) / loops
    return out


# ---------------------------------------------------------------------------------------------
# one measurement

def bench(args, tmp, mode, target, extra, timeout):
    path = os.path.join(tmp, "run.json")
    if os.path.exists(path):
        os.unlink(path)
    cmd = ["taskset", "-c", LOAD_CPU, BENCH, mode, "--target", target, "--json", path]
    if mode != "udp":  # udp has no -q (its progress line goes to stderr, which we keep)
        cmd.append("-q")
    cmd += [str(x) for x in extra]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL)
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, ValueError):
        report = None
    return out.returncode, report, out.stderr[-1000:]


def measure(ctx, cell, spec, proxy, fresh=None):
    """Run one measurement; re-run it (up to twice) if foreign CPU disturbed it. With `fresh`
    (S5), every attempt gets a newly started proxy: fresh() -> Popen, stopped afterwards."""
    attempts = []
    for attempt in range(3):
        if attempt:
            wait_idle(ctx, f"re-run {cell['contender']} {spec['id']}")
        if fresh:
            proxy = fresh()
            try:
                m = measure_once(ctx, cell, spec, proxy)
            finally:
                ctx.env.procs.stop(proxy)
        else:
            m = measure_once(ctx, cell, spec, proxy)
        attempts.append({k: m[k] for k in ("foreign_cpu_per_s", "loadavg")})
        if m["foreign_cpu_per_s"] <= ctx.args.disturb_cpu:
            break
        if ctx.wait_total >= ctx.args.wait_budget:
            log(f"    disturbed ({m['foreign_cpu_per_s']:.2f} CPU by other processes) during "
                f"{spec['id']}; waiting budget spent, kept as disturbed")
            break
        log(f"    disturbed: other processes used {m['foreign_cpu_per_s']:.2f} CPU during "
            f"{spec['id']}; re-running")
    m["attempts"] = len(attempts)
    m["disturbed"] = m["foreign_cpu_per_s"] > ctx.args.disturb_cpu
    if len(attempts) > 1:
        m["earlier_attempts"] = attempts[:-1]
    return m


def measure_once(ctx, cell, spec, proxy):
    bulk, rr = ctx.env.targets(cell["contender"])
    target = bulk if spec["mode"] == "throughput" else rr
    if spec.get("route"):
        target = ctx.env.route_target(cell["contender"], spec["route"])
    if spec.get("tls_cert"):
        target = ctx.env.tls_target(cell["contender"], spec["tls_cert"],
                                    spec["mode"] == "throughput")
    if spec["mode"] == "udp":
        target = ctx.env.udp_target(cell["contender"])
    extra = spec["extra"]
    if spec["scenario"] == "S11":
        target = ctx.env.sni_target(cell["contender"])
    if spec["scenario"] == "S10":
        target = ctx.env.rbac_target(cell["contender"], spec["rbac_size"])
    if spec["scenario"] == "S9":
        target = ctx.env.proxy_target(cell["contender"])
        if cell["contender"] != "direct":
            extra = extra + ["--proxy-protocol", "v2"]
    pid = proxy.pid if proxy else None
    cpu0 = tree_cpu_s(pid) if pid else None
    rss0 = tree_rss_kib(pid) if pid else None
    peak = [rss0 or 0]
    stop_poll = threading.Event()

    def poll_rss():
        while not stop_poll.wait(0.02):
            peak[0] = max(peak[0], tree_rss_kib(pid))

    poller = None
    if pid and spec["mode"] == "idle":
        poller = threading.Thread(target=poll_rss, daemon=True)
        poller.start()
    counters = None
    if pid and ctx.args.counters and spec["mode"] in ("rr", "cps"):
        admin = ctx.env.ports["switchyard"]["ADMIN_PORT"] if cell["contender"] == "switchyard" else None
        counters = Counters(pid, admin)
    foreign = Foreign()
    t0 = time.monotonic()
    rc, report, stderr = bench(ctx.args, ctx.tmp, spec["mode"], target, extra,
                               spec["timeout"])
    wall = time.monotonic() - t0
    totals = counters.finish() if counters else None
    fcpu = foreign.cpu_per_s()
    if poller:
        stop_poll.set()
        poller.join()
    m = {"id": spec["id"], "scenario": spec["scenario"], "mode": spec["mode"],
         "target": target, "args": [str(x) for x in extra], "rc": rc,
         "wall_s": round(wall, 3), "foreign_cpu_per_s": round(fcpu, 3),
         "loadavg": loadavg(), "report": report}
    if stderr and rc != 0:
        m["stderr_tail"] = stderr
    if pid:
        m["proxy_cpu_s"] = round(tree_cpu_s(pid) - cpu0, 3)
        m["proxy_rss_kib_before"] = rss0
        m["proxy_rss_kib_after"] = tree_rss_kib(pid)
        if spec["mode"] == "idle":
            m["proxy_rss_kib_peak"] = peak[0]
    errs = report["errors_total"] if report else None
    m["errors_total"] = errs
    m["ok"] = rc == 0 and report is not None and errs == 0
    m["metrics"] = metrics_of(spec, m) if report else {}
    if report and "expect_resumed" in spec:
        check_resumption(spec, m)
    if totals is not None and report:
        m["counters"] = totals
        r = report["results"]
        units = r.get("requests") if spec["mode"] == "rr" else r.get("connections")
        m["metrics"].update(per_unit(totals, units))
    return m


def check_resumption(spec, m):
    """S8 cps: a full-handshake row must have no resumed handshake, a resumed row at least
    TLS_RESUMED_MIN_PCT; otherwise the measurement is not what its row says: an error."""
    pct = m["metrics"].get("resumed_pct")
    if pct is None:
        bad = "the report has no TLS resumption count"
    elif spec["expect_resumed"] and pct < TLS_RESUMED_MIN_PCT:
        bad = f"only {pct:.1f}% of handshakes resumed (asked for resumption)"
    elif not spec["expect_resumed"] and pct > 0:
        bad = f"{pct:.1f}% of handshakes resumed (asked for full handshakes)"
    else:
        return
    m["ok"] = False
    m["tls_check"] = bad
    log(f"    {m['id']}: {bad}")


def metrics_of(spec, m):
    r, lat = m["report"]["results"], m["report"]["latency_us"]
    cpu = m.get("proxy_cpu_s")
    out = {}
    if spec["mode"] == "throughput":
        out["gbit_s"] = r["gbit_s"]
        if cpu is not None and r["bytes_sent"]:
            out["cpu_s_per_gb"] = cpu / (r["bytes_sent"] / 1e9)
    elif spec["mode"] == "rr":
        out["rps"] = r["requests_per_s"]
        for k in ("p50", "p90", "p99", "p999"):
            out[k] = lat[f"{k}_us"]
        out["unsent"] = r["requests_unsent"]
        if cpu:
            out["req_per_cpu_s"] = r["requests"] / cpu
        if cpu is not None:
            out["proxy_cpu_pct"] = 100 * cpu / m["report"]["duration_s"]
    elif spec["mode"] == "cps":
        out["cps"] = r["connections_per_s"]
        out["p50"], out["p99"] = lat["p50_us"], lat["p99_us"]
        out["connect_p99"] = r["connect_latency_us"]["p99_us"]
        if cpu:
            out["conn_per_cpu_s"] = r["connections"] / cpu
        if cpu is not None and r["connections"]:
            out["cpu_ms_per_conn"] = 1000 * cpu / r["connections"]
        if r.get("tls_resumed") is not None and r["connections"]:
            out["resumed_pct"] = 100 * r["tls_resumed"] / r["connections"]
    elif spec["mode"] == "udp":
        out["pps"] = r["received_per_s"]
        out["loss_pct"] = r["loss_pct"]
        out["p50"], out["p99"] = lat["p50_us"], lat["p99_us"]
        # One round trip = the datagram in and its echo out, both through the proxy.
        if cpu is not None and r["datagrams_received"]:
            out["cpu_s_per_m"] = cpu / (r["datagrams_received"] / 1e6)
    elif spec["mode"] == "idle":
        out["alive"] = r["conns_alive_after_hold"]
        if "proxy_rss_kib_peak" in m:
            n = max(r["conns_opened"], 1)
            out["kib_per_conn"] = (m["proxy_rss_kib_peak"] - m["proxy_rss_kib_before"]) / n
            out["rss_peak_mib"] = m["proxy_rss_kib_peak"] / 1024
    return out


# ---------------------------------------------------------------------------------------------
# the plan

def specs_for(cfg, rates, scenarios):
    """The measurements of one cell, in order (S5 is separate: fresh proxy each; S7 runs on
    the contender's UDP proxy, after the others). Open loop (S2) needs `rates` (calibrate)."""
    out = []
    b, r, c = cfg["bulk_s"], cfg["rr_s"], cfg["cps_s"]
    for n in cfg["s1_conns"]:
        out.append(dict(id=f"S1 bulk {n} conn", scenario="S1", mode="throughput",
                        extra=["--direction", "up", "--conns", n, "--duration", b,
                               "--size", "64k"], timeout=b + 60))
    for msg in cfg["s2_msgs"]:
        out.append(dict(id=f"S2 rr {msg} B closed", scenario="S2", mode="rr",
                        extra=["--conns", 1, "--msg", msg, "--duration", r], timeout=r + 60))
    for msg in cfg["open_msgs"] if rates else []:
        for frac in cfg["open_fracs"]:
            rate = rates[msg] * frac / 100
            out.append(dict(id=f"S2 rr {msg} B open {frac}%", scenario="S2", mode="rr",
                            extra=["--conns", cfg["open_conns"], "--msg", msg, "--rate",
                                   f"{rate:.0f}", "--duration", r], timeout=r + 60,
                            rate=rate))
    for n in cfg["s3_conns"]:
        out.append(dict(id=f"S3 rr 64 B {n} conns", scenario="S3", mode="rr",
                        extra=["--conns", n, "--msg", 64, "--duration", r], timeout=r + 60))
    for n in cfg["s4_conc"]:
        out.append(dict(id=f"S4 cps {n} concurrent", scenario="S4", mode="cps",
                        extra=["--concurrency", n, "--msg", 64, "--duration", c],
                        timeout=c + 60))
    for route in ("weighted", "hash"):
        out.append(dict(id=f"S6 cps 8 {route}", scenario="S6", mode="cps", route=route,
                        extra=["--concurrency", 8, "--msg", 64, "--duration", c],
                        timeout=c + 60))
    u = cfg["udp_s"]
    for rate in cfg["udp_rates"]:
        for size in cfg["udp_sizes"]:
            out.append(dict(id=f"S7 udp {size} B at {rate / 1000:g}k/s", scenario="S7",
                            mode="udp", rate=rate,
                            extra=["--sessions", cfg["udp_sessions"], "--size", size, "--rate",
                                   f"{rate:.0f}", "--duration", u, "--drain",
                                   cfg["udp_drain"]], timeout=u + 60))
    out += tls_specs(cfg)
    n = cfg["s3_conns"][0]
    out.append(dict(id="S9 PROXY v2 cps 8 concurrent", scenario="S9", mode="cps",
                    extra=["--concurrency", 8, "--msg", 64, "--duration", c], timeout=c + 60))
    out.append(dict(id=f"S9 PROXY v2 rr 64 B {n} conns", scenario="S9", mode="rr",
                    extra=["--conns", n, "--msg", 64, "--duration", r], timeout=r + 60))
    for size in RBAC_SIZES:
        out.append(dict(id=f"S10 RBAC {size} cps 8 concurrent", scenario="S10", mode="cps",
                        rbac_size=size,
                        extra=["--concurrency", 8, "--msg", 64, "--duration", c],
                        timeout=c + 60))
    out.append(dict(id="S11 SNI 10000 names cps 8 concurrent", scenario="S11", mode="cps",
                    extra=["--concurrency", 8, "--msg", 64, "--duration", c, "--tls",
                           "--tls-ca", TLS_CA, "--tls-sni", SNI_CLIENT_NAME],
                    timeout=c + 60))
    return [x for x in out if x["scenario"] in scenarios]


def tls_specs(cfg):
    """S8: per certificate, bulk up, rr 64 B, cps full and resumed, all with --tls."""
    out = []
    b, r, c = cfg["bulk_s"], cfg["rr_s"], cfg["cps_s"]
    for cert in cfg["tls_certs"]:
        tls = ["--tls", "--tls-ca", TLS_CA, "--tls-sni", "localhost"]
        common = dict(scenario="S8", tls_cert=cert)
        for n in cfg["tls_bulk_conns"]:
            out.append(dict(id=f"S8 {cert} bulk {n} conn", mode="throughput", **common,
                            extra=tls + ["--direction", "up", "--conns", n, "--duration", b,
                                         "--size", "64k"], timeout=b + 60))
        n = cfg["tls_rr_conns"]
        out.append(dict(id=f"S8 {cert} rr 64 B {n} conns", mode="rr", **common,
                        extra=tls + ["--conns", n, "--msg", 64, "--duration", r],
                        timeout=r + 60))
        n = cfg["tls_cps_conc"]
        for kind, resume in (("full", []), ("resumed", ["--tls-resume"])):
            out.append(dict(id=f"S8 {cert} cps {n} {kind}", mode="cps", **common,
                            expect_resumed=bool(resume),
                            extra=tls + resume + ["--concurrency", n, "--msg", 64,
                                                  "--duration", c], timeout=c + 60))
    return out


def s5_specs(cfg, scenarios):
    h = cfg["hold_s"]
    if "S5" not in scenarios:
        return []
    return [dict(id=f"S5 idle {n} conns", scenario="S5", mode="idle",
                 extra=["--conns", n, "--hold", h], timeout=h + 120) for n in cfg["s5_conns"]]


class Ctx:
    pass


def wait_idle(ctx, what):
    """Block until /proc/stat shows > 90% idle over 1 s (spinners excluded), up to max_wait."""
    t0 = time.monotonic()
    seen = []
    while True:
        frac = idle_fraction(ctx.spinners)
        seen.append(round(frac, 3))
        if frac >= 0.90:
            break
        waited = time.monotonic() - t0
        if waited > ctx.args.max_wait or ctx.wait_total + waited > ctx.args.wait_budget:
            log(f"  machine still busy ({100 * frac:.0f}% idle) after {waited:.0f} s (waiting "
                f"budget {ctx.args.wait_budget:.0f} s); running {what} anyway (recorded)")
            break
        if len(seen) == 1:
            log(f"  machine busy ({100 * frac:.0f}% idle, load {loadavg()[0]:.2f}); waiting "
                f"before {what}")
    if len(seen) > 1:
        ctx.wait_total += time.monotonic() - t0 - 1.0
    rec = {"what": what, "idle_samples": seen, "waited_s": round(time.monotonic() - t0, 1),
           "idle": seen[-1] >= 0.90, "loadavg": loadavg()}
    ctx.idle_checks.append(rec)
    return rec


def run_cell(ctx, rep, placement, contender, specs):
    cpu = PLACEMENTS[placement]
    cell = {"rep": rep, "placement": placement, "contender": contender,
            "proxy_cpu": cpu if contender != "direct" else None, "measurements": []}
    cell["idle_check"] = wait_idle(ctx, f"rep {rep + 1} {placement} {contender}")
    t0 = time.monotonic()
    env = ctx.env
    try:
        # S8 then S7 run last, each on its own proxy config (run_variant).
        udp_specs = [s for s in specs if s["scenario"] == "S7"]
        tls_specs_ = [s for s in specs if s["scenario"] == "S8"]
        specs = [s for s in specs if s["scenario"] not in ("S7", "S8")]
        if udp_specs and contender in UDP_NA:
            cell.setdefault("not_applicable", {})["S7"] = UDP_NA[contender]
            udp_specs = []
        if tls_specs_ and contender in TLS_NA:
            cell.setdefault("not_applicable", {})["S8"] = TLS_NA[contender]
            tls_specs_ = []
        if contender == "floor":
            specs = [s for s in specs if s["scenario"] not in FLOOR_SKIPS]
        # S5 first, each on a fresh proxy: memory is what N held connections add to a process
        # that has served only a short warm-up (8 connections, 0.2 s of rr).
        if contender not in ("direct", "floor"):
            def fresh():
                p = env.start_proxy(contender, cpu)
                bench(ctx.args, ctx.tmp, "rr", env.targets(contender)[1],
                      ["--conns", 8, "--duration", 0.2], 30)
                time.sleep(0.1)
                return p
            for spec in ctx.s5:
                cell["measurements"].append(measure(ctx, cell, spec, None, fresh))
        p = env.start_proxy(contender, cpu) if contender != "direct" and specs else None
        try:
            if p:
                cell["proxy_rss_kib_start"] = tree_rss_kib(p.pid)
                cpu_start = tree_cpu_s(p.pid)
            for spec in specs:
                cell["measurements"].append(measure(ctx, cell, spec, p))
            if p:
                cell["proxy_rss_kib_end"] = tree_rss_kib(p.pid)
                cell["proxy_cpu_s_total"] = round(tree_cpu_s(p.pid) - cpu_start, 3)
        finally:
            env.procs.stop(p)
        if tls_specs_:
            run_variant(ctx, cell, cpu, tls_specs_, "tls")
        if udp_specs:
            run_variant(ctx, cell, cpu, udp_specs, "udp")
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        cell["error"] = str(e)
        log(f"  ERROR {placement} {contender}: {e}")
    cell["wall_s"] = round(time.monotonic() - t0, 1)
    bad = [m["id"] for m in cell["measurements"] if not m["ok"]]
    summary = " ".join(short(m) for m in cell["measurements"])
    log(f"  rep {rep + 1} {placement:6} {contender:10} {cell['wall_s']:5.1f} s  {summary}"
        + (f"  ERRORS in {bad}" if bad else ""))
    return cell


def run_variant(ctx, cell, cpu, specs, variant):
    """S7 (`udp`) or S8 (`tls`) on the contender's proxy started from that variant's peer
    config, after the TCP one has stopped. A start failure is an error, as for the TCP
    proxies."""
    contender = cell["contender"]
    p = None
    if contender != "direct":
        p = ctx.env.start_proxy(contender, cpu, **{variant: True})
    try:
        if p:
            cell[f"{variant}_proxy_rss_kib_start"] = tree_rss_kib(p.pid)
        for spec in specs:
            cell["measurements"].append(measure(ctx, cell, spec, p))
        if p:
            cell[f"{variant}_proxy_rss_kib_end"] = tree_rss_kib(p.pid)
    finally:
        ctx.env.procs.stop(p)


def short(m):
    x = m["metrics"]
    s = m["id"].split()[0]
    if "pps" in x:
        size, rate = m["id"].split()[2], m["id"].split()[-1]
        return f"{s}/{size}B@{rate}={x['pps'] / 1000:.1f}k/{x['loss_pct']:.2f}%/{x['p50']:.0f}us"
    if "gbit_s" in x:
        return f"{s}={x['gbit_s']:.1f}G"
    if "rps" in x:
        return f"{s}={x['rps'] / 1000:.0f}k/{x['p50']:.0f}us"
    if "cps" in x:
        return f"{s}={x['cps'] / 1000:.1f}k"
    if "kib_per_conn" in x:
        return f"{s}={x['kib_per_conn']:.1f}KiB"
    return f"{s}=?"


def calibrate(ctx, placement, cfg):
    """Direct's closed-loop maximum with open_conns connections, per message size."""
    rates = {}
    for msg in cfg["open_msgs"]:
        wait_idle(ctx, f"calibration {placement} {msg} B")
        rc, rep, _ = bench(ctx.args, ctx.tmp, "rr", ctx.env.targets("direct")[1],
                           ["--conns", cfg["open_conns"], "--msg", msg, "--duration",
                            max(cfg["rr_s"], 1.0)], 60)
        if rc != 0 or rep is None:
            raise RuntimeError(f"calibration run failed (status {rc})")
        rates[msg] = rep["results"]["requests_per_s"]
        log(f"  {placement}: direct closed-loop maximum, {cfg['open_conns']} conns, {msg} B: "
            f"{rates[msg]:.0f} req/s")
    return rates


# ---------------------------------------------------------------------------------------------
# setup

def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def install(args):
    need = []
    if not shutil.which("nginx"):
        need.append("nginx-light")
    if not os.path.exists("/usr/lib/nginx/modules/ngx_stream_module.so"):
        need.append("libnginx-mod-stream")
    if not shutil.which("haproxy"):
        need.append("haproxy")
    if not shutil.which("iperf3"):
        need.append("iperf3")
    for tool, pkg in (("taskset", "util-linux"), ("chrt", "util-linux")):
        if not shutil.which(tool):
            need.append(pkg)
    if need:
        log(f"bench-compare: apt-get install {' '.join(sorted(set(need)))}")
        sh(["apt-get", "update", "-qq"])
        sh(["apt-get", "install", "-y", "-qq", *sorted(set(need))],
           env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"), stdout=subprocess.DEVNULL)
    if subprocess.run([os.path.join(ROOT, "ci/envoy-bin")], capture_output=True).returncode:
        log("bench-compare: ci/install-deps (Envoy into .venv)")
        sh([os.path.join(ROOT, "ci/install-deps")])


def envoy_bin():
    out = subprocess.run([os.path.join(ROOT, "ci/envoy-bin")], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr.strip())
    return out.stdout.strip()


def versions(envoy):
    def first(cmd):
        try:
            o = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            return (o.stdout + o.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"
    commit = first(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "src", "dataplane",
                            "control", "Cargo.toml", "Cargo.lock"],
                           capture_output=True, text=True).stdout.strip()
    return {"switchyard": f"{commit}{' + uncommitted changes' if dirty else ''}",
            "nginx": first(["nginx", "-v"]), "haproxy": first(["haproxy", "-v"]),
            "envoy": first([envoy, "--version"]).split("version: ")[-1]}


def machine():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "describe": f"{os.cpu_count()} vCPU VM, kernel {'.'.join(platform.release().split('.')[:2])}",
            "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1]}


# ---------------------------------------------------------------------------------------------
# report

ROWS = [  # (measurement id prefix, metric, label, unit, higher_is_better)
    ("S1 bulk {} conn", "gbit_s", "S1 bulk {} conn (Gbit/s)", "gbit", True),
    ("S1 bulk {} conn", "cpu_s_per_gb", "S1 bulk {} conn, proxy CPU-s per GB", "x2", False),
    ("S2 rr {} B closed", "rps", "S2 rr {} B 1 conn closed (req/s)", "k", True),
    ("S2 rr {} B closed", "p50", "S2 rr {} B 1 conn closed p50 (us)", "us", False),
    ("S2 rr {} B closed", "p99", "S2 rr {} B 1 conn closed p99 (us)", "us", False),
    ("S2 rr {} B closed", "p999", "S2 rr {} B 1 conn closed p99.9 (us)", "us", False),
    ("S2 open", "rps", "S2 rr {} (achieved req/s)", "k", True),
    ("S2 open", "p50", "S2 rr {} p50 (us)", "us", False),
    ("S2 open", "p99", "S2 rr {} p99 (us)", "us", False),
    ("S3 rr 64 B {} conns", "rps", "S3 rr 64 B {} conns (req/s)", "k", True),
    ("S3 rr 64 B {} conns", "req_per_cpu_s", "S3 rr 64 B {} conns (req per proxy CPU-s)", "k",
     True),
    ("S3 rr 64 B {} conns", "p99", "S3 rr 64 B {} conns p99 (us)", "us", False),
    ("S4 cps {} concurrent", "cps", "S4 cps {} concurrent (conn/s)", "k", True),
    ("S4 cps {} concurrent", "p99", "S4 cps {} concurrent p99 connect+exchange (us)", "us",
     False),
    ("S5 idle {} conns", "kib_per_conn", "S5 idle {} conns: proxy RSS per conn (KiB)", "x1",
     False),
    ("S5 idle {} conns", "rss_peak_mib", "S5 idle {} conns: proxy peak RSS (MiB)", "x1", False),
    ("S6 cps 8 {}", "cps", "S6 cps 8 concurrent, {} route (conn/s)", "k", True),
    ("S6 cps 8 {}", "p99", "S6 cps 8 concurrent, {} route p99 (us)", "us", False),
    ("S7 udp {}", "pps", "S7 udp {} (echoed datagrams/s)", "k", True),
    ("S7 udp {}", "loss_pct", "S7 udp {} loss (%)", "x2", False),
    ("S7 udp {}", "p50", "S7 udp {} round trip p50 (us)", "us", False),
    ("S7 udp {}", "p99", "S7 udp {} round trip p99 (us)", "us", False),
    ("S7 udp {}", "cpu_s_per_m", "S7 udp {}, proxy CPU-s per million round trips", "x2",
     False),
    ("S8 {} conn", "gbit_s", "S8 TLS {} conn (Gbit/s)", "gbit", True),
    ("S8 {} conn", "cpu_s_per_gb", "S8 TLS {} conn, proxy CPU-s per GB", "x2", False),
    ("S8 {} conns", "rps", "S8 TLS {} conns (req/s)", "k", True),
    ("S8 {} conns", "req_per_cpu_s", "S8 TLS {} conns (req per proxy CPU-s)", "k", True),
] + [row for kind in ("full", "resumed") for row in (
    (f"S8 {{}} {kind}", "cps", f"S8 TLS {{}} {kind} (handshakes/s)", "k", True),
    (f"S8 {{}} {kind}", "cpu_ms_per_conn", f"S8 TLS {{}} {kind}, proxy CPU-ms per handshake",
     "x3", False),
    (f"S8 {{}} {kind}", "conn_per_cpu_s", f"S8 TLS {{}} {kind} (handshakes per proxy CPU-s)",
     "k", True),
    # full: must be 0 (lower is right); resumed: near 100 (higher is right).
    (f"S8 {{}} {kind}", "resumed_pct", f"S8 TLS {{}} {kind}: resumed (%)", "x1",
     kind == "resumed"),
)] + [
    ("S9 PROXY v2 cps {} concurrent", "cps", "S9 PROXY v2 cps {} concurrent (conn/s)", "k",
     True),
    ("S9 PROXY v2 cps {} concurrent", "conn_per_cpu_s",
     "S9 PROXY v2 cps {} concurrent (conn per proxy CPU-s)", "k", True),
    ("S9 PROXY v2 rr 64 B {} conns", "rps", "S9 PROXY v2 rr 64 B {} conns (req/s)", "k", True),
    ("S9 PROXY v2 rr 64 B {} conns", "req_per_cpu_s",
     "S9 PROXY v2 rr 64 B {} conns (req per proxy CPU-s)", "k", True),
    ("S10 RBAC {} cps 8 concurrent", "cps",
     "S10 allow list of {} entries, cps 8 concurrent (conn/s)", "k", True),
    ("S10 RBAC {} cps 8 concurrent", "conn_per_cpu_s",
     "S10 allow list of {} entries, cps 8 concurrent (conn per proxy CPU-s)", "k", True),
    ("S11 SNI {} names cps 8 concurrent", "cps",
     "S11 SNI routing among {} names, TLS cps 8 concurrent (conn/s)", "k", True),
    ("S11 SNI {} names cps 8 concurrent", "conn_per_cpu_s",
     "S11 SNI routing among {} names, TLS cps 8 concurrent (conn per proxy CPU-s)", "k",
     True),
]


def fmt(v, unit):
    if v is None:
        return "—"
    if unit == "k":
        return f"{v / 1000:.1f}k" if v < 1e6 else f"{v / 1e6:.2f}M"
    if unit == "gbit":
        return f"{v:.1f}"
    if unit == "us":
        return f"{v:.0f}" if v >= 100 else f"{v:.1f}"
    if unit == "x2":
        return f"{v:.2f}"
    if unit == "x3":
        return f"{v:.3f}"
    return f"{v:.1f}"


def collect(results):
    """{(placement, measurement id, contender): [measurement dicts]}"""
    out = {}
    for cell in results["cells"]:
        for m in cell["measurements"]:
            out.setdefault((cell["placement"], m["id"], cell["contender"]), []).append(m)
    return out


def row_ids(results, placement):
    ids = []
    for cell in results["cells"]:
        if cell["placement"] == placement:
            for m in cell["measurements"]:
                if m["id"] not in ids:
                    ids.append(m["id"])
    return ids


def table_rows(results, placement):
    """[(label, unit, higher, {contender: [values]})] in a stable order."""
    data = collect(results)
    ids = row_ids(results, placement)
    order = {"S1": 0, "S2": 1, "S3": 3, "S4": 4, "S5": 5, "S6": 6, "S7": 7, "S8": 8, "S9": 9}
    rows = []
    for pattern, metric, label, unit, higher in ROWS:
        if pattern == "S2 open":
            match = [i for i in ids if " open " in i]
            labels = {i: label.format(i[len("S2 rr "):]) for i in match}
        else:
            pre, post = pattern.split("{}")
            match = [i for i in ids if i.startswith(pre) and i.endswith(post)
                     and " open " not in i]
            labels = {i: label.format(i[len(pre):len(i) - len(post)]) for i in match}
        for mid in match:
            vals = {}
            for c in CONTENDERS:
                v = [m["metrics"][metric] for m in data.get((placement, mid, c), [])
                     if metric in m["metrics"]]
                if v:
                    vals[c] = v
            if vals:
                rows.append((order[mid[:2]], ids.index(mid), labels[mid], unit, higher, vals))
    rows.sort(key=lambda r: (r[0], r[1]))
    return [r[2:] for r in rows]


def med(v):
    return statistics.median(v) if v else None


def not_measured(results, placement, scenario):
    """{contender: "n/a"} for contenders recorded as not taking part in `scenario`."""
    out = {}
    for cell in results["cells"]:
        if cell["placement"] == placement and scenario in cell.get("not_applicable", {}):
            out[cell["contender"]] = "n/a"
    return out


def present(results):
    """The contenders this run measured, in table order."""
    return [c for c in CONTENDERS if c in results["meta"]["contenders"]]


def markdown(results):
    a = results["meta"]
    shown = present(results)
    cfg = a["config"]
    lines = [f"# Switchyard vs direct, nginx, HAProxy, Envoy — {a['date']} ({a['mode']})", ""]
    lines += [
        f"- Machine: {a['machine']['describe']} ({a['machine']['cpu_model']}, kernel "
        f"{a['machine']['kernel']}), loopback 127.0.0.1, fd limit {a['machine']['fd_limit']}.",
        f"- Versions: Switchyard {a['versions']['switchyard']} (release build, buffer-ring relay"
        f"{', flags ' + repr(a['switchyard_args']) if a.get('switchyard_args') else ''}); "
        f"{a['versions']['nginx']}; {a['versions']['haproxy']}; Envoy {a['versions']['envoy']}. "
        "Configs: `bench/peers/` (tuning in bench/peers/README.md).",
        "- **floor** = `switchyard-bench forward`: a blocking read/write thread per direction "
        "(1 MiB buffer), the least work any user-space hop does; the gap between direct and "
        "floor is the kernel's share of every proxy. S1-S3 only (it spawns threads per "
        "connection, so S4/S5 would not measure a floor; it relays TCP only, so no S7).",
        "- Each proxy with exactly one worker. Placements: **shared** = load generator, backends "
        "and proxy all on CPU 0; **split** = load generator and backends on CPU 0, proxy alone on "
        "CPU 1. A SCHED_IDLE spinner (`chrt --idle 0`, busy loop) ran on each CPU throughout"
        + ("" if a["spinners"] else " (NOT in this run: --no-spinners)") + ".",
        f"- {cfg['reps']} repetition(s), contenders interleaved (order rotated each repetition); "
        "cells show the median (min–max) over repetitions. Durations: bulk "
        f"{cfg['bulk_s']} s, rr {cfg['rr_s']} s, cps {cfg['cps_s']} s, idle hold {cfg['hold_s']} s.",
        "- Load: `switchyard-bench` (bulk = `throughput --direction up --size 64k` to `serve "
        "--sink`; rr/cps/idle against `serve --echo`). Open loop: "
        + (f"{cfg['open_conns']} connections at {'/'.join(map(str, cfg['open_fracs']))}% of direct's closed-loop maximum with "
           f"{cfg['open_conns']} connections ("
           + "; ".join(f"{p}: " + ", ".join(f"{m} B {r:.0f} req/s" for m, r in rs.items())
                       for p, rs in a["open_loop_max"].items()) + ")."
           if any(a["open_loop_max"].values()) else "not run (S2 not selected)."),
        "- Open loop, shared placement: the load generator paces by sleeping to 60 µs before "
        "each send slot and then yielding, on CPU 0 — the proxy's CPU there — so those rows "
        "include that contention (the same for every proxy; direct has no proxy to starve).",
        "- Proxy CPU = utime+stime of the proxy's process tree during the measurement "
        "(/proc/PID/stat, 10 ms ticks); RSS = VmRSS. S5: each N on a fresh proxy after an 8-"
        "connection warm-up; (peak RSS while holding − RSS before) / N: user-space memory only (kernel socket "
        "buffers are not in RSS). 0.0 means the process did not grow (e.g. preallocated slots).",
        f"- Machine state: load average {a['loadavg_start'][0]:.2f} at start, "
        f"{a['loadavg_end'][0]:.2f} at end; idle checks: {a['idle_summary']}; measurements "
        f"re-run because other processes used CPU: {a['reruns']}; still disturbed after "
        f"re-runs: {a['still_disturbed']}.",
        f"- Runs with errors: {a['error_runs']}. Total wall time {a['wall_s'] / 60:.1f} min.",
    ]
    scen = a.get("scenarios", list(SCENARIOS))
    if scen != list(SCENARIOS):
        lines.append(f"- Scenarios run: {', '.join(f'{x} {SCENARIOS[x]}' for x in scen)} "
                     "(--scenarios).")
    if "S7" in scen:
        lines += [
            f"- S7 udp: `switchyard-bench udp --sessions {cfg['udp_sessions']} --rate R "
            f"--duration {cfg['udp_s']} --drain {cfg['udp_drain']}` (R = "
            f"{' and '.join(f'{x:.0f}' for x in cfg['udp_rates'])} datagrams/s; datagrams of "
            f"{' and '.join(f'{x} B' for x in cfg['udp_sizes'])}, open loop, "
            "each session its own client port, so one proxy session each) to `serve "
            "--udp-echo` (one thread, CPU 0). Each proxy runs from its UDP peer config "
            "(`bench/peers/*-udp.*`), started after its TCP one in the same cell. Echoed/s "
            "should equal the rate: below it the proxy did not keep up, and loss says how "
            "many never came back (within the drain); round trips count from each datagram's "
            "actual send (the sender sleeps, never spins). The lower rate shows a lightly "
            "loaded proxy's latency; the higher one is for loss and CPU per datagram. Every "
            "proxy's UDP listener socket has 4 MiB buffers (Switchyard by default, nginx "
            "`rcvbuf=4m sndbuf=4m`, Envoy `socket_options`); the load generator and the echo "
            "ask for 8 MiB. "
            "Proxy CPU-s per million round trips: each carries a datagram in and its "
            "echo out (10 ms ticks: a 1 s run at 20k/s resolves 0.5 s per million). "
            + "; ".join(f"{c}: n/a ({r})" for c, r in UDP_NA.items()
                        if c in a["contenders"]) + ".",
        ]
    if "S8" in scen:
        lines += [
            f"- S8 tls: each proxy terminates TLS from its TLS peer config (`bench/peers/*-tls.*`, "
            "TLS 1.3 minimum, session tickets on: each one's default) and forwards plaintext to "
            "the same sink and echo; certificates `tests/certs/server.pem` (ECDSA P-256) and "
            "`server-rsa.pem` (RSA-2048). Client `switchyard-bench --tls --tls-ca "
            "tests/certs/ca.pem --tls-sni localhost`: TLS 1.3, TLS_AES_128_GCM_SHA256 and X25519 "
            f"only. Bulk: `throughput --direction up`, {' and '.join(map(str, cfg['tls_bulk_conns']))} "
            f"connections; rr: 64 B, {cfg['tls_rr_conns']} connections (as S3); cps: "
            f"{cfg['tls_cps_conc']} concurrent, 64 B exchange, RST close, `full` offers no "
            "session, `resumed` passes `--tls-resume` (a ticket from the run's cache on every "
            "connection; `resumed (%)` is the share that did resume, each worker's first "
            "connection cannot). The handshake is inside each connection's exchange. direct = "
            "`switchyard-bench serve --tls-cert --tls-key` (rustls, CPU 0): TLS without a "
            "proxy. " + "; ".join(f"{c}: n/a ({r})" for c, r in TLS_NA.items()
                                  if c in a["contenders"]) + ".",
        ]
    lines.append("")
    for placement in results["meta"]["placements"]:
        rows = table_rows(results, placement)
        lines += [f"## Placement: {placement}"
                  + (" (everything on CPU 0)" if placement == "shared"
                     else " (proxy on CPU 1; load and backends on CPU 0)"), ""]
        lines += [f"| {placement} | " + " | ".join(shown) + " |",
                  "|---|" + "---|" * len(shown)]
        missing = {x: not_measured(results, placement, x) for x in ("S7", "S8")}
        for label, unit, higher, vals in rows:
            cells = []
            for c in shown:
                v = vals.get(c)
                if not v and c in missing.get(label[:2], {}):
                    cells.append(missing[label[:2]][c])
                elif not v:
                    cells.append("—")
                elif len(v) == 1:
                    cells.append(fmt(v[0], unit))
                else:
                    cells.append(f"{fmt(med(v), unit)} ({fmt(min(v), unit)}–{fmt(max(v), unit)})")
            arrow = "↑" if higher else "↓"
            lines.append(f"| {label} {arrow} | " + " | ".join(cells) + " |")
        lines += ["", f"Ratios of medians, placement **{placement}** (↑: higher is better, "
                  "↓: lower is better; a ratio > 1 on a ↓ row means more time or memory):", ""]
        cols = [("floor", "direct"), ("switchyard", "direct"), ("nginx", "direct"),
                ("haproxy", "direct"), ("envoy", "direct"), ("switchyard", "floor"),
                ("switchyard", "nginx"), ("switchyard", "haproxy"), ("switchyard", "envoy"),
                ("nginx", "haproxy"), ("nginx", "envoy"), ("haproxy", "envoy")]
        cols = [(x, y) for x, y in cols if x in shown and y in shown]
        lines += [f"| {placement} | " + " | ".join(f"{x}/{y}" for x, y in cols) + " |",
                  "|---|" + "---|" * len(cols)]
        for label, unit, higher, vals in rows:
            cells = []
            for x, y in cols:
                vx, vy = med(vals.get(x, [])), med(vals.get(y, []))
                cells.append(f"{vx / vy:.2f}×" if vx is not None and vy else "—")
            if all(c == "—" for c in cells):
                continue
            arrow = "↑" if higher else "↓"
            lines.append(f"| {label} {arrow} | " + " | ".join(cells) + " |")
        lines.append("")
    if results["meta"].get("chart"):
        lines += [f"Chart: `{results['meta']['chart']}`.", ""]
    return "\n".join(lines)


PLOT = r'''
import json, sys, statistics
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
res = json.load(open(sys.argv[1]))
C = [c for c in ["direct", "floor", "switchyard", "nginx", "haproxy", "envoy"]
     if c in res["meta"]["contenders"]]
COLOURS = {"direct": "#777777", "floor": "#bcbd22", "switchyard": "#d62728",
           "nginx": "#2ca02c", "haproxy": "#1f77b4", "envoy": "#9467bd"}
COL = [COLOURS[c] for c in C]
pl = res["meta"]["placements"]
fig, axes = plt.subplots(len(pl), 2, figsize=(13, 4.2 * len(pl)), squeeze=False)
def vals(p, mid, c, k):
    return [m["metrics"][k] for cell in res["cells"] if cell["placement"] == p and cell["contender"] == c
            for m in cell["measurements"] if m["id"] == mid and k in m["metrics"]]
for i, p in enumerate(pl):
    ids = [m["id"] for cell in res["cells"] if cell["placement"] == p for m in cell["measurements"]]
    bulk = sorted({x for x in ids if x.startswith("S1")})
    ax = axes[i][0]
    w = 0.8 / len(C)
    for j, c in enumerate(C):
        med = [statistics.median(vals(p, b, c, "gbit_s") or [0]) for b in bulk]
        lo = [m - min(vals(p, b, c, "gbit_s") or [0]) for m, b in zip(med, bulk)]
        hi = [max(vals(p, b, c, "gbit_s") or [0]) - m for m, b in zip(med, bulk)]
        ax.bar([k + j * w for k in range(len(bulk))], med, w, yerr=[lo, hi], color=COL[j], label=c, capsize=2)
    ax.set_xticks([k + 0.4 - w / 2 for k in range(len(bulk))]); ax.set_xticklabels([b[3:] for b in bulk])
    ax.set_ylabel("Gbit/s (median, min-max)"); ax.set_title(f"S1 bulk throughput — placement {p}")
    ax.legend(fontsize=8); ax.grid(axis="y", alpha=.3)
    ax = axes[i][1]
    pct = ["p50", "p90", "p99", "p999"]
    for j, c in enumerate(C):
        med = [statistics.median(vals(p, "S2 rr 64 B closed", c, k) or [0]) for k in pct]
        ax.bar([k + j * w for k in range(len(pct))], med, w, color=COL[j], label=c)
    ax.set_xticks([k + 0.4 - w / 2 for k in range(len(pct))]); ax.set_xticklabels(["p50", "p90", "p99", "p99.9"])
    ax.set_yscale("log"); ax.set_ylabel("µs (median over reps, log)")
    ax.set_title(f"S2 rr 64 B, 1 conn, closed loop latency — placement {p}")
    ax.legend(fontsize=8); ax.grid(axis="y", alpha=.3, which="both")
fig.suptitle(f"Switchyard vs peers, one worker each — {res['meta']['date']} ({res['meta']['mode']}), {res['meta']['machine']['describe']}")
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=90)
'''


def plot(results, json_path, png_path):
    """matplotlib in .venv-bench (installed on first use); else a plain PNG without text."""
    py = os.path.join(VENV_PLOT, "bin/python")
    try:
        if subprocess.run([py, "-c", "import matplotlib"], capture_output=True).returncode != 0 \
                if os.path.exists(py) else True:
            log("bench-compare: installing matplotlib into .venv-bench")
            if not os.path.exists(py):
                sh([sys.executable, "-m", "venv", VENV_PLOT], stdout=subprocess.DEVNULL)
            sh([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "matplotlib"],
               timeout=300)
        sh([py, "-c", PLOT, json_path, png_path], timeout=120)
        return "matplotlib"
    except (subprocess.CalledProcessError, OSError, subprocess.TimeoutExpired) as e:
        log(f"bench-compare: matplotlib unavailable ({e}); writing a plain PNG")
        plain_png(results, png_path)
        return "plain"


def plain_png(results, path):
    """Fallback chart without text: per placement, S1 bars (left) and S2 64 B p50/p99 (right),
    one colour per contender (COLOURS), in table order."""
    import struct
    import zlib
    shown = present(results)
    W, H = 900, 300 * len(results["meta"]["placements"])
    img = [bytearray(b"\xff" * (W * 3)) for _ in range(H)]

    def rect(x0, y0, x1, y1, c):
        for y in range(max(0, y0), min(H, y1)):
            for x in range(max(0, x0), min(W, x1)):
                img[y][3 * x:3 * x + 3] = bytes(c)
    data = collect(results)
    for i, p in enumerate(results["meta"]["placements"]):
        top, base = 300 * i + 20, 300 * i + 280
        groups = [("S1 bulk 1 conn", "gbit_s"), ("S1 bulk 4 conn", "gbit_s"),
                  ("S2 rr 64 B closed", "p50"), ("S2 rr 64 B closed", "p99")]
        for g, (mid, k) in enumerate(groups):
            vs = [med([m["metrics"][k] for m in data.get((p, mid, c), []) if k in m["metrics"]])
                  or 0 for c in shown]
            top_v = max(vs) or 1
            for j, v in enumerate(vs):
                x = 20 + g * 220 + j * 34
                rect(x, base - int((base - top) * v / top_v), x + 28, base, COLOURS[shown[j]])
        rect(0, base, W, base + 2, (0, 0, 0))
    raw = b"".join(b"\x00" + bytes(r) for r in img)
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


# ---------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("--quick", action="store_true", help="1 repetition, short, fewer cells (< 3 min)")
    ap.add_argument("--reps", type=int, help="repetitions (default 5; quick 1)")
    ap.add_argument("--only", help="comma list of contenders (default all; direct always runs)")
    ap.add_argument("--placements", default="shared,split")
    ap.add_argument("--scenarios", "--scenario", default="all",
                    help="comma list of scenarios, by number or name: S1 bulk, S2 latency, "
                         "S3 rr, S4 cps, S5 idle, S6 routing, S7 udp, S8 tls, S9 proxy "
                         "(default all)")
    ap.add_argument("--udp-rates", "--udp-rate", default="4000,20000",
                    help="S7: comma list of datagrams/s, all sessions together "
                         "(default 4000,20000)")
    ap.add_argument("--port-base", type=int, default=16100)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--switchyard-args", default="", metavar="FLAGS",
                    help="extra flags for `switchyard run` (a wait lever: --busy-poll-us 0, ...)")
    ap.add_argument("--switchyard-bin", metavar="PATH",
                    help="the switchyard binary to measure (default target/release/switchyard)")
    ap.add_argument("--no-install", action="store_true")
    ap.add_argument("--no-spinners", action="store_true")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--counters", action="store_true",
                    help="per request/connection: system calls and context switches of the proxy "
                         "(perf stat), and Switchyard's io_uring_enter calls and completions each")
    ap.add_argument("--max-wait", type=float, default=None,
                    help="seconds to wait for an idle machine per check (default 30; quick 5)")
    ap.add_argument("--wait-budget", type=float, default=None,
                    help="total seconds of waiting for idle over the run (default 150; quick 20)")
    ap.add_argument("--disturb-cpu", type=float, default=0.15,
                    help="foreign CPU-s per s above which a measurement is re-run (default 0.15)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results"))
    ap.add_argument("--tag", help="file name stem (default <date>-<mode>)")
    args = ap.parse_args()
    global PROXY, BENCH
    cfg = dict(QUICK if args.quick else FULL)
    if args.reps:
        cfg["reps"] = args.reps
    try:
        cfg["udp_rates"] = [float(x) for x in args.udp_rates.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--udp-rates: not a list of numbers: {args.udp_rates!r}")
    if not cfg["udp_rates"] or min(cfg["udp_rates"]) < 1:
        ap.error("--udp-rates: each rate must be at least 1")
    names = {v: k for k, v in SCENARIOS.items()}
    scenarios = []
    for x in args.scenarios.split(","):
        x = x.strip()
        if x.lower() == "all":
            scenarios += list(SCENARIOS)
        elif x.upper() in SCENARIOS:
            scenarios.append(x.upper())
        elif x.lower() in names:
            scenarios.append(names[x.lower()])
        elif x:
            ap.error(f"--scenarios: unknown scenario {x!r} (S1-S9 or "
                     f"{', '.join(SCENARIOS.values())})")
    scenarios = [x for x in SCENARIOS if x in scenarios]
    if not scenarios:
        ap.error("--scenarios: nothing to run")
    tcp = any(x != "S7" for x in scenarios)
    if args.max_wait is None:
        args.max_wait = 5 if args.quick else 30
    if args.wait_budget is None:
        args.wait_budget = 20 if args.quick else 150
    mode = "quick" if args.quick else "full"
    contenders = CONTENDERS if not args.only else \
        ["direct"] + [c for c in PROXIES if c in args.only.split(",")]
    placements = [p for p in args.placements.split(",") if p in PLACEMENTS]
    if os.cpu_count() < 2 and "split" in placements:
        placements.remove("split")
        log("bench-compare: one CPU only: the split placement is skipped")

    # SIGTERM/SIGHUP unwind like ^C, so the `finally` below stops every process we started.
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, lambda n, f: sys.exit(128 + n))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    t_start = time.monotonic()
    if not args.no_install:
        install(args)
    if not args.no_build:
        log("bench-compare: cargo build --release --workspace")
        sh(["cargo", "build", "--release", "--workspace", "--quiet"], cwd=ROOT)
    if args.switchyard_bin:
        globals()["PROXY"] = os.path.abspath(args.switchyard_bin)
    for b in (PROXY, BENCH):
        if not os.access(b, os.X_OK):
            sys.exit(f"bench-compare: {b} missing (run without --no-build)")

    procs = Procs()
    tmp = tempfile.mkdtemp(prefix="bench-compare.")
    # Run copies: others may rebuild target/release while this runs, and every cell must run
    # the same binaries.
    for name in ("PROXY", "BENCH"):
        src = globals()[name]
        os.makedirs(os.path.join(tmp, "bin"), exist_ok=True)
        dst = os.path.join(tmp, "bin", os.path.basename(src))
        shutil.copy2(src, dst)
        globals()[name] = dst
    ctx = Ctx()
    ctx.args, ctx.tmp, ctx.idle_checks, ctx.wait_total = args, tmp, [], 0.0
    ctx.env = Env(args, tmp, procs)
    ctx.spinners = []
    results = {"schema": "switchyard-bench-compare/v1", "cells": []}
    date = datetime.date.today().isoformat()
    stem = args.tag or f"{date}-{mode}"
    try:
        ctx.env.envoy = envoy_bin()
        busy = [p for p in ctx.env.all_ports() if not port_free(p)]
        busy += [f"{p}/udp" for p in ctx.env.udp_ports() if not port_free(p, socket.SOCK_DGRAM)]
        if busy:
            raise RuntimeError(f"ports in use: {busy} (pick another --port-base)")
        meta = {"date": date, "mode": mode, "machine": machine(),
                "versions": versions(ctx.env.envoy), "config": cfg, "contenders": contenders,
                "placements": placements, "scenarios": scenarios,
                "spinners": not args.no_spinners,
                "started": datetime.datetime.now().isoformat(timespec="seconds"),
                "loadavg_start": loadavg(), "ports": {"sink": ctx.env.sink,
                                                      "echo": ctx.env.echo,
                                                      "udp_echo": ctx.env.udp_echo,
                                                      **ctx.env.ports},
                "command": " ".join(sys.argv), "switchyard_args": args.switchyard_args}
        if args.switchyard_bin:
            meta["versions"]["switchyard"] = f"binary {args.switchyard_bin}"
        results["meta"] = meta
        if not args.no_spinners:
            for cpu in sorted({LOAD_CPU, *[PLACEMENTS[p] for p in placements]}):
                ctx.spinners.append(procs.start(["taskset", "-c", cpu, "chrt", "--idle", "0",
                                                 "sh", "-c", "while :; do :; done"]))
        backends = []
        if tcp:
            backend = procs.start(["taskset", "-c", LOAD_CPU, BENCH, "serve",
                                   "--echo", f"127.0.0.1:{ctx.env.echo}",
                                   "--sink", f"127.0.0.1:{ctx.env.sink}"])
            backends.append(backend)
            wait_until(lambda: port_listening(ctx.env.echo) and port_listening(ctx.env.sink),
                       backend, "switchyard-bench serve")
            for port in ctx.env.echos[1:]:
                extra = procs.start(["taskset", "-c", LOAD_CPU, BENCH, "serve",
                                     "--echo", f"127.0.0.1:{port}"])
                wait_until(lambda: port_listening(port), extra, "switchyard-bench serve (S6)")
        if "S8" in scenarios or "S11" in scenarios:
            for cert, (sink, echo) in ctx.env.tls_direct.items():
                leaf = TLS_CERTS[cert][1]
                tls_backend = procs.start(
                    ["taskset", "-c", LOAD_CPU, BENCH, "serve", "--echo", f"127.0.0.1:{echo}",
                     "--sink", f"127.0.0.1:{sink}",
                     "--tls-cert", os.path.join(CERTS_DIR, f"{leaf}.pem"),
                     "--tls-key", os.path.join(CERTS_DIR, f"{leaf}.key")])
                backends.append(tls_backend)
                wait_until(lambda: port_listening(echo) and port_listening(sink), tls_backend,
                           f"switchyard-bench serve --tls-cert ({cert})")
        if "S7" in scenarios:
            backend = procs.start(["taskset", "-c", LOAD_CPU, BENCH, "serve",
                                   "--udp-echo", f"127.0.0.1:{ctx.env.udp_echo}"])
            backends.append(backend)
            wait_until(lambda: udp_bound(ctx.env.udp_echo), backend,
                       "switchyard-bench serve --udp-echo")
        log(f"bench-compare: {mode}, {cfg['reps']} rep(s), placements {placements}, "
            f"contenders {contenders}, scenarios {scenarios}; load average {loadavg()[0]:.2f}")
        meta["open_loop_max"] = {p: calibrate(ctx, p, cfg) if "S2" in scenarios else {}
                                 for p in placements}
        ctx.s5 = s5_specs(cfg, scenarios)
        specs = {p: specs_for(cfg, meta["open_loop_max"][p], scenarios) for p in placements}
        for rep in range(cfg["reps"]):
            order = contenders[rep % len(contenders):] + contenders[:rep % len(contenders)]
            for placement in placements:
                for c in order:
                    results["cells"].append(run_cell(ctx, rep, placement, c, specs[placement]))
        for backend in backends:
            if backend.poll() is not None:
                raise RuntimeError(f"switchyard-bench serve exited early ({backend.returncode})")
    except KeyboardInterrupt:
        log("bench-compare: interrupted; stopping everything")
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
        sys.exit(130)
    except RuntimeError as e:
        log(f"bench-compare: {e}")
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
        sys.exit(1)
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    meas = [m for c in results["cells"] for m in c["measurements"]]
    meta["loadavg_end"] = loadavg()
    meta["wall_s"] = round(time.monotonic() - t_start, 1)
    meta["reruns"] = sum(1 for m in meas if m["attempts"] > 1)
    meta["still_disturbed"] = [f"{c['placement']}/{c['contender']}/rep{c['rep'] + 1}/{m['id']}"
                               for c in results["cells"] for m in c["measurements"]
                               if m["disturbed"]]
    meta["still_disturbed"] = meta["still_disturbed"] or "none"
    waits = [i for i in ctx.idle_checks if i["waited_s"] > 1.5 or not i["idle"]]
    meta["idle_checks"] = ctx.idle_checks
    meta["idle_summary"] = (f"{len(ctx.idle_checks)} checks, {len(waits)} had to wait "
                            f"({sum(i['waited_s'] for i in waits):.0f} s in all), "
                            f"{sum(1 for i in ctx.idle_checks if not i['idle'])} ran busy")
    errors = [f"{c['placement']}/{c['contender']}/rep{c['rep'] + 1}/{m['id']}"
              for c in results["cells"] for m in c["measurements"] if not m["ok"]]
    errors += [f"{c['placement']}/{c['contender']}/rep{c['rep'] + 1}: {c['error'][:200]}"
               for c in results["cells"] if "error" in c]
    meta["error_runs"] = errors or "none"

    os.makedirs(args.out, exist_ok=True)
    jpath = os.path.join(args.out, f"{stem}.json")
    mpath = os.path.join(args.out, f"{stem}.md")
    ppath = os.path.join(args.out, f"{stem}.png")
    with open(jpath, "w") as f:
        json.dump(results, f, indent=1)
    if not args.no_plot and ("S1" in scenarios or "S2" in scenarios):  # what the chart shows
        meta["chart"] = os.path.basename(ppath)
        meta["chart_kind"] = plot(results, jpath, ppath)
        with open(jpath, "w") as f:
            json.dump(results, f, indent=1)
    md = markdown(results)
    with open(mpath, "w") as f:
        f.write(md + "\n")
    print(md)
    log(f"bench-compare: wrote {jpath}, {mpath}" + (f", {ppath}" if meta.get("chart") else "")
        + f" in {meta['wall_s']:.0f} s")
    if errors:
        log(f"bench-compare: {len(errors)} run(s) reported errors: {errors[:5]}")
        sys.exit(1)


if __name__ == "__main__":
    main()
