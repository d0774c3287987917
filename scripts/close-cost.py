#!/usr/bin/env python3
# What closing a connection after a refusal costs: the round trip of a
# refused request (abide finds its socket among its descriptors, then shuts
# it) beside an ordinary one, with N idle connections open. Loopback only.
#
#   cargo build --release && python3 scripts/close-cost.py target/release/abide 4000
import socket, subprocess, sys, time, re, resource
binary, n = sys.argv[1], int(sys.argv[2])
h = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; resource.setrlimit(resource.RLIMIT_NOFILE, (h, h))
p = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0", "--quiet"], stderr=subprocess.PIPE, text=True)
line = p.stderr.readline(); port = int(re.search(r":(\d+) ", line).group(1))
idle = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port)); s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); s.recv(4096); idle.append(s)
def rt(req, k=300):
    t0 = time.perf_counter()
    for _ in range(k):
        s = socket.create_connection(("127.0.0.1", port)); s.sendall(req)
        while s.recv(4096): pass
        s.close()
    return (time.perf_counter() - t0) / k * 1e6
ok = rt(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
bad = rt(b"POST /channels/a/events HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello")
fds = len(__import__("os").listdir(f"/proc/{p.pid}/fd"))
print(f"idle connections {n:5d}  abide descriptors {fds:5d}  healthz {ok:7.0f} us  refused+closed {bad:7.0f} us  extra {bad-ok:6.0f} us")
p.terminate(); p.wait()
