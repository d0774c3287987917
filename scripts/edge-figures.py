#!/usr/bin/env python3
# The HTTP edge tried as a hostile client would, against a release binary
# started with the service's descriptor limit and a 512 MiB address space:
# request smuggling, a bare CR in a header, an oversized body read by
# Python's http.client, a 1 MiB query and channel list (and how long other
# clients wait meanwhile), Transfer-Encoding: gzip; and the server's threads,
# descriptors and resident memory. Loopback only; it stops by itself.
#
#   cargo build --release && python3 scripts/edge-figures.py target/release/abide
import socket, subprocess, sys, time, re, threading, http.client, json
binary = sys.argv[1]
p = subprocess.Popen(["prlimit", "--nofile=4096:4096", "--as=536870912", binary, "serve", "--listen", "127.0.0.1:0", "--quiet", "--max-event-bytes", "1024"], stderr=subprocess.PIPE, text=True)
port = int(re.search(r":(\d+) ", p.stderr.readline()).group(1))
import os
def footprint():
    st = open(f"/proc/{p.pid}/status").read()
    f = lambda k: int(re.search(k + r":\s+(\d+)", st).group(1))
    return f"threads {f('Threads')}, descriptors {len(os.listdir(f'/proc/{p.pid}/fd'))}, resident {f('VmRSS')/1024:.1f} MiB"
print("footprint at start:", footprint())
def raw(data, wait=30):
    s = socket.create_connection(("127.0.0.1", port)); s.settimeout(wait)
    try: s.sendall(data)
    except OSError: pass
    out = b""
    try:
        while True:
            d = s.recv(65536)
            if not d: break
            out += d
    except OSError: pass
    return out
def healthz_worst_during(fn):
    worst = [0.0]; done = threading.Event()
    def probe():
        while not done.is_set():
            t = time.perf_counter(); raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); worst[0] = max(worst[0], time.perf_counter() - t)
    th = threading.Thread(target=probe); th.start()
    t = time.perf_counter(); out = fn(); took = time.perf_counter() - t
    done.set(); th.join()
    print("  footprint right after:", footprint())
    return took, worst[0], out
# 1. smuggling
raw(b'POST /channels/victim/events HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\n"v1"')
out = raw(b"POST /channels/a/events HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\nDELETE /channels/victim HTTP/1.1\r\nHost: x\r\n\r\n", 3)
statuses = re.findall(rb"HTTP/1.1 (\d+)", out)
victim = raw(b"GET /channels/victim HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")[:12]
print("smuggling: answers", [s.decode() for s in statuses], "victim after:", victim.decode())
# 2. bare CR in a header value
out = raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\rInjected: 1\r\n\r\n", 3)
print("bare CR in a header:", out[:12].decode(errors="replace"))
# 3. 413 read by http.client
c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
try: c.request("POST", "/channels/a/events", body=b"x" * 5000)
except OSError: pass
r = c.getresponse(); body = r.read()
print("http.client reads:", r.status, body[:60])
# 4. 1 MiB query
took, worst, out = healthz_worst_during(lambda: raw(("GET /channels/a/events?" + "&".join("x%d=1" % i for i in range(110000)) + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").encode(), 120))
print(f"1 MiB query: answered {out[:12].decode()} in {took:.2f} s; worst /healthz meanwhile {worst*1000:.0f} ms")
took, worst, out = healthz_worst_during(lambda: raw(("GET /events?channels=" + ",".join("c%d" % i for i in range(150000)) + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").encode(), 120))
print(f"1 MiB channel list: answered {out[:12].decode()} in {took:.2f} s; worst /healthz meanwhile {worst*1000:.0f} ms")
# 5. Transfer-Encoding: gzip
t = time.perf_counter(); out = raw(b"POST /channels/a/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 10)
print(f"Transfer-Encoding gzip: {out[:12].decode()} after {time.perf_counter()-t:.2f} s")
print("footprint at the end:", footprint())
p.terminate(); p.wait()
