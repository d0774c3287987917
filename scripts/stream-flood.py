#!/usr/bin/env python3
# 700 Server-Sent Event streams against a release abide under the service's
# limits (prlimit --nofile=4096 --as=512MiB, default --max-waiters 512): how
# many are refused, whether one publish reaches every open stream, what the
# process holds before, with the streams open and after the clients close,
# and how long until every slot is free again (a stream notices a client
# that left at its second write after it, so within two heartbeats).
# Loopback only, bounded. Usage:
#   python3 scripts/stream-flood.py target/release/abide HEARTBEAT_SECONDS
import socket, subprocess, sys, time, json, re
binary = sys.argv[1]
p = subprocess.Popen(["prlimit", "--nofile=4096:4096", "--as=536870912", binary, "serve", "--listen", "127.0.0.1:0", "--quiet", "--sse-heartbeat", sys.argv[2]], stderr=subprocess.PIPE, text=True)
line = p.stderr.readline(); port = int(re.search(r"127.0.0.1:(\d+)", line).group(1))
def fp():
    st = open(f"/proc/{p.pid}/status").read()
    th = int(re.search(r"Threads:\s+(\d+)", st).group(1)); rss = int(re.search(r"VmRSS:\s+(\d+)", st).group(1))
    import os; fds = len(os.listdir(f"/proc/{p.pid}/fd"))
    return th, fds, rss
def get(path):
    s = socket.create_connection(("127.0.0.1", port), timeout=10); s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while True:
        c = s.recv(65536)
        if not c: break
        data += c
    s.close(); return data.decode(errors="replace")
time.sleep(0.3)
before = fp()
socks = []; ok = 0; refused = 0
t0 = time.time()
for i in range(700):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET /channels/flood/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
    head = s.recv(4096).decode(errors="replace")
    if head.startswith("HTTP/1.1 200"): ok += 1; socks.append(s)
    elif " 503 " in head.split("\r\n")[0]: refused += 1; s.close()
    else: print("other:", head[:80]); s.close()
opened = time.time() - t0
during = fp()
health = get("/healthz").split("\r\n")[0]
# one publish reaches every open stream
t1 = time.time()
s = socket.create_connection(("127.0.0.1", port)); s.sendall(b'POST /channels/flood/events HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\n1'); s.recv(4096); s.close()
got = 0
for c in socks:
    c.settimeout(10); buf = b""
    while b"id: " not in buf:
        buf += c.recv(4096)
    got += 1
fan = time.time() - t1
for c in socks: c.close()
closed_at = time.time()
deadline = time.time() + 120
stats = {"streams": -1}
while time.time() < deadline:
    try:
        stats = json.loads(get("/stats").split("\r\n\r\n", 1)[1])
    except Exception:
        time.sleep(0.1); continue
    if stats["streams"] == 0: break
    time.sleep(0.1)
freed = time.time() - closed_at
time.sleep(3)
after = fp()
print(f"streams: {ok} open, {refused} refused with 503 (of 700) in {opened:.1f} s; one publish reached {got} of them in {fan*1000:.0f} ms; /healthz with them open: {health}")
print(f"threads/descriptors/resident KiB: before {before}, with the streams open {during}, 3 s after the last slot was freed {after}; every slot free {freed:.1f} s after the clients closed (streams in /stats: {stats['streams']})")
p.terminate(); p.wait()
