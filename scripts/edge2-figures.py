#!/usr/bin/env python3
# What fourteen resource attacks on the HTTP edge cost a release binary, and
# whether it still serves afterwards: idle connection floods, oversized
# declared bodies, HTTP/2.0 request lines, trickled bodies, slow readers of
# large answers, deep pipelines, 10 MB of headers, channel and storage
# floods, and pipelined ordering.
#
# Each attack gets a fresh abide process on 127.0.0.1, port 0, started with
# the service's limits: `prlimit --nofile=4096:4096 --as=536870912` and, when
# /sys/fs/cgroup/pids is a writable cgroup-v1 pids hierarchy, a fresh pids
# cgroup with pids.max=1536 (the script says which limits applied). For each
# attack it prints the server's threads, descriptors and resident memory
# (from /proc) before, at the peak (sampled every 50 ms from the attack's
# start until the settle sample), 3 s after the attacking client stopped,
# and, where resources are only released by --idle-timeout, once that has
# passed too; whether /healthz answers 200 afterwards (after a flood: how
# long until it does again, up to 40 s) and the process is alive; the
# attack's own figures and a one-line verdict. Attacks that involve idle
# connections, held polls or slow bodies run with --idle-timeout 10
# --max-timeout 8 (and --default-timeout 8) to keep the run short.
#
# Loopback only; every loop is bounded. The whole run takes about 8 minutes;
# attacks that would pass 11.5 minutes are skipped. Needs root only for the
# pids cgroup; without it the attacks run with the prlimit limits alone.
# Linux, Python 3 standard library.
#
#   cargo build --release && python3 scripts/edge2-figures.py target/release/abide
#   EDGE2_ONLY=1,5 python3 scripts/edge2-figures.py target/release/abide    (some attacks only)
#   EDGE2_NO_CGROUP=1 python3 scripts/edge2-figures.py target/release/abide (prlimit limits only)
import collections, errno, json, os, re, resource, select, shlex, signal, socket, subprocess, sys, threading, time

if len(sys.argv) != 2:
    sys.exit("usage: edge2-figures.py path/to/abide")
BINARY = sys.argv[1]
HOST = "127.0.0.1"
LIMITS = ["prlimit", "--nofile=4096:4096", "--as=536870912"]
PIDS_MAX = 1536
SETTLE = 3.0          # seconds after the attacking client stopped before the "after" sample
IDLE = 10             # --idle-timeout for the attacks that need one to pass
SHORT = ["--idle-timeout", str(IDLE), "--max-timeout", "8", "--default-timeout", "8"]
BUDGET = 11.5 * 60    # skip the remaining attacks rather than run past this
STARTED = time.monotonic()
MiB = 1024 * 1024


