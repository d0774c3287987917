#!/usr/bin/env python3
# What one greedy client can take from the others, with and without abide's
# fair shares: the attack of issue 11 ("one connection-happy client held
# every wait slot; everyone else got 503") and a publish flood, against a
# release binary started with the service's limits (prlimit --nofile=4096
# --as=512 MiB).
#
# For each configuration (no shares; --max-waiters-per-client 16 with
# --publish-rate 10 --publish-burst 20) and one auth file with two tokens:
#   1. the greedy token opens 600 connections, each holding a 20 s poll
#      (--max-waiters 512), and counts how each was answered at once;
#   2. the other token then asks for one poll (timeout 1 s): does it get a
#      slot (204) or 503?
#   3. the greedy token publishes 2,000 events back to back on 4 threads;
#      the other publishes once: 201 or not?
# It prints abide's threads, descriptors and resident memory (from /proc)
# before, at the peak of the held polls, and 3 s after the greedy client
# closed its connections.
#
# Loopback only; every loop is bounded; about 1 minute. Linux, Python 3
# standard library.
#
#   cargo build --release && python3 scripts/share-figures.py target/release/abide

import http.client
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

GREEDY = "abide_greedy-client-token"
OTHER = "abide_other-client-token"
HELD = 600
PUBLISHES = 2000


def figures(pid):
    status = open(f"/proc/{pid}/status").read()
    field = lambda name: int(next(l for l in status.splitlines() if l.startswith(name)).split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return f"{field('Threads:')} threads / {fds} fds / {field('VmRSS:') / 1024:.1f} MiB"


def request(addr, method, path, token, body=None, timeout=30):
    conn = http.client.HTTPConnection(*addr, timeout=timeout)
    headers = {"Authorization": f"Bearer {token}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.status


def token_hash(binary, token):
    out = subprocess.run([binary, "token", "hash"], input=token + "\n", capture_output=True, text=True, check=True)
    return out.stdout.strip()


def run(binary, auth, shares):
    flags = ["--max-waiters", "512", "--quiet", "--auth-file", auth]
    if shares:
        flags += ["--max-waiters-per-client", "16", "--publish-rate", "10", "--publish-burst", "20"]
    cmd = ["prlimit", "--nofile=4096:4096", "--as=536870912", binary, "serve", "--listen", "127.0.0.1:0"] + flags
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        addr_text = line.split("listening on http://")[1].split()[0]
        host, port = addr_text.rsplit(":", 1)
        addr = (host, int(port))
        pid = proc.pid
        print(f"\n== {'with' if shares else 'without'} shares: {' '.join(cmd[3:])}")
        print(f"   before:  {figures(pid)}")

        # 1. The greedy client holds as many polls as it can.
        sockets, statuses = [], {}
        request_bytes = (
            f"GET /channels/a/events?timeout=20 HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {GREEDY}\r\n\r\n"
        ).encode()
        for _ in range(HELD):
            s = socket.create_connection(addr)
            s.sendall(request_bytes)
            sockets.append(s)
        # Answered at once (429, 503) or held (no answer within 0.5 s).
        deadline = time.monotonic() + 3
        for s in sockets:
            s.settimeout(max(0.01, min(0.5, deadline - time.monotonic())))
            try:
                data = s.recv(64)
                code = data.split(b" ")[1].decode() if data else "closed"
            except socket.timeout:
                code = "held"
            statuses[code] = statuses.get(code, 0) + 1
        print(f"   greedy client's {HELD} polls: {dict(sorted(statuses.items()))}")
        print(f"   peak:    {figures(pid)}")

        # 2. Another client asks for a slot.
        other = request(addr, "GET", "/channels/b/events?timeout=1", OTHER)
        print(f"   the other client's poll: {other} ({'got a slot' if other == 204 else 'refused'})")

        # 3. The greedy client floods publishes; the other publishes once.
        counts, lock = {}, threading.Lock()

        def flood():
            conn = http.client.HTTPConnection(*addr, timeout=30)
            for i in range(PUBLISHES // 4):
                conn.request("POST", "/channels/a/events", body=str(i),
                             headers={"Authorization": f"Bearer {GREEDY}", "Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = http.client.HTTPConnection(*addr, timeout=30)
                with lock:
                    counts[resp.status] = counts.get(resp.status, 0) + 1
            conn.close()

        started = time.monotonic()
        threads = [threading.Thread(target=flood) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.monotonic() - started
        print(f"   greedy client's {PUBLISHES} publishes in {took:.1f} s: {dict(sorted(counts.items()))}")
        other = request(addr, "POST", "/channels/b/events", OTHER, body="1")
        print(f"   the other client's publish: {other}")

        for s in sockets:
            s.close()
        time.sleep(3)  # sync-ok: a fixed settle time before the last sample, as in edge2-figures.py
        print(f"   3 s after the greedy client left: {figures(pid)}")
        stats = http.client.HTTPConnection(*addr, timeout=10)
        stats.request("GET", "/stats", headers={"Authorization": f"Bearer {GREEDY}"})
        body = stats.getresponse().read().decode()
        refused = body.split('"requests_refused":')[1].split("}")[0] + "}"
        print(f"   /stats requests_refused: {refused}")
    finally:
        proc.kill()
        proc.wait()


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/abide"
    with tempfile.TemporaryDirectory() as dir:
        auth = os.path.join(dir, "auth")
        with open(auth, "w") as f:
            f.write(f"token greedy {token_hash(binary, GREEDY)} publish,subscribe,admin *\n")
            f.write(f"token other {token_hash(binary, OTHER)} publish,subscribe *\n")
        for shares in (False, True):
            run(binary, auth, shares)


if __name__ == "__main__":
    main()
