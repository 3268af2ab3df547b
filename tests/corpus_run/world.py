#!/usr/bin/env python3
"""The world a corpus file runs in (tests/corpus_run.rs), inside the test's network namespace.

An authoritative DNS server on 127.0.0.1:53 (UDP and TCP) that answers A queries for the names
given with --dns NAME=IP (any other type for those names: no data; other names: NXDOMAIN),
and echo backends: --tcp-echo IP:PORT, --udp-echo IP:PORT. Prints "ready" once every socket
is bound, then one line per DNS query ("query NAME TYPE") and per backend connection or
datagram ("tcp PEER" / "udp PEER"). Ended by the test, by PID.
"""
import argparse
import socket
import struct
import sys
import threading

A, AAAA = 1, 28
lock = threading.Lock()


def say(line):
    with lock:
        print(line, flush=True)


def parse_name(msg, i):
    labels = []
    while True:
        n = msg[i]
        if n == 0:
            return ".".join(labels), i + 1
        labels.append(msg[i + 1 : i + 1 + n].decode("ascii", "replace"))
        i += 1 + n


def answer(msg, records):
    if len(msg) < 12:
        return None
    ident, _flags, qdcount = struct.unpack("!HHH", msg[:6])
    if qdcount != 1:
        return None
    name, i = parse_name(msg, 12)
    qtype, qclass = struct.unpack("!HH", msg[i : i + 4])
    question = msg[12 : i + 4]
    say(f"query {name} {qtype}")
    ip = records.get(name.lower().rstrip("."))
    rcode = 0 if ip is not None else 3
    answers = b""
    if ip is not None and qtype == A and qclass == 1:
        answers = b"\xc0\x0c" + struct.pack("!HHIH", A, 1, 5, 4) + socket.inet_aton(ip)
    flags = 0x8400 | 0x0100 | rcode  # response, authoritative, recursion desired echoed
    header = struct.pack("!HHHHHH", ident, flags, 1, 1 if answers else 0, 0, 0)
    return header + question + answers


def dns_udp(records):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 53))
    def run():
        while True:
            msg, peer = s.recvfrom(4096)
            reply = answer(msg, records)
            if reply:
                s.sendto(reply, peer)
    return run


def dns_tcp(records):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 53))
    s.listen(16)
    def serve(c):
        with c:
            while True:
                head = c.recv(2)
                if len(head) < 2:
                    return
                (n,) = struct.unpack("!H", head)
                msg = b""
                while len(msg) < n:
                    part = c.recv(n - len(msg))
                    if not part:
                        return
                    msg += part
                reply = answer(msg, records)
                if reply:
                    c.sendall(struct.pack("!H", len(reply)) + reply)
    def run():
        while True:
            c, _ = s.accept()
            threading.Thread(target=serve, args=(c,), daemon=True).start()
    return run


def addr(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


def tcp_echo(where):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(addr(where))
    s.listen(64)
    def serve(c, peer):
        say(f"tcp {peer[0]}")
        with c:
            while True:
                data = c.recv(65536)
                if not data:
                    return
                c.sendall(data)
    def run():
        while True:
            c, peer = s.accept()
            threading.Thread(target=serve, args=(c, peer), daemon=True).start()
    return run


def udp_echo(where):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(addr(where))
    def run():
        while True:
            data, peer = s.recvfrom(65536)
            say(f"udp {peer[0]}")
            s.sendto(data, peer)
    return run


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dns", action="append", default=[])
    p.add_argument("--tcp-echo", action="append", default=[])
    p.add_argument("--udp-echo", action="append", default=[])
    a = p.parse_args()
    records = {}
    for d in a.dns:
        name, ip = d.split("=", 1)
        records[name.lower()] = ip
    servers = [dns_udp(records), dns_tcp(records)]
    servers += [tcp_echo(w) for w in a.tcp_echo]
    servers += [udp_echo(w) for w in a.udp_echo]
    for run in servers:
        threading.Thread(target=run, daemon=True).start()
    say("ready")
    threading.Event().wait()


if __name__ == "__main__":
    sys.exit(main())
