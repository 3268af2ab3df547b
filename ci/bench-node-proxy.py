#!/usr/bin/env python3
"""The node proxy's cost: a pod's connection captured through Switchyard vs forwarded by the
kernel, in network namespaces this script creates (as tests/node_proxy.rs builds them).

    pod A 10.244.1.2 ─ veth ─ node (forwarding; switchyard as UID 1337 + capture) ─ veth ─ pod B 10.244.2.2

Targets, measured from pod A with switchyard-bench against `serve --echo` in pod B:
  forwarded  A -> 10.244.2.2:8080: routed by the node's kernel (capture excludes port 8080)
  captured   A -> 10.96.0.10:80 (a VIP that exists nowhere): REDIRECT to 15001, Switchyard
             matches the original destination and connects to B

Tests: throughput through the echo (1 connection), 64 B request/response (1 connection,
closed loop: p50 and p99), and connections per second (8 at a time). The targets alternate
within every repetition; the table shows medians over the repetitions and captured/forwarded.
Nothing is pinned: every process shares the machine's CPUs (the placement is printed).

    ci/bench-node-proxy.py [--reps 3] [--duration 3] [--no-build] [--json FILE]

Needs root, iproute2, iptables. Removes its namespaces and stops its processes by PID.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROXY = os.path.join(ROOT, "target/release/switchyard")
BENCH = os.path.join(ROOT, "target/release/switchyard-bench")
TAG = f"sybn{os.getpid()}"
NODE, POD_A, POD_B = f"{TAG}n", f"{TAG}a", f"{TAG}b"
TARGETS = {"forwarded": "10.244.2.2:8080", "captured": "10.96.0.10:80"}
TESTS = [
    ("throughput (echo, 1 conn)", "Gbit/s", "gbit_s"),
    ("rr 64 B", "req/s", "rr_rate"),
    ("rr 64 B p50", "us", "rr_p50"),
    ("rr 64 B p99", "us", "rr_p99"),
    ("cps (8 at a time)", "conn/s", "cps"),
]

BOOTSTRAP = """admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: 15000 }
static_resources:
  listeners:
  - name: virtualOutbound
    address:
      socket_address: { address: 0.0.0.0, port_value: 15001 }
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst
    filter_chains:
    - filter_chain_match:
        prefix_ranges: [{ address_prefix: 10.96.0.10, prefix_len: 32 }]
        destination_port: 80
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: web
          cluster: web
  clusters:
  - name: web
    connect_timeout: 1s
    load_assignment:
      cluster_name: web
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 10.244.2.2, port_value: 8080 } } }
"""


def sh(*args, check=True, **kw):
    return subprocess.run(args, check=check, capture_output=True, text=True, **kw)


def ns(name, *args, check=True):
    return sh("ip", "netns", "exec", name, *args, check=check)


def topology():
    for n in (NODE, POD_A, POD_B):
        sh("ip", "netns", "add", n)
        ns(n, "ip", "link", "set", "lo", "up")
    ns(NODE, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    for i, pod in ((1, POD_A), (2, POD_B)):
        here, there = f"{TAG}x{i}", f"{TAG}y{i}"
        sh("ip", "link", "add", here, "netns", NODE, "type", "veth", "peer", "name", there,
           "netns", pod)
        ns(NODE, "ip", "addr", "add", f"10.244.{i}.1/24", "dev", here)
        ns(NODE, "ip", "link", "set", here, "up")
        ns(pod, "ip", "addr", "add", f"10.244.{i}.2/24", "dev", there)
        ns(pod, "ip", "link", "set", there, "up")
        ns(pod, "ip", "route", "add", "default", "via", f"10.244.{i}.1")


def cleanup(procs):
    for p in procs:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    for n in (NODE, POD_A, POD_B):
        sh("ip", "netns", "del", n, check=False)


def wait_listening(name, addr, timeout_s=10.0):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if addr in ns(name, "ss", "-ltn", check=False).stdout:
            return
        time.sleep(0.05)
    sys.exit(f"bench-node-proxy: nothing listens on {addr} in {name}")


def bench(mode, target, duration, extra):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        out = ns(POD_A, BENCH, mode, "--target", target, "--duration", f"{duration}s", "-q",
                 "--json", f.name, *extra, check=False)
        try:
            report = json.load(open(f.name))
        except (OSError, ValueError):
            sys.exit(f"bench-node-proxy: {mode} {target} wrote no report: {out.stderr}")
    if report["errors_total"]:
        sys.exit(f"bench-node-proxy: {mode} {target}: errors {report['error_samples']}")
    return report


def measure(target, duration):
    tput = bench("throughput", target, duration, ["--direction", "both"])
    rr = bench("rr", target, duration, ["--msg", "64"])
    cps = bench("cps", target, duration, ["--concurrency", "8"])
    return {
        "gbit_s": tput["results"]["gbit_s"],
        "rr_rate": rr["results"]["requests_per_s"],
        "rr_p50": rr["latency_us"]["p50_us"],
        "rr_p99": rr["latency_us"]["p99_us"],
        "cps": cps["results"]["connections_per_s"],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench-node-proxy: needs root (network namespaces, iptables)")
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "switchyard",
                        "-p", "switchyard-bench"], cwd=ROOT, check=True)
    procs = []
    workdir = tempfile.mkdtemp(prefix="sy-bench-node-")
    os.chmod(workdir, 0o755)
    config = os.path.join(workdir, "node.yaml")
    with open(config, "w") as f:
        f.write(BOOTSTRAP)
    os.chmod(config, 0o644)
    try:
        topology()
        procs.append(subprocess.Popen(
            ["ip", "netns", "exec", POD_B, BENCH, "serve", "--echo", "10.244.2.2:8080"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_listening(POD_B, "10.244.2.2:8080")
        procs.append(subprocess.Popen(
            ["ip", "netns", "exec", NODE, "setpriv", "--reuid=1337", "--regid=1337",
             "--clear-groups", PROXY, "run", "-c", config, "--concurrency", "1", "-l", "warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_listening(NODE, "0.0.0.0:15001")
        sh(PROXY, "capture", "install", "--netns", NODE, "--exclude-port", "8080")
        runs = {t: [] for t in TARGETS}
        for rep in range(args.reps):
            order = list(TARGETS) if rep % 2 == 0 else list(reversed(TARGETS))
            for t in order:
                runs[t].append(measure(TARGETS[t], args.duration))
                print(f"rep {rep + 1}/{args.reps} {t}: {runs[t][-1]}", file=sys.stderr)
        nproc = os.cpu_count()
        print(f"\nnode proxy vs kernel forwarding: {args.reps} reps x {args.duration:g} s, "
              f"interleaved; placement: unpinned, client, proxy and echo share {nproc} CPUs; "
              f"Switchyard --concurrency 1, REDIRECT capture\n")
        print("| test | unit | forwarded | captured (Switchyard) | captured / forwarded |")
        print("|---|---|---|---|---|")
        summary = {}
        for name, unit, key in TESTS:
            med = {t: statistics.median(r[key] for r in runs[t]) for t in TARGETS}
            ratio = med["captured"] / med["forwarded"] if med["forwarded"] else float("nan")
            summary[key] = {**med, "ratio": ratio}
            print(f"| {name} | {unit} | {med['forwarded']:.1f} | {med['captured']:.1f} | "
                  f"{ratio:.2f} |")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"reps": args.reps, "duration_s": args.duration, "cpus": nproc,
                           "runs": runs, "median": summary}, f, indent=2)
    finally:
        sh(PROXY, "capture", "remove", "--netns", NODE, check=False)
        cleanup(procs)


if __name__ == "__main__":
    main()
