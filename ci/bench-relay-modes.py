#!/usr/bin/env python3
"""Relay modes side by side: direct vs `--relay-mode buffer-ring` vs `--relay-mode splice`.

Loopback, one worker (`--concurrency 1`), two placements:
  shared  client, backends and proxy all on CPU 0 (`taskset -c 0`): the proxy's CPU cost
  split   client and backends on CPU 0, the proxy on CPU 1 (io-wq threads inherit it)
Per placement and target: iperf3 1 stream, iperf3 -P 4, and 64-byte request/response
(`switchyard-bench rr`, closed loop, 1 connection) against `switchyard-bench serve --echo`.
Runs are interleaved (the target order rotates every repetition); the table shows the median
and min-max over the repetitions.

    ci/bench-relay-modes.py [--reps 3] [--duration 5] [--port-base 15900] [--no-build] [--json F]

Needs iperf3, taskset and 2 CPUs. Every process it starts is stopped by its PID.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROXY = os.path.join(ROOT, "target/release/switchyard")
BENCH = os.path.join(ROOT, "target/release/switchyard-bench")
TARGETS = ["direct", "buffer-ring", "splice"]
PLACEMENTS = {"shared": "0", "split": "1"}  # CPU of the proxy; clients/backends on CPU 0
TESTS = [
    ("iperf3 1 stream", "Gbit/s", "iperf1"),
    ("iperf3 -P 4", "Gbit/s", "iperf4"),
    ("rr 64 B", "req/s", "rr_rate"),
    ("rr 64 B p50", "us", "rr_p50"),
    ("rr 64 B p99", "us", "rr_p99"),
]

CONFIG = """admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin} }}
static_resources:
  listeners:
  - name: bulk
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {bulk} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: bulk
          cluster: iperf
  - name: rr
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {rr} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: rr
          cluster: echo
  clusters:
  - name: iperf
    load_assignment:
      cluster_name: iperf
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {iperf} }} }} }}
  - name: echo
    load_assignment:
      cluster_name: echo
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {echo} }} }} }}
"""


def stop(p):
    """SIGTERM the process we started (by its PID), SIGKILL if it lingers."""
    if p is None or p.poll() is not None:
        return
    os.kill(p.pid, signal.SIGTERM)
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()


def wait_ready(admin_port, proc, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"switchyard exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("switchyard did not become ready")


def iperf(port, streams, duration):
    cmd = ["taskset", "-c", "0", "iperf3", "-c", "127.0.0.1", "-p", str(port),
           "-t", str(duration), "-J"]
    if streams > 1:
        cmd += ["-P", str(streams)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30)
    report = json.loads(out.stdout)
    if "error" in report:
        raise RuntimeError(f"iperf3: {report['error']}")
    return report["end"]["sum_received"]["bits_per_second"] / 1e9


def rr(port, duration, tmp):
    path = os.path.join(tmp, "rr.json")
    out = subprocess.run(["taskset", "-c", "0", BENCH, "rr", "--target", f"127.0.0.1:{port}",
                          "--msg", "64", "--duration", str(duration), "-q", "--json", path],
                         capture_output=True, text=True, timeout=duration + 30)
    with open(path) as f:
        report = json.load(f)
    if out.returncode != 0 or report["errors_total"]:
        raise RuntimeError(f"rr errors: {report['error_samples']}")
    lat = report["latency_us"]
    return report["results"]["requests_per_s"], lat["p50_us"], lat["p99_us"]


def fmt(values, unit):
    med = statistics.median(values)
    digits = 1 if unit == "Gbit/s" else 0
    if unit == "req/s":
        return f"{med / 1000:.1f}k ({min(values) / 1000:.1f}-{max(values) / 1000:.1f}k)"
    return f"{med:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--port-base", type=int, default=15900)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--json", help="write every sample here")
    args = ap.parse_args()
    # SIGTERM unwinds like ^C, so the processes started below are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    load_before = os.getloadavg()[0]
    b = args.port_base
    ports = dict(admin=b, bulk=b + 1, iperf=b + 2, rr=b + 3, echo=b + 4)
    tmp = tempfile.mkdtemp(prefix="bench-relay-modes.")
    cfg = os.path.join(tmp, "switchyard.yaml")
    with open(cfg, "w") as f:
        f.write(CONFIG.format(**ports))

    samples = {}  # (placement, target, key) -> [values]
    started = []
    try:
        iperf_srv = subprocess.Popen(["taskset", "-c", "0", "iperf3", "-s", "-p",
                                      str(ports["iperf"])],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(iperf_srv)
        echo = subprocess.Popen(["taskset", "-c", "0", BENCH, "serve", "--echo",
                                 f"127.0.0.1:{ports['echo']}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(echo)
        time.sleep(0.5)
        for rep in range(args.reps):
            order = TARGETS[rep % 3:] + TARGETS[:rep % 3]
            for placement, cpu in PLACEMENTS.items():
                for target in order:
                    proxy = None
                    if target == "direct":
                        bulk, rr_port = ports["iperf"], ports["echo"]
                    else:
                        proxy = subprocess.Popen(
                            ["taskset", "-c", cpu, PROXY, "run", "-c", cfg, "--concurrency",
                             "1", "--relay-mode", target, "--drain-time-s", "0", "-l", "warn"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        started.append(proxy)
                        wait_ready(ports["admin"], proxy)
                        bulk, rr_port = ports["bulk"], ports["rr"]
                    try:
                        res = {"iperf1": iperf(bulk, 1, args.duration),
                               "iperf4": iperf(bulk, 4, args.duration)}
                        res["rr_rate"], res["rr_p50"], res["rr_p99"] = rr(
                            rr_port, args.duration, tmp)
                    finally:
                        stop(proxy)
                    for k, v in res.items():
                        samples.setdefault((placement, target, k), []).append(v)
                    print(f"rep {rep + 1}/{args.reps} {placement:6} {target:11} "
                          + " ".join(f"{k}={v:.2f}" for k, v in res.items()),
                          file=sys.stderr, flush=True)
    finally:
        for p in reversed(started):
            stop(p)

    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"placement": p, "target": t, "metric": k, "values": v}
                       for (p, t, k), v in samples.items()], f, indent=1)
    print(f"\n{args.reps} interleaved runs of {args.duration} s each; median (min-max); "
          f"load average before: {load_before:.2f}, after: {os.getloadavg()[0]:.2f} "
          "(other work on the machine skews every figure).\n")
    print("| placement | test | " + " | ".join(TARGETS) + " |")
    print("|---|---|" + "---|" * len(TARGETS))
    for placement in PLACEMENTS:
        for name, unit, key in TESTS:
            cells = [fmt(samples[(placement, t, key)], unit) for t in TARGETS]
            print(f"| {placement} | {name} ({unit}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
