#!/usr/bin/env python3
"""xDS scale: Switchyard and Envoy fed the same snapshot by the same ADS server.

    ci/bench-xds-scale.py [--reps 3] [--api GRPC|DELTA_GRPC] [--clusters 10000] [--endpoints 10]
                       [--concurrency 1] [--changes 20] [--phase-s 5] [--only switchyard,envoy]
                       [--no-build] [--out bench/results]

Each repetition runs `switchyard-xds-scale` once per proxy, interleaved (S, E, S, E, ...):
full apply, RSS per endpoint, one-endpoint change latency, rr 64 B p99 without and with
10 EDS updates/s. Then `--fib-only` once (Switchyard's compose+compile and resource
validation in-process). Writes bench/results/<date>-xds-scale-<api>.{json,md} with medians
and min-max, and prints the table. Builds the workspace first unless --no-build; installs
Envoy (ci/install-deps) if ENVOY_BIN is not set.
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, **kw):
    return subprocess.run(cmd, cwd=ROOT, check=True, **kw)


def envoy_bin():
    if os.environ.get("ENVOY_BIN"):
        return os.environ["ENVOY_BIN"]
    run(["ci/install-deps"])
    return run(["ci/envoy-bin"], capture_output=True, text=True).stdout.strip()


def one(tool, proxy, args, path):
    cmd = [
        tool, "--proxy", proxy, "--api", args.api,
        "--clusters", str(args.clusters), "--endpoints", str(args.endpoints),
        "--concurrency", str(args.concurrency), "--changes", str(args.changes),
        "--phase-s", str(args.phase_s),
        "--json", path,
    ]
    print("+", " ".join(cmd), flush=True)
    run(cmd)
    with open(path) as f:
        return json.load(f)


METRICS = [
    ("full apply, ms", lambda r: r["full_apply_ms"]),
    ("EDS ACK after first push, ms", lambda r: r["eds_ack_ms"]),
    ("RSS per endpoint, B", lambda r: r["rss_per_endpoint_bytes"]),
    ("RSS after snapshot, MiB", lambda r: r["rss_after_bytes"] / 1048576),
    ("one-endpoint change p50, ms", lambda r: r["change_p50_ms"]),
    ("one-endpoint change max, ms", lambda r: r["change_max_ms"]),
    ("rr 64 B p99 quiet, us", lambda r: r["quiet"]["p99_us"]),
    ("rr 64 B p99 churn, us", lambda r: r["churn"]["p99_us"]),
    ("p99 churn / quiet", lambda r: r["p99_churn_over_quiet"]),
]


def cell(values):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.2f}" if med < 10 else f"{med:.1f}"
    fmt = (lambda v: f"{v:.2f}") if med < 10 else (lambda v: f"{v:.1f}")
    return f"{fmt(med)} ({fmt(min(values))}-{fmt(max(values))})"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--api", default="GRPC", choices=["GRPC", "DELTA_GRPC"])
    p.add_argument("--clusters", type=int, default=10000)
    p.add_argument("--endpoints", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--changes", type=int, default=20)
    p.add_argument("--phase-s", type=float, default=5.0, help="length of each rr phase")
    p.add_argument("--only", default="switchyard,envoy")
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--out", default="bench/results")
    args = p.parse_args()
    proxies = [x for x in args.only.split(",") if x]

    if not args.no_build:
        run(["cargo", "build", "--release", "--workspace"])
    tool = os.path.join(ROOT, "target/release/switchyard-xds-scale")
    if "envoy" in proxies:
        os.environ["ENVOY_BIN"] = envoy_bin()
    # SWITCHYARD_COMMIT names the build when the binaries come from elsewhere (--no-build).
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    commit = os.environ.get("SWITCHYARD_COMMIT") or git.stdout.strip() or "unknown"
    tmp = os.path.join(ROOT, "target", "xds-scale")
    os.makedirs(tmp, exist_ok=True)

    results = {x: [] for x in proxies}
    for rep in range(args.reps):
        for proxy in proxies:
            results[proxy].append(one(tool, proxy, args, os.path.join(tmp, f"{proxy}-{rep}.json")))
    fib_path = os.path.join(tmp, "fib.json")
    run([tool, "--fib-only", "--clusters", str(args.clusters), "--endpoints", str(args.endpoints),
         "--json", fib_path], stdout=subprocess.DEVNULL)
    with open(fib_path) as f:
        fib = json.load(f)

    date = datetime.date.today().isoformat()
    nproc = os.cpu_count()
    lines = [
        f"# xDS scale, {date}, Switchyard {commit}",
        "",
        f"`ci/bench-xds-scale.py --reps {args.reps} --api {args.api}`: {args.clusters} EDS clusters x "
        f"{args.endpoints} endpoints, {args.concurrency} worker(s), {nproc} CPUs, proxies unpinned; "
        f"median (min-max) of {args.reps} interleaved runs.",
        "",
        "| | " + " | ".join(proxies) + " |",
        "|---|" + "---|" * len(proxies),
    ]
    for name, get in METRICS:
        row = [cell([get(r) for r in results[x]]) for x in proxies]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    lines += [
        "",
        "Switchyard in-process (`switchyard-xds-scale --fib-only`): compose+compile of the whole "
        f"snapshot {fib['full_ms']:.1f} ms, after a one-endpoint change {fib['one_change_ms']:.2f} ms; "
        f"FIB {fib['fib_bytes_per_endpoint']:.0f} B per endpoint (RSS growth, stat blocks included); "
        f"decode+validate {fib['validate_clusters_ms']:.0f} ms for the clusters, "
        f"{fib['validate_assignments_ms']:.0f} ms for the assignments.",
    ]
    md = "\n".join(lines) + "\n"
    print(md)
    os.makedirs(os.path.join(ROOT, args.out), exist_ok=True)
    stem = os.path.join(ROOT, args.out, f"{date}-xds-scale-{args.api.lower()}")
    with open(stem + ".md", "w") as f:
        f.write(md)
    with open(stem + ".json", "w") as f:
        json.dump({"schema": "switchyard-xds-scale-compare/v1", "commit": commit, "args": vars(args),
                   "cpus": nproc, "runs": results, "fib": fib}, f, indent=1)
    print(f"wrote {stem}.md and .json")


if __name__ == "__main__":
    sys.exit(main())