def log(*args):
    print(f"[{time.monotonic() - STARTED:5.0f} s]", *args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the server

def supported_flags():
    help_text = subprocess.run([BINARY, "serve", "--help"], capture_output=True, text=True, timeout=10)
    return set(re.findall(r"--[a-z][a-z-]+", help_text.stdout + help_text.stderr))


SUPPORTED = supported_flags()


def usable(flags):
    """The flags this binary knows, and those it does not (dropped with their values)."""
    kept, dropped, i = [], [], 0
    while i < len(flags):
        n = 1 if flags[i] in ("--quiet", "--no-demo") else 2
        (kept if flags[i] in SUPPORTED else dropped).extend(flags[i:i + n])
        i += n
    return kept, dropped


class PidsCgroup:
    """abide-figures-<pid> under the cgroup-v1 pids hierarchy, with one child per attack."""

    def __init__(self):
        self.root = f"/sys/fs/cgroup/pids/abide-figures-{os.getpid()}"
        self.why_not = None
        try:
            if not os.path.exists("/sys/fs/cgroup/pids/cgroup.procs"):
                raise OSError("/sys/fs/cgroup/pids is not a cgroup-v1 pids hierarchy")
            os.mkdir(self.root)
            probe = self.child("probe")
            self.remove(probe)
        except OSError as e:
            self.why_not = str(e)
            self.close()

    def child(self, name):
        path = f"{self.root}/{name}"
        os.mkdir(path)
        with open(f"{path}/pids.max", "w") as f:
            f.write(str(PIDS_MAX))
        return path

    def remove(self, path):
        for _ in range(50):
            try:
                os.rmdir(path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)   # the killed process's tasks are still leaving

    def close(self):
        if os.path.isdir(self.root):
            self.remove(self.root)


def read_int(path):
    try:
        with open(path) as f:
            return int(f.read().split()[-1])
    except (OSError, ValueError):
        return None


class Abide:
    """One abide process under the limits; its port read from the first stderr line."""

    def __init__(self, flags, cgroup):
        self.cgroup = cgroup
        self.args = [BINARY, "serve", "--listen", f"{HOST}:0", "--quiet"] + flags
        self.command = LIMITS + self.args
        full = self.command
        if cgroup:   # join the cgroup first, so that every thread abide starts is counted
            full = ["sh", "-c", 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"', "sh", cgroup] + self.command
        self.p = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.pid = self.p.pid     # sh and prlimit exec, so this is abide's pid
        # The startup line says where abide listens (notes may follow it).
        line, deadline = "", time.time() + 10
        while "listening on" not in line and time.time() < deadline:
            if not select.select([self.p.stderr], [], [], max(0.0, deadline - time.time()))[0]:
                break
            line = self.p.stderr.readline().decode(errors="replace")
            if not line:
                break
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if not m:
            self.stop()
            raise RuntimeError(f"abide did not start: {line.strip() or 'no output'} (exit status {self.p.poll()})")
        self.port = int(m.group(1))
        self.lines = []           # what abide wrote on stderr after its first line (the first 2,000 lines)
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for raw in self.p.stderr:
            if len(self.lines) < 2000:
                self.lines.append(raw.decode(errors="replace").rstrip())

    def panics(self):
        """Each distinct panic on stderr (location and message), with how often it came."""
        found = collections.Counter()
        for i, line in enumerate(self.lines):
            if "panicked at" in line:
                message = self.lines[i + 1] if i + 1 < len(self.lines) else ""
                found[re.sub(r"thread '[^']*'( \(\d+\))?", "thread", line) + " " + message] += 1
        return [f"{n}× {text}" for text, n in found.most_common(4)]

    def alive(self):
        return self.p.poll() is None

    def footprint(self):
        return footprint(self.pid)

    def pids_figures(self):
        if not self.cgroup:
            return ""
        return f"pids cgroup: peak {read_int(self.cgroup + '/pids.peak')} of {PIDS_MAX}, limit hit {read_int(self.cgroup + '/pids.events')} times"

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(4)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def footprint(pid):
    """Threads, open descriptors, resident and peak resident KiB of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            st = f.read()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    if "VmRSS" not in st:   # a zombie
        return None
    get = lambda k: int(re.search(k + r":\s+(\d+)", st).group(1))
    return {"threads": get("Threads"), "fds": fds, "rss": get("VmRSS"), "hwm": get("VmHWM")}


def fmt(fp):
    if fp is None:
        return "–"
    if fp == "dead":
        return "(process gone)"
    return f"{fp['threads']} / {fp['fds']} / {fp['rss'] / 1024:.1f} MiB"


def socket_waiters(pid):
    """abide's own named threads (writers, waiters, ...) asleep in a socket call: their names, counted."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            main = f.read().strip()
        found = collections.Counter()
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{pid}/task/{task}/wchan") as f:
                wchan = f.read().strip()
            if comm != main and wchan in ("wait_woken", "sk_stream_wait_memory"):
                found[comm] += 1
        return dict(found)
    except OSError:
        return {}


class Sampler(threading.Thread):
    """The highest threads, descriptors and resident memory seen, every 50 ms."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, None, threading.Event()

    def run(self):
        while not self.done.is_set():
            self.take(footprint(self.pid))
            time.sleep(0.05)

    def take(self, fp):
        if fp:
            self.peak = fp if self.peak is None else {k: max(self.peak[k], fp[k]) for k in fp}

    def finish(self):
        self.done.set()
        self.join()
        self.take(footprint(self.pid))
        return self.peak


class Measure:
    """What an attack calls: begin() when the attack starts, end() when its client has stopped,
    settle() for the sample SETTLE s later, after_idle() for one after --idle-timeout has passed."""

    def __init__(self, srv):
        self.srv = srv
        self.before = self.during = self.after = self.idle = None
        self.sampler = None
        self.ended = None

    def begin(self):
        self.before = self.srv.footprint()
        self.sampler = Sampler(self.srv.pid)
        self.sampler.start()

    def end(self):
        if self.ended is None:
            self.ended = time.monotonic()

    def settle(self):
        self.end()
        time.sleep(max(0.0, self.ended + SETTLE - time.monotonic()))
        self.after = self.srv.footprint() or "dead"
        if self.sampler:
            self.during = self.sampler.finish()
        return self.after

    def after_idle(self):
        if self.after is None:
            self.settle()
        time.sleep(max(0.0, self.ended + IDLE + 2 - time.monotonic()))
        self.idle = self.srv.footprint() or "dead"
        return self.idle

    def recovery(self, limit=40):
        """How long after the attacking client stopped /healthz answered 200 again (tried every 2 s up to `limit` s)."""
        while True:
            status, _, _ = timed_request(self.srv.port, HEALTHZ, 2.0)
            since = time.monotonic() - self.ended
            if status == 200:
                return f"/healthz answers again {since:.0f} s after the client stopped"
            if since > limit or not self.srv.alive():
                return f"/healthz still not answering {since:.0f} s after the client stopped"
            time.sleep(2)

    def last(self):
        return self.idle or self.after

    def released(self, rss_slack_mib=8):
        """Whether the last sample is back near the one before the attack."""
        b, a = self.before, self.last()
        if not b or not isinstance(a, dict):
            return False
        return a["threads"] <= b["threads"] + 4 and a["fds"] <= b["fds"] + 4 and a["rss"] <= b["rss"] + rss_slack_mib * 1024

    def release_text(self):
        """Whether the last sample is back near the one before the attack, and by how much it is not."""
        b, a = self.before, self.last()
        if not isinstance(a, dict) or not b:
            return "process gone" if a == "dead" else "no sample"
        return (("released" if self.released() else "not released") + " by the last sample ("
                + f"{a['threads'] - b['threads']:+d} threads, {a['fds'] - b['fds']:+d} descriptors, "
                + f"{(a['rss'] - b['rss']) / 1024:+.1f} MiB resident against before)")

    def peak_growth_mib(self):
        if not self.before or not self.during:
            return float("nan")
        return (self.during["rss"] - self.before["rss"]) / 1024


# ---------------------------------------------------------------- raw sockets

def connect(port, timeout=10.0, rcvbuf=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:   # before connect, so that the advertised window stays small
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect((HOST, port))
    return s


def send_nb(sock, data, seconds):
    """Write as much of data as the peer takes within `seconds`, ignoring errors; returns bytes written."""
    sock.setblocking(False)
    view, sent, deadline = memoryview(data), 0, time.monotonic() + seconds
    try:
        while sent < len(data) and time.monotonic() < deadline:
            try:
                sent += sock.send(view[sent:sent + 262144])
            except BlockingIOError:
                select.select([], [sock], [], 0.05)
    except OSError:
        pass
    return sent


def read_available(sock, wait=0.0, limit=1 << 30):
    """What the peer has sent (at most `limit` bytes, waiting up to `wait` s for the first),
    and the connection's state as we see it: open, closed (end of file) or reset."""
    out = bytearray()
    sock.setblocking(False)
    if wait:
        select.select([sock], [], [], wait)
    try:
        while len(out) < limit:
            d = sock.recv(min(65536, limit - len(out)))
            if not d:
                return bytes(out), "closed"
            out += d
    except BlockingIOError:
        return bytes(out), "open"
    except OSError:
        return bytes(out), "reset"
    return bytes(out), "open"


def parse_responses(buf):
    """Split the complete HTTP/1.x responses off the front of buf: ([(status, head, body)], rest)."""
    out, pos = [], 0
    while True:
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0:
            break
        head = bytes(buf[pos:end])
        m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
        if not m:
            raise ValueError(f"not an HTTP response: {head[:40]!r}")
        start = end + 4
        if re.search(rb"(?i)\r\ntransfer-encoding:[^\r]*chunked", head):
            p, body, complete = start, bytearray(), False
            while True:
                e = buf.find(b"\r\n", p)
                if e < 0:
                    break
                size = int(bytes(buf[p:e]).split(b";")[0], 16)
                if len(buf) < e + 2 + size + 2:
                    break
                body += buf[e + 2:e + 2 + size]
                p = e + 2 + size + 2
                if size == 0:
                    complete = True
                    break
            if not complete:
                break
            body, stop = bytes(body), p
        else:
            cl = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            n = int(cl.group(1)) if cl else 0    # no length: 1xx, 204, or tiny_http's bare 400
            if len(buf) < start + n:
                break
            body, stop = bytes(buf[start:start + n]), start + n
        out.append((int(m.group(1)), head, body))
        pos = stop
    return out, buf[pos:]


def timed_request(port, data, timeout=5.0):
    """One request on a fresh connection: (final status or None, seconds to its status line, note).
    Interim 1xx answers are skipped, and named in the note."""
    t = time.monotonic()
    try:
        s = connect(port, timeout)
    except OSError as e:
        return None, time.monotonic() - t, f"connect failed: {e}"
    buf, interim = bytearray(), []
    with s:
        try:
            s.sendall(data)
        except OSError:
            pass          # the answer (a 413, say) may still have come
        try:
            while True:
                m = re.match(rb"HTTP/1\.[01] (\d{3})[^\r]*\r\n", buf)
                if m and m.group(1).startswith(b"1") and b"\r\n\r\n" in buf:
                    interim.append(m.group(1).decode())
                    del buf[:buf.index(b"\r\n\r\n") + 4]
                    continue
                if m:
                    break
                s.settimeout(max(0.1, t + timeout - time.monotonic()))
                d = s.recv(4096)
                if not d:
                    break
                buf += d
        except OSError as e:
            if not buf:
                return None, time.monotonic() - t, "no answer: " + ("timed out" if isinstance(e, socket.timeout) else str(e))
    took = time.monotonic() - t
    note = f" (after {', '.join(interim)})" if interim else ""
    m = re.match(rb"HTTP/1\.[01] (\d{3})", buf)
    return (int(m.group(1)), took, note) if m else (None, took, f"no status line ({bytes(buf[:30])!r}){note}")


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def healthz(port, timeout=5.0):
    status, took, note = timed_request(port, HEALTHZ, timeout)
    return f"{status} in {took * 1000:.0f} ms{note}" if status else note


def get_stats(port):
    try:
        s = connect(port, 5)
        with s:
            s.sendall(b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            buf = bytearray()
            while True:
                d = s.recv(65536)
                if not d:
                    break
                buf += d
                done, _ = parse_responses(buf)
                if done:
                    return json.loads(done[0][2])
    except (OSError, ValueError):
        pass
    return {}


def publish_req(channel, body):
    return (f"POST /channels/{channel}/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def pipeline(port, requests, window=32, timeout=20.0):
    """Send requests on one keep-alive connection, at most `window` unanswered at a time.
    Returns one status per request (None when no answer came)."""
    statuses, sent, buf = [], 0, bytearray()
    try:
        s = connect(port, timeout)
    except OSError:
        return [None] * len(requests)
    with s:
        try:
            while len(statuses) < len(requests):
                if sent < len(requests) and sent - len(statuses) < window:
                    batch = requests[sent:len(statuses) + window]
                    s.sendall(b"".join(batch))
                    sent += len(batch)
                d = s.recv(262144)
                if not d:
                    break
                buf += d
                got, buf = parse_responses(buf)
                statuses += [g[0] for g in got]
        except (OSError, ValueError):
            pass
    return statuses + [None] * (len(requests) - len(statuses))


def parallel(fn, arg_lists):
    """fn(*args) for every args in its own thread; the results in order."""
    results = [None] * len(arg_lists)

    def run(i, args):
        results[i] = fn(*args)

    threads = [threading.Thread(target=run, args=(i, a)) for i, a in enumerate(arg_lists)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def counts(statuses):
    c = collections.Counter("no answer" if s is None else s for s in statuses)
    return ", ".join(f"{n}× {s}" for s, n in sorted(c.items(), key=lambda kv: -kv[1]))


TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
              "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING"}


def server_side(port, client):
    """From /proc/net/tcp: the state of abide's end of our connection, the bytes it has written that
    our kernel has not acknowledged, and the bytes our kernel holds that we have not read yet."""
    mine = client.getsockname()[1]
    state, unacked, unread = "gone", 0, 0
    with open("/proc/net/tcp") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 5:
                continue
            if parts[1].endswith(f":{port:04X}") and parts[2].endswith(f":{mine:04X}"):
                state, unacked = TCP_STATES.get(parts[3], parts[3]), int(parts[4].split(":")[0], 16)
            elif parts[1].endswith(f":{mine:04X}") and parts[2].endswith(f":{port:04X}"):
                unread = int(parts[4].split(":")[1], 16)
    return state, unacked, unread


class Flood:
    """n connections opened as fast as possible (non-blocking), `payload` sent on each once it is
    connected (then closed at once when close_after_send), held `hold` s while what the server sends is
    read, then all closed. /healthz is tried from a fresh client at the `probes` offsets (s after the
    opening phase)."""

    def __init__(self, port, n, payload=None, hold=0.0, close_after_send=False, probes=(), open_limit=10.0):
        self.port, self.n = port, n
        self.opened = self.failed = self.server_closed = 0
        self.first_lines = collections.Counter()
        self.errors = collections.Counter()
        self.probes = []
        socks, poller = {}, select.poll()
        t0 = time.monotonic()
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            err = s.connect_ex((HOST, port))
            if err not in (0, errno.EINPROGRESS):
                self.failed += 1
                self.errors[errno.errorcode.get(err, err)] += 1
                s.close()
                continue
            socks[s.fileno()] = [s, "connecting", bytearray()]   # socket, state, what the server sent
            poller.register(s, select.POLLOUT)
        connecting = len(socks)

        def handle(deadline, until_connected):
            nonlocal connecting
            while time.monotonic() < deadline and not (until_connected and connecting == 0):
                for fd, _ in poller.poll(100):
                    entry = socks[fd]
                    s = entry[0]
                    if entry[1] == "connecting":
                        connecting -= 1
                        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if err:
                            self.failed += 1
                            self.errors[errno.errorcode.get(err, err)] += 1
                            entry[1] = "failed"
                            poller.unregister(fd)
                            continue
                        self.opened += 1
                        if payload:
                            try:
                                s.send(payload)
                            except OSError:
                                pass
                        if close_after_send:
                            entry[1] = "closed by us"
                            poller.unregister(fd)
                            s.close()
                            continue
                        entry[1] = "open"
                        poller.modify(fd, select.POLLIN)
                    else:
                        try:
                            d = s.recv(4096)
                        except OSError:
                            d = b""
                        if d and len(entry[2]) < 2048:
                            entry[2] += d[:2048]
                        if not d:
                            self.server_closed += 1
                            entry[1] = "closed by server"
                            poller.unregister(fd)

        handle(t0 + open_limit, True)
        self.open_seconds = time.monotonic() - t0
        self.pending = connecting
        t1 = time.monotonic()
        prober = threading.Thread(target=self._probe, args=(t1, probes))
        prober.start()
        handle(t1 + hold, False)
        for entry in socks.values():
            if entry[1] != "closed by us":
                entry[0].close()
            # The answer's status line, past any interim 1xx answers before it.
            lines = re.findall(rb"HTTP/1\.[01] \d{3}[^\r\n]*", entry[2])
            final = [l for l in lines if not l[9:10] == b"1"]
            if lines:
                line = (final or lines)[0][:40].decode(errors="replace")
                self.first_lines[line + (" (after a 1xx)" if final and lines[0] != final[0] else "")] += 1
        prober.join()

    def _probe(self, t1, offsets):
        for at in offsets:
            time.sleep(max(0.0, t1 + at - time.monotonic()))
            self.probes.append(f"at {at} s: {healthz(self.port)}")

    def probe_verdict(self):
        failed = [p.split(":")[0] for p in self.probes if not re.match(r"at \S+ s: 200 ", p)]
        if not failed:
            return "OK: /healthz answered throughout the flood"
        if len(failed) == len(self.probes):
            return "FAIL: /healthz never answered during the flood"
        return f"PARTLY: /healthz not answered {', '.join(failed)} into the flood, answered at the other probes"

    def summary(self):
        text = f"{self.opened} of {self.n} connected in {self.open_seconds:.1f} s"
        if self.pending:
            text += f", {self.pending} still connecting"
        if self.failed:
            text += f", {self.failed} failed ({dict(self.errors)})"
        text += f"; the server closed {self.server_closed}"
        if self.first_lines:
            text += "; answers: " + ", ".join(f"{n}× {l!r}" for l, n in self.first_lines.most_common(3))
        if self.probes:
            text += "; /healthz " + "; ".join(self.probes)
        return text


# ---------------------------------------------------------------- the attacks
# Each takes the server and a Measure, returns (figures, verdict).

BIG_HEAD = (b"POST /channels/a/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000000000\r\n\r\n")


def idle_connections(srv, m):
    m.begin()
    f = Flood(srv.port, 3000, hold=15, probes=(1, 6, 12))
    m.end()
    m.after_idle()
    return f.summary() + "; " + m.recovery(), f.probe_verdict()


def huge_length_held(srv, m):
    m.begin()
    f = Flood(srv.port, 2880, payload=BIG_HEAD, hold=5, probes=(2,))
    m.end()
    m.after_idle()
    recovered = m.recovery()
    got413 = sum(n for line, n in f.first_lines.items() if " 413" in line)
    verdict = (f"{'OK' if got413 == f.opened and f.server_closed == f.opened else 'NOT ALL'}: {got413} of {f.opened} got 413, "
               f"{f.server_closed} closed by the server; {m.release_text()}")
    return f.summary() + "; " + recovered, verdict


def huge_length_closed(srv, m):
    m.begin()
    f = Flood(srv.port, 2000, payload=BIG_HEAD, close_after_send=True)
    m.end()
    m.after_idle()
    return f.summary() + "; " + m.recovery(), ("OK: " if m.released() else "NOT RELEASED: ") + m.release_text()


def http2_lines(srv, m):
    m.begin()
    f = Flood(srv.port, 2100, payload=b"GET / HTTP/2.0\r\n\r\n", hold=5, probes=(2,))
    m.end()
    m.after_idle()
    recovered = m.recovery()
    verdict = ("OK: " if m.released() else "NOT RELEASED: ") + m.release_text()
    return f.summary() + "; " + recovered, verdict


def trickled_bodies(srv, m):
    m.begin()
    head = (b"POST /channels/t/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n")
    tricklers = []
    for _ in range(8):
        s = connect(srv.port)
        s.sendall(head)
        tricklers.append({"sock": s, "cut": None, "status": ""})
    checks = []

    def check(at):
        big = publish_req("big", b"1" * 100000)
        st, took, err = timed_request(srv.port, big, 10)
        st2, took2, _ = timed_request(srv.port, publish_req("small", b"1"), 10)
        checks.append((at, st, took, err, st2, took2))

    t0, checkers = time.monotonic(), []
    for second in range(20):
        time.sleep(max(0.0, t0 + second - time.monotonic()))
        if second in (3, 10, 16):
            checkers.append(threading.Thread(target=check, args=(second,)))
            checkers[-1].start()
        for t in tricklers:
            if t["cut"] is not None:
                continue
            data, state = read_available(t["sock"])
            if data or state != "open":
                t["cut"], t["status"] = second, (data.split(b"\r\n")[0].decode(errors="replace") or state)
                continue
            try:
                t["sock"].send(b" ")
            except OSError:
                t["cut"], t["status"] = second, "send failed"
    for t in tricklers:
        t["sock"].close()
    for c in checkers:
        c.join()
    m.end()
    m.after_idle()
    cut = [f"{t['cut']} s ({t['status']})" for t in tricklers if t["cut"] is not None]
    lines = [f"at {at} s: too-large publish {st or ''}{err} in {took * 1000:.0f} ms, small publish {st2} in {took2 * 1000:.0f} ms"
             for at, st, took, err, st2, took2 in checks]
    figures = "; ".join(lines) + f"; tricklers cut by the server: {len(cut)} of 8" + (f" ({', '.join(cut)})" if cut else "")
    prompt = all(c[1] == 413 and c[2] < 1.0 for c in checks) and len(checks) == 3
    return figures, ("OK: the too-large publish was answered 413 within 1 s every time" if prompt else "FAIL: the too-large publish was not answered promptly")


def fill(port, channels, count, body, window):
    reqs = {c: [publish_req(c, body)] * count for c in channels}
    statuses = parallel(lambda c: pipeline(port, reqs[c], window=window, timeout=30), [(c,) for c in channels])
    return [s for per in statuses for s in per]


def slow_reader_multi(srv, m):
    body = b'"' + b"x" * 59998 + b'"'
    t = time.monotonic()
    statuses = fill(srv.port, ["ch1", "ch2", "ch3", "ch4"], 1000, body, 4)
    stats = get_stats(srv.port)
    filled = (f"fill: {counts(statuses)} in {time.monotonic() - t:.1f} s, stored {stats.get('events_stored')} events, "
              f"{(stats.get('stored_bytes') or 0) / MiB:.0f} MiB counted")
    if not srv.alive():
        return filled, "DIED while filling: it cannot hold this under 512 MiB"
    m.begin()
    s = connect(srv.port, 10, rcvbuf=4096)
    s.sendall(b"GET /events?channels=ch1,ch2,ch3,ch4&last_event_id=0 HTTP/1.1\r\nHost: x\r\n\r\n" * 20)
    got = 0
    for second in range(5):
        time.sleep(1)
        data, state = read_available(s, limit=1024)
        got += len(data)
    side = server_side(srv.port, s)
    s.close()
    m.end()
    m.settle()
    growth = m.peak_growth_mib()
    figures = (f"{filled}; read {got} bytes in 5 s; abide's end of the connection then {side[0]} with {side[1]} bytes unsent; "
               f"peak resident {growth:+.1f} MiB over the filled server")
    return figures, (f"OK: bounded (peak {growth:+.1f} MiB, about one 1 MiB answer)" if growth <= 8 else f"GREW: peak {growth:+.1f} MiB for 20 pipelined 1 MiB answers")


HELD_THEN_PIPELINE = (b"GET /channels/held/events?timeout=8 HTTP/1.1\r\nHost: x\r\n\r\n"
                      + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 20000)


def held_poll_then_pipeline(srv, m):
    m.begin()
    s = connect(srv.port)
    t0 = time.monotonic()
    sent = send_nb(s, HELD_THEN_PIPELINE, 4.0)
    time.sleep(max(0.0, t0 + 5 - time.monotonic()))
    side = server_side(srv.port, s)
    answers, state = read_available(s, wait=0.5)
    s.close()
    m.end()
    m.after_idle()
    # Answers come in request order, so the first one must be the poll's (204: nothing was
    # published). A 200 first is a /healthz answer sent in the poll's place: the client would
    # take it for the poll's answer.
    first = re.match(rb"HTTP/1\.1 (\d{3})", answers)
    jumped = bool(first) and first.group(1) != b"204"
    # The same write on 15 more connections, each looked at 0.3 s later: how often does it happen?
    order_broken = 0
    for i in range(15):
        with connect(srv.port) as c:
            send_nb(c, HELD_THEN_PIPELINE.replace(b"/held/", b"/held%d/" % i), 0.2)
            time.sleep(0.3)
            early, _ = read_available(c)
            order_broken += early.startswith(b"HTTP/1.1 200")
    figures = (f"wrote {sent} of {len(HELD_THEN_PIPELINE)} bytes; after 5 s abide's end was {side[0]} ({side[1]} bytes unsent); "
               f"read then: first answer {first.group(1).decode() if first else 'none'}, "
               f"{answers.count(b'HTTP/1.1 204')}× 204 and {answers.count(b'HTTP/1.1 200')}× 200, connection {state}; "
               f"peak resident {m.peak_growth_mib():+.1f} MiB; "
               f"order check on 15 more connections: {order_broken} got a /healthz answer first, before the poll's")
    closed = state != "open" or side[0] != "ESTABLISHED"
    verdict = (f"{'OK' if m.peak_growth_mib() <= 16 else 'GREW'}: peak {m.peak_growth_mib():+.1f} MiB; "
               f"the server {'closed' if closed else 'did not close'} the connection within 5 s")
    if jumped or order_broken:
        verdict = f"ORDER BROKEN: the held poll's answer was dropped and /healthz answers sent in its place ({1 if jumped else 0}/1 + {order_broken}/15); " + verdict
    return figures, verdict


def header_flood(srv, m, ending):
    m.begin()
    s = connect(srv.port)
    data = b"GET /healthz HTTP/1.1\r\n" + b"X-a: b\r\n" * (10_000_000 // 8) + ending
    t0 = time.monotonic()
    sent = send_nb(s, data, 20.0)
    took = time.monotonic() - t0
    answer, state = read_available(s, wait=2.0)
    s.close()
    m.end()
    m.settle()
    peak = max(m.during["rss"], (m.last() or {}).get("hwm", 0)) if m.during and isinstance(m.last(), dict) else 0
    first_line = answer.split(b"\r\n")[0][:40]
    figures = (f"the server took {sent} of {len(data)} bytes in {took:.1f} s; answer {first_line!r}, connection {state}; "
               f"peak resident {peak / 1024:.1f} MiB (VmHWM)")
    back = isinstance(m.after, dict) and m.after["rss"] <= m.before["rss"] + 4 * 1024
    return figures, ("OK: memory given back 3 s later" if back else f"KEPT: {fmt(m.after)} 3 s later") + f" (peak {peak / 1024:.0f} MiB)"


def header_flood_unended(srv, m):
    return header_flood(srv, m, b"")


def header_flood_ended(srv, m):
    return header_flood(srv, m, b"\r\n")


def connection_flood(srv, m):
    m.begin()
    f = Flood(srv.port, 5000, hold=10, probes=(1, 5, 9))
    m.end()
    m.after_idle()
    return f.summary() + "; " + m.recovery(), f.probe_verdict()


def pipelined_polls(srv, m):
    m.begin()
    s = connect(srv.port)
    s.sendall(b"".join(f"GET /channels/p{i}/events?timeout=8 HTTP/1.1\r\nHost: x\r\n\r\n".encode() for i in range(600)))
    time.sleep(0.3)
    stats = get_stats(srv.port)
    others = parallel(lambda i: timed_request(srv.port, f"GET /channels/q{i}/events?timeout=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(), 6)[0],
                      [(i,) for i in range(20)])
    stats2 = get_stats(srv.port)
    answers, state = read_available(s)
    s.close()
    m.end()
    m.after_idle()
    rejected = sum(1 for st in others if st == 503)
    figures = (f"0.3 s after 600 polls were pipelined on one connection: /stats waiters {stats.get('waiters')}, polls_rejected {stats.get('polls_rejected')}; "
               f"then 20 polls from other connections: {counts(others)}; /stats then: waiters {stats2.get('waiters')}, "
               f"polls_rejected {stats2.get('polls_rejected')}; the pipelining connection meanwhile got "
               f"{len(re.findall(rb'HTTP/1.1 [2-5]', answers))} answers ({answers.count(b'HTTP/1.1 503')} of them 503) and is {state}")
    verdict = "OK: no other poll got 503" if rejected == 0 else f"FAIL: {rejected} of 20 other polls got 503"
    if stats.get("waiters") == 0 and stats2.get("waiters") == 0 and not answers:
        verdict += "; but the first pipelined poll held no slot and got no answer: it was dropped"
    return figures, verdict


def channel_flood(srv, m):
    m.begin()
    reqs = [publish_req(f"c{i}", b"1") for i in range(10000)]
    t = time.monotonic()
    statuses = [s for per in parallel(lambda k: pipeline(srv.port, reqs[k::4]), [(k,) for k in range(4)]) for s in per]
    took = time.monotonic() - t
    new_pub = timed_request(srv.port, publish_req("brand-new", b"1"))[0]
    new_poll = timed_request(srv.port, b"GET /channels/brand-new/events?last_event_id=0&timeout=0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")[0]
    stats = get_stats(srv.port)
    m.end()
    m.settle()
    figures = (f"10,000 publishes: {counts(statuses)} in {took:.1f} s; then a publish to a new channel: {new_pub}, "
               f"a poll on it: {new_poll}; /stats channels {stats.get('channels')}")
    ok = new_pub == 201 and new_poll == 200
    return figures, ("OK: a new channel still works at the channel limit" if ok else f"FAIL: new channel publish {new_pub}, poll {new_poll}")


def storage_flood(srv, m):
    m.begin()
    reqs = [publish_req(f"ch{i % 100}", b"1") for i in range(200000)]
    t = time.monotonic()
    statuses = [s for per in parallel(lambda k: pipeline(srv.port, reqs[k::4], timeout=30), [(k,) for k in range(4)]) for s in per]
    took = time.monotonic() - t
    stats = get_stats(srv.port)
    m.end()
    m.after_idle()    # idle pool threads retire after 10 s
    grew = (m.after["rss"] - m.before["rss"]) / 1024 if isinstance(m.after, dict) else float("nan")
    idle_grew = (m.idle["rss"] - m.before["rss"]) / 1024 if isinstance(m.idle, dict) else float("nan")
    figures = (f"200,000 publishes to 100 channels: {counts(statuses)} in {took:.1f} s; /stats events_stored {stats.get('events_stored')}, "
               f"stored_bytes {(stats.get('stored_bytes') or 0) / MiB:.2f} MiB, events_dropped {stats.get('events_dropped')}; "
               f"resident {grew:+.1f} MiB 3 s after, {idle_grew:+.1f} MiB {IDLE + 2} s after, peak {m.peak_growth_mib():+.1f} MiB, against the 8 MiB limit")
    return figures, ("OK: within the limit (+4 MiB of slack for pool threads)" if idle_grew <= 12 else
                     f"OVER: resident grew {idle_grew:.1f} MiB for an 8 MiB limit ({stats.get('stored_bytes', 0) / MiB:.1f} MiB counted)")


TRICKLE_FLAGS = ["--idle-timeout", "20", "--max-timeout", "15", "--default-timeout", "15"]


def trickle_reader(srv, m, polls=1, cap=30):
    """polls > 1 pipelines that many copies of the poll, so that the answers outgrow what the
    kernel's loopback buffers take (about 4 MiB) and abide's writes must wait for the reader."""
    body = b'"' + b"y" * 4998 + b'"'
    statuses = pipeline(srv.port, [publish_req("slow", body)] * 200, window=16)
    m.begin()
    s = connect(srv.port, 10, rcvbuf=2048)
    s.sendall(b"GET /channels/slow/events?last_event_id=0 HTTP/1.1\r\nHost: x\r\n\r\n" * polls)
    t0, got = time.monotonic(), bytearray()
    server_closed = client_saw = None
    handed = []                     # (seconds, bytes abide had written into the kernel by then)
    next_read, blocked = t0 + 1, None
    while time.monotonic() < t0 + cap and server_closed is None:
        time.sleep(0.25)
        if blocked is None and time.monotonic() > t0 + 15:   # past --write-timeout
            blocked = socket_waiters(srv.pid)
        state, unacked, unread = server_side(srv.port, s)
        handed.append((time.monotonic() - t0, len(got) + unread + unacked))
        if state != "ESTABLISHED":
            server_closed = (time.monotonic() - t0, state, unacked)
        if time.monotonic() >= next_read and client_saw is None:
            next_read += 1
            data, st = read_available(s, limit=100)
            got += data
            if st != "open":
                client_saw = (time.monotonic() - t0, st)
    s.close()
    m.end()
    m.settle()
    total = None
    end = got.find(b"\r\n\r\n")
    cl = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", bytes(got[:end])) if end >= 0 else None
    if cl:
        total = (end + 4 + int(cl.group(1))) * polls
    written_at = next((t for t, n in handed if total and n >= total), None)
    figures = f"publishes {counts(statuses)}; the answer{'s are' if polls > 1 else ' is'} {total or '?'} bytes; read {len(got)} bytes at 100 B/s; "
    if written_at is not None:
        figures += f"abide had written all of it into the kernel's socket buffers after {written_at:.2f} s; "
    else:
        figures += f"abide had written {handed[-1][1] if handed else 0} bytes of it by the end; "
    if server_closed:
        figures += f"abide closed its end after {server_closed[0]:.1f} s ({server_closed[1]}, {server_closed[2]} bytes unacknowledged)"
    else:
        figures += f"abide's end still ESTABLISHED after {cap} s"
    if client_saw:
        figures += f"; the client saw the connection {client_saw[1]} after {client_saw[0]:.1f} s"
    if blocked is not None:
        figures += f"; abide's threads asleep in a socket call at 15 s: {blocked or 'none'}"
    if server_closed and server_closed[0] <= 10 + 3:
        verdict = f"OK: closed after {server_closed[0]:.1f} s, within --write-timeout (10 s)"
    elif written_at is not None:
        verdict = ("NOT APPLICABLE on loopback: the kernel took the whole answer at once, so no write waited; the connection then idled"
                   + (f" and was closed after {server_closed[0]:.0f} s (--idle-timeout 20 here)" if server_closed else f" and was still open after {cap} s"))
    else:
        verdict = "NOT BOUNDED by --write-timeout: " + (f"closed after {server_closed[0]:.0f} s" if server_closed else f"still open after {cap} s")
    return figures, verdict


def trickle_reader_pipelined(srv, m):
    return trickle_reader(srv, m, polls=10, cap=40)


def pipelined_order(srv, m):
    m.begin()
    results = []
    for i in range(20):
        ch = f"o{i}"
        data = (f"GET /channels/{ch}/events?timeout=1 HTTP/1.1\r\nHost: x\r\n\r\n".encode() + publish_req(ch, b"1")
                + f"GET /channels/{ch}/events?last_event_id=0&timeout=1 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        got, buf = [], bytearray()
        try:
            with connect(srv.port, 6) as s:
                s.sendall(data)
                deadline = time.monotonic() + 6
                while len(got) < 3 and time.monotonic() < deadline:
                    s.settimeout(max(0.1, deadline - time.monotonic()))
                    d = s.recv(65536)
                    if not d:
                        break
                    buf += d
                    done, buf = parse_responses(buf)
                    got += [g[0] for g in done]
        except (OSError, ValueError):
            pass
        results.append(tuple(got + [None] * (3 - len(got))))
    m.end()
    m.settle()
    c = collections.Counter(results)
    figures = "statuses (poll, publish, poll after it): " + ", ".join(f"{n}× {r}" for r, n in c.most_common())
    good = sum(1 for r in results if r[2] == 200)
    return figures, ("OK: the third answer was 200 every time" if good == 20 else f"FAIL: the poll behind the publish got 200 in {good} of 20")


ATTACKS = [
    # number, title, function, flags, documented bound
    (1, "3,000 idle connections held 15 s", idle_connections, SHORT,
     "idle connections closed after --idle-timeout; accept recovers within 2 s"),
    (2, "2,880 × Content-Length 10^12, held 5 s", huge_length_held, SHORT,
     "413 from the declared length, connection closed at once"),
    (3, "2,000 × Content-Length 10^12, closed at once", huge_length_closed, SHORT,
     "413 from the declared length, connection closed at once"),
    (4, "2,100 × `GET / HTTP/2.0`, held 5 s", http2_lines, SHORT,
     "none: README says each such connection stays blocked in tiny_http"),
    (5, "8 bodies trickled at 1 B/s for 20 s", trickled_bodies, SHORT,
     "a body read is bounded by --idle-timeout in total"),
    (6, "20 pipelined 4-channel polls read at 1 KB/s", slow_reader_multi,
     ["--max-event-bytes", "65536", "--buffer", "1000", "--max-stored-bytes", "300000000"],
     "answers ≤ 1 MiB, one at a time per connection; writes ≤ --write-timeout"),
    (7, "held poll + 20,000 pipelined /healthz, unread", held_poll_then_pipeline, SHORT,
     "≤ 64 requests queued per connection, the rest dropped"),
    ("8a", "10 MB of tiny headers, head never ended", header_flood_unended, [],
     "none on header size (README); memory given back 1 s after requests stop"),
    ("8b", "10 MB of tiny headers, then the blank line", header_flood_ended, [],
     "none on header size (README); memory given back 1 s after requests stop"),
    (9, "5,000 connections held 10 s", connection_flood, SHORT,
     "connections not capped (README); idle ones closed after --idle-timeout"),
    (10, "600 polls pipelined on one connection", pipelined_polls, SHORT,
     "one connection holds at most one wait slot"),
    (11, "10,000 channels, then a new one", channel_flood, [],
     "--max-channels 10000: a new channel evicts the oldest nobody waits on"),
    (12, "200,000 one-byte events, 8 MiB store", storage_flood,
     ["--max-stored-bytes", "8388608", "--event-ttl", "0", "--buffer", "10000"],
     "--max-stored-bytes holds for resident memory (JSON + 256 B per event)"),
    ("13a", "500 KB answer read at 100 B/s", trickle_reader, TRICKLE_FLAGS,
     "every write bounded by --write-timeout (10 s)"),
    ("13b", "10 pipelined 500 KB answers read at 100 B/s", trickle_reader_pipelined, TRICKLE_FLAGS,
     "every write bounded by --write-timeout (10 s)"),
    (14, "pipelined poll, publish, poll × 20", pipelined_order, [],
     "pipelined requests take effect in order"),
]
# Rough worst-case seconds per attack, to stay inside BUDGET.
ESTIMATE = {1: 95, 2: 85, 3: 80, 4: 85, 5: 45, 6: 60, 7: 40, "8a": 15, "8b": 15, 9: 90, 10: 25, 11: 25, 12: 60, "13a": 40, "13b": 50, 14: 40}


def run_attack(number, title, fn, flags, bound, cgroups):
    kept, dropped = usable(flags)
    row = {"number": number, "title": title, "bound": bound, "before": None, "during": None, "after": None,
           "idle": None, "health": "–", "alive": "–", "figures": "", "verdict": "", "command": "", "notes": []}
    if dropped:
        row["notes"].append(f"flags this binary lacks, left out: {' '.join(dropped)}")
    cg = None
    srv = None
    try:
        if cgroups.why_not is None:
            cg = cgroups.child(f"attack-{number}")
        srv = Abide(kept, cg)
        row["command"] = shlex.join(srv.command) + (f"   (in pids cgroup {cg}, pids.max={PIDS_MAX})" if cg else "")
        time.sleep(0.3)
        m = Measure(srv)
        try:
            row["figures"], row["verdict"] = fn(srv, m)
        except Exception as e:  # noqa: BLE001 -- any failure is reported and the next attack runs
            row["figures"] = f"error: {type(e).__name__}: {e}"
            row["verdict"] = "ERROR (see figures)"
            if m.before is not None and m.after is None:
                m.settle()
        row["before"], row["during"], row["after"], row["idle"] = m.before, m.during, m.after, m.idle
        row["health"] = healthz(srv.port) if srv.alive() else "–"
        row["alive"] = "yes" if srv.alive() else f"NO (exit status {srv.p.poll()})"
        if not srv.alive():
            row["verdict"] = "DIED; " + row["verdict"]
        elif not row["health"].startswith("200 "):
            row["verdict"] = "ALIVE BUT NOT ANSWERING /healthz; " + row["verdict"]
        if srv.pids_figures():
            row["notes"].append(srv.pids_figures())
        for panic in srv.panics():
            row["notes"].append("abide's stderr: " + panic)
        if srv.lines and not srv.panics():
            row["notes"].append("abide's stderr ends: " + " | ".join(srv.lines[-3:]))
    except Exception as e:  # noqa: BLE001
        row["figures"] = f"error: {type(e).__name__}: {e}"
        row["verdict"] = "ERROR (see figures)"
    finally:
        if srv:
            srv.stop()
        if cg:
            cgroups.remove(cg)
    return row


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < min(hard, 16384):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 16384), hard))
    def out_of_time(signum, frame):
        raise TimeoutError(f"the run's {BUDGET / 60:.1f}-minute budget ran out")

    signal.signal(signal.SIGALRM, out_of_time)   # the attack under way is stopped, the rest skipped
    signal.alarm(int(BUDGET))
    cgroups = PidsCgroup()
    if os.environ.get("EDGE2_NO_CGROUP") and cgroups.why_not is None:
        cgroups.close()
        cgroups.why_not = "EDGE2_NO_CGROUP is set"
    print(f"# abide edge figures (2): {BINARY}\n")
    print(f"Limits on every abide process: `{' '.join(LIMITS)}`" +
          (f" and a pids cgroup with pids.max={PIDS_MAX} (under {cgroups.root})." if cgroups.why_not is None
           else f"; no pids cgroup ({cgroups.why_not})."))
    print(f"Attacks marked * run with `{' '.join(SHORT)}` so that idle connections and held polls end within the run.")
    print(f"Footprint = threads / descriptors / resident. 'peak' is sampled every 50 ms from the attack's start to the "
          f"{SETTLE:.0f} s sample; 'after' is {SETTLE:.0f} s after the attacking client stopped; 'after idle' "
          f"{IDLE + 2} s after it (past --idle-timeout {IDLE}), where that matters.\n", flush=True)
    rows = []
    try:
        only = {n.strip() for n in os.environ.get("EDGE2_ONLY", "").split(",") if n.strip()}
        for number, title, fn, flags, bound in ATTACKS:
            if only and str(number) not in only and str(number).rstrip("ab") not in only:
                continue
            elapsed = time.monotonic() - STARTED
            if elapsed + ESTIMATE[number] > BUDGET:
                rows.append({"number": number, "title": title, "skipped": True})
                print(f"{number}. {title}: skipped, the run would pass {BUDGET / 60:.1f} minutes\n", flush=True)
                continue
            log(f"attack {number}: {title}")
            row = run_attack(number, title, fn, flags, bound, cgroups)
            rows.append(row)
            star = " *" if flags is SHORT else ""
            print(f"{number}. {title}{star}\n   command: {row['command']}\n   figures: {row['figures']}")
            for note in row["notes"]:
                print(f"   {note}")
            print(f"   documented bound: {row['bound']}\n   verdict: {row['verdict']}\n", flush=True)
    finally:
        signal.alarm(0)
        cgroups.close()
    print("| # | attack | before | peak | after 3 s | after idle | documented bound | /healthz after | alive | verdict |")
    print("|---:|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.get("skipped"):
            print(f"| {r['number']} | {r['title']} | skipped | | | | | | | |")
            continue
        verdict = r["verdict"].split(":")[0]
        print(f"| {r['number']} | {r['title']} | {fmt(r['before'])} | {fmt(r['during'])} | {fmt(r['after'])} | "
              f"{fmt(r['idle'])} | {r['bound']} | {r['health']} | {r['alive']} | {verdict} |")
    print(f"\nTotal run time {(time.monotonic() - STARTED) / 60:.1f} minutes.")


if __name__ == "__main__":
    main()
