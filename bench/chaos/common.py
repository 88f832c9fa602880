"""Shared pieces of the chaos scenarios (bench/chaos/*.py): start a server (sluice, or nginx +
nchan for A/B runs) on a free 127.0.0.1 port in a temporary directory, sample it while a
scenario runs (RSS, the connection gauge against the kernel's own count, CLOSE_WAIT sockets,
open fds, deliveries), write the samples as CSV, draw them with gnuplot, and print a verdict.

Run with Debian's interpreter (/usr/bin/python3); only the standard library is used.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SLUICE_BIN = os.environ.get("SLUICE_BIN", str(REPO / "build" / "sluice"))
LOAD_BIN = os.environ.get("SLUICE_LOAD", str(REPO / "build" / "sluice-load"))

# TCP states in /proc/net/tcp (include/net/tcp_states.h).
TCP_ESTABLISHED = "01"
TCP_CLOSE_WAIT = "08"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def kernel_sockets(port, state):
    """Sockets whose local port is `port` in TCP `state` (hex code), from /proc/net/tcp{,6}:
    the server side of connections as the kernel sees them."""
    n = 0
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    local, st = parts[1], parts[3]
                    if st == state and int(local.rsplit(":", 1)[1], 16) == port:
                        n += 1
        except FileNotFoundError:
            pass
    return n


def rss_bytes(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except FileNotFoundError:
            pass
    return total


def open_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError:
        return 0


def parse_metrics(text):
    """Prometheus text -> {'name{k="v"}': value} (labels as written by sluice)."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^(\S+?)\s+(\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


class Server:
    """A sluice process with `config` (INI text; the [server] listen line is added) in a fresh
    temporary directory. stop() sends SIGTERM and waits; the exit code is kept."""

    kind = "sluice"

    def __init__(self, config="", binary=SLUICE_BIN, memory_limit=None, admin_token=None):
        self.admin_token = admin_token  # sent to /metrics when the config has [auth]
        self.dir = Path(tempfile.mkdtemp(prefix="sluice-chaos-"))
        self.port = free_port()
        self.memory_limit = memory_limit
        text = f"[server]\nlisten = 127.0.0.1:{self.port}\ndata_dir = {self.dir}/data\n"
        if memory_limit:
            text += f"memory_limit = {memory_limit}\n"
        # Sections given by the caller follow; a second [server] section adds keys to the first.
        text += config
        (self.dir / "sluice.ini").write_text(text)
        self.log = open(self.dir / "sluice.log", "wb")
        self.proc = subprocess.Popen([binary, "--config", str(self.dir / "sluice.ini")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.pids = [self.proc.pid]
        self.url = f"http://127.0.0.1:{self.port}"
        wait_listening(self.port, self.proc)
        self.exit_code = None

    def rss(self):
        return rss_bytes(self.pids)

    def fds(self):
        return open_fds(self.proc.pid)

    def metrics(self, timeout=5.0):
        req = urllib.request.Request(self.url + "/metrics")
        if getattr(self, "admin_token", None):
            req.add_header("Authorization", f"Bearer {self.admin_token}")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return parse_metrics(r.read().decode())

    def gauge(self):
        return int(self.metrics().get("sluice_connections", -1))

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=15.0):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.exit_code = self.proc.returncode
        self.log.close()
        return self.exit_code

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class NchanServer(Server):
    """nginx + nchan with bench/nchan.conf.template (its @PORT@ and @DIR@ placeholders), one
    worker; RSS is master + worker."""

    kind = "nchan"

    def __init__(self, template=REPO / "bench" / "nchan.conf.template"):
        self.dir = Path(tempfile.mkdtemp(prefix="nchan-chaos-"))
        self.port = free_port()
        self.memory_limit = None
        conf = Path(template).read_text().replace("@PORT@", str(self.port)).replace(
            "@DIR@", str(self.dir))
        (self.dir / "nginx.conf").write_text(conf)
        (self.dir / "logs").mkdir()
        self.log = open(self.dir / "nginx.log", "wb")
        self.proc = subprocess.Popen(["nginx", "-c", str(self.dir / "nginx.conf"), "-p",
                                      str(self.dir)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_listening(self.port, self.proc)
        time.sleep(0.3)
        self.pids = [self.proc.pid] + [int(p) for p in subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()]
        self.exit_code = None

    def metrics(self, timeout=5.0):
        return {}

    def gauge(self):
        return -1


def wait_listening(port, proc, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not listen in time")


class Sampler:
    """Samples `server` every `interval` seconds in a thread until stop(): time, RSS, the
    connection gauge and the kernel's ESTABLISHED and CLOSE_WAIT counts for the port, open fds,
    deliveries and published totals, plus whatever `extra()` returns (a dict). The gauge is
    compared with the kernel only when two kernel reads around it agree (connections moving
    between the reads make a single sample meaningless); `mismatches` lists the samples where
    they disagreed."""

    FIELDS = ["t", "rss_mb", "gauge", "kernel_established", "close_wait", "fds", "deliveries",
              "published"]

    def __init__(self, server, interval=2.0, extra=None):
        self.server = server
        self.interval = interval
        self.extra = extra
        self.rows = []
        self.mismatches = []
        self.errors = 0
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sample(self):
        s = self.server
        k1 = kernel_sockets(s.port, TCP_ESTABLISHED)
        m = {}
        try:
            m = s.metrics()
        except Exception:
            self.errors += 1
        k2 = kernel_sockets(s.port, TCP_ESTABLISHED)
        # Our own /metrics request is one of the established connections while it runs; sluice
        # counts it too, so both sides include it (or neither, after it closed).
        gauge = int(m.get("sluice_connections", -1)) - 1 if m else -1
        row = {
            "t": round(time.monotonic() - self._t0, 3),
            "rss_mb": round(s.rss() / 2**20, 3),
            "gauge": gauge,
            "kernel_established": k2,
            "close_wait": kernel_sockets(s.port, TCP_CLOSE_WAIT),
            "fds": s.fds(),
            "deliveries": int(m.get("sluice_deliveries_total", 0)),
            "published": int(m.get("sluice_messages_published_total", 0)),
        }
        if self.extra:
            row.update(self.extra())
        if m and k1 == k2 and gauge != k2:
            self.mismatches.append((row["t"], gauge, k2))
        self.rows.append(row)
        return row

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def stop(self):
        self._stop.set()
        self._thread.join()
        return self.rows

    def write_csv(self, path):
        fields = list(self.FIELDS)
        for r in self.rows:
            fields += [k for k in r if k not in fields]
        with open(path, "w") as f:
            f.write(",".join(fields) + "\n")
            for r in self.rows:
                f.write(",".join(str(r.get(k, "")) for k in fields) + "\n")


def slope_mb_per_min(rows, key="rss_mb", start_frac=0.5):
    """Least-squares slope of `key` over the rows after `start_frac` of the run, in MB/min."""
    pts = [(r["t"], r[key]) for r in rows]
    if len(pts) < 3:
        return 0.0
    t_end = pts[-1][0]
    pts = [p for p in pts if p[0] >= t_end * start_frac] or pts
    n = len(pts)
    mt = sum(p[0] for p in pts) / n
    mv = sum(p[1] for p in pts) / n
    den = sum((p[0] - mt) ** 2 for p in pts)
    if den == 0:
        return 0.0
    return sum((p[0] - mt) * (p[1] - mv) for p in pts) / den * 60


def plot(csv_path, png_path, title, series, ylabel="MB", limit_mb=None, y2=None):
    """Draws columns of a CSV (by name) against t with gnuplot. `series` is a list of
    (column, label); `limit_mb` adds a horizontal memory_limit line; `y2` is an optional list of
    (column, label) on the right axis. Returns False (and says why) if gnuplot is missing."""
    if shutil.which("gnuplot") is None:
        print("plot skipped: gnuplot is not installed", file=sys.stderr)
        return False
    header = Path(csv_path).read_text().splitlines()[0].split(",")
    col = {name: i + 1 for i, name in enumerate(header)}
    plots = [f"'{csv_path}' using 1:{col[c]} with lines lw 2 title '{label}'"
             for c, label in series if c in col]
    if limit_mb is not None:
        plots.append(f"{limit_mb} with lines dt 2 lw 2 lc rgb 'red' title 'memory_limit'")
    for c, label in (y2 or []):
        if c in col:
            plots.append(f"'{csv_path}' using 1:{col[c]} axes x1y2 with lines title '{label}'")
    script = "\n".join([
        "set terminal pngcairo size 1000,560 font 'sans,11'" if _has_cairo() else
        "set terminal png size 1000,560",
        f"set output '{png_path}'",
        "set datafile separator ','",
        "set key top left",
        f"set title '{title}'",
        "set xlabel 'seconds'",
        f"set ylabel '{ylabel}'",
        "set grid",
        "set yrange [0:*]",
        "set y2tics" if y2 else "",
        "set y2range [0:*]" if y2 else "",
        "plot " + ", ".join(plots),
    ])
    r = subprocess.run(["gnuplot"], input=script, text=True, capture_output=True)
    if r.returncode != 0:
        print("gnuplot failed: " + r.stderr, file=sys.stderr)
        return False
    return True


def _has_cairo():
    r = subprocess.run(["gnuplot", "-e", "set terminal"], capture_output=True, text=True)
    return "pngcairo" in (r.stdout + r.stderr)


def verdict(name, ok, **figures):
    """Prints the one line a scenario is judged by: `VERDICT <name> PASS|FAIL k=v …`."""
    kv = " ".join(f"{k}={v}" for k, v in figures.items())
    print(f"VERDICT {name} {'PASS' if ok else 'FAIL'} {kv}", flush=True)
    return ok


def out_dir(name):
    """bench/out/chaos-<timestamp>/<name>/ (or $CHAOS_OUT/<name>)."""
    base = Path(os.environ.get("CHAOS_OUT") or
                REPO / "bench" / "out" / ("chaos-" + time.strftime("%Y%m%d-%H%M%S")))
    d = base / name
    d.mkdir(parents=True, exist_ok=True)
    return d


# ---- Added for ghosts.py and churn.py: raw clients, kernel views, a paced publisher ------------
# (Only additions: nothing above this line depends on what follows.)

import base64
import bisect
import resource
import struct

# src/server.c SWEEP_MS: the period at which sluice checks every connection's deadlines
# (header/idle timeouts, write stall, WebSocket ping and pong, SSE heartbeats). A deadline
# fires at most one sweep after it is due; liveness bounds below add it.
SWEEP_S = 0.25

TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
              "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT",
              "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING"}


def raise_nofile(want=None):
    """Raises RLIMIT_NOFILE to `want` (default: the hard limit); returns the new soft limit.
    Children (the server included) inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if want is None or want > hard else max(soft, want)
    if target != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def kernel_conn_table(port, proc_pid=None):
    """Server-side TCP sockets of `port` as the kernel sees them:
    {(remote_ip_hex, remote_port): (state_hex, inode)}. With `proc_pid`, reads that process's
    network namespace (/proc/<pid>/net/tcp)."""
    out = {}
    base = f"/proc/{proc_pid}/net" if proc_pid else "/proc/net"
    for name in ("tcp", "tcp6"):
        try:
            with open(f"{base}/{name}") as f:
                next(f)
                for line in f:
                    p = line.split()
                    lport = int(p[1].rsplit(":", 1)[1], 16)
                    if lport != port or p[3] == "0A":
                        continue
                    rip, rport = p[2].rsplit(":", 1)
                    out[(rip, int(rport, 16))] = (p[3], int(p[9]))
        except FileNotFoundError:
            pass
    return out


def held_by_state(port, pid):
    """Sockets on `port` (server side, not the listener) that process `pid` still holds open,
    counted by TCP state name."""
    inodes = socket_inodes(pid)
    out = {}
    for (st, inode) in kernel_conn_table(port).values():
        if inode in inodes:
            name = TCP_STATES.get(st, st)
            out[name] = out.get(name, 0) + 1
    return out


def socket_inodes(pid):
    """Inodes of the sockets in process `pid`'s fd table (what it still holds open)."""
    out = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return out
    for n in names:
        try:
            t = os.readlink(f"/proc/{pid}/fd/{n}")
        except OSError:
            continue
        if t.startswith("socket:["):
            out.add(int(t[8:-1]))
    return out


def ss_skmem(port, side="sport", netns=None):
    """Socket memory of established TCP sockets whose source (side="sport") or destination
    (side="dport") port is `port`, from `ss -tmn`: {peer_port: {"rb":…, "tb":…, "r":…, "w":…}}
    where peer_port is the other end's port (the client's port for sport, the local port of the
    client socket for dport)."""
    cmd = ["ss", "-tmnH", "state", "established", f"( {side} = :{port} )"]
    if netns:
        cmd = ["ip", "netns", "exec", netns] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True)
    out = {}
    lines = r.stdout.splitlines()
    cur = None
    for line in lines:
        m = re.search(r"(\S+):(\d+)\s+(\S+):(\d+)", line)
        if m:
            lp, pp = int(m.group(2)), int(m.group(4))
            cur = pp if side == "sport" else lp
        mm = re.search(r"skmem:\(([^)]*)\)", line)
        if mm and cur is not None:
            d = {}
            for part in mm.group(1).split(","):
                k = re.match(r"([a-z]+)(\d+)", part)
                if k:
                    d[k.group(1)] = int(k.group(2))
            out[cur] = d
            cur = None
    return out


def ss_accepted(port):
    """For each established server-side socket of `port`: how many bytes the kernel has
    accepted from the server process so far (first transmissions + bytes not yet sent:
    bytes_sent - bytes_retrans + notsent, from `ss -ti`). A socket whose count stops growing
    while the server still has data for it is what the write-stall timeout must detect.
    Returns {client_port: bytes}."""
    r = subprocess.run(["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
                       capture_output=True, text=True)
    out = {}
    cur = None
    for line in r.stdout.splitlines():
        if not line.startswith(("\t", " ")):
            m = re.search(r":(\d+)\s*$", line.strip())
            cur = int(m.group(1)) if m else None
            continue
        if cur is None:
            continue
        sent = re.search(r"\bbytes_sent:(\d+)", line)
        retr = re.search(r"\bbytes_retrans:(\d+)", line)
        ns = re.search(r"\bnotsent:(\d+)", line)
        out[cur] = ((int(sent.group(1)) if sent else 0) - (int(retr.group(1)) if retr else 0)
                    + (int(ns.group(1)) if ns else 0))
        cur = None
    return out


# ---- raw HTTP / SSE / WebSocket client pieces (blocking connect, then any I/O style) ----------

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WS_TEXT, WS_BINARY, WS_CLOSE, WS_PING, WS_PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def sse_request(topic, host="127.0.0.1"):
    return (f"GET /topics/{topic} HTTP/1.1\r\nHost: {host}\r\n"
            "Accept: text/event-stream\r\n\r\n").encode()


def ws_request(path, host="127.0.0.1"):
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode()


def ws_frame(opcode, payload=b"", mask=True):
    """One client frame (masked, as RFC 6455 requires of clients)."""
    if isinstance(payload, str):
        payload = payload.encode()
    n = len(payload)
    b0 = 0x80 | opcode
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    if n:
        k = (key * (n // 4 + 1))[:n]
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")
    return head + key + payload


class WsReader:
    """Incremental parser of server frames (unmasked): feed(bytes) -> [(opcode, payload)]."""

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data):
        self.buf += data
        out = []
        b = self.buf
        while len(b) >= 2:
            op = b[0] & 0x0F
            n = b[1] & 0x7F
            off = 2
            if n == 126:
                if len(b) < 4:
                    break
                n = struct.unpack_from("!H", b, 2)[0]
                off = 4
            elif n == 127:
                if len(b) < 10:
                    break
                n = struct.unpack_from("!Q", b, 2)[0]
                off = 10
            if b[1] & 0x80:
                off += 4  # a masked server frame is a protocol error; skip the key anyway
            if len(b) < off + n:
                break
            out.append((op, bytes(b[off:off + n])))
            del b[:off + n]
        return out


def read_head(sock, timeout=10.0):
    """Reads an HTTP response head from a blocking socket: (status, bytes after the head)."""
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the response head: %r" % buf[:200])
        buf += chunk
        if len(buf) > 65536:
            raise ConnectionError("response head too long")
    head, rest = buf.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    return status, rest


def read_response(sock, timeout=10.0):
    """Reads one whole HTTP response with a Content-Length body from a blocking socket:
    (status, body). Whatever follows it is lost, so use it only without pipelining."""
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the response head")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    n = int(m.group(1)) if m else 0
    while len(body) < n:
        chunk = sock.recv(max(4096, n - len(body)))
        if not chunk:
            raise ConnectionError("closed in the response body")
        body += chunk
    return status, body[:n]


def open_client(port, kind, topic, rcvbuf=None, host="127.0.0.1", timeout=10.0, bind=None):
    """Connects and subscribes: kind "sse" (GET /topics/<topic> as an event stream) or "ws"
    (WebSocket on /topics/<topic>). Returns (socket, bytes already read after the head), or
    raises. `rcvbuf` sets SO_RCVBUF before connecting (1 gives the kernel's minimum)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if bind:
        s.bind((bind, 0))
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        if kind == "sse":
            s.sendall(sse_request(topic, host))
            want = 200
        else:
            s.sendall(ws_request(f"/topics/{topic}", host))
            want = 101
        status, rest = read_head(s, timeout)
        if status != want:
            raise ConnectionError(f"{kind} {topic}: status {status}")
    except BaseException:
        s.close()
        raise
    return s, rest


def hard_close(sock):
    """Closes with a reset (SO_LINGER on, timeout 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class Publisher:
    """A thread that publishes `rate` messages a second of `size` bytes to `topic` over one
    keep-alive HTTP connection (raw socket), paced by schedule. `log` keeps (t, total payload
    bytes) after every publish, so a scenario can tell when a given number of bytes had been
    published since some moment. Counts `ok` (202) and `errors`; reconnects on failure."""

    def __init__(self, port, topic, rate, size, host="127.0.0.1"):
        self.port, self.topic, self.rate, self.size, self.host = port, topic, rate, size, host
        self.ok = 0
        self.errors = 0
        self.bytes = 0
        self.log = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _connect(self):
        s = socket.create_connection((self.host, self.port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def _run(self):
        sock = None
        period = 1.0 / self.rate
        next_t = time.monotonic()
        seq = 0
        while not self._stop.is_set():
            now = time.monotonic()
            if now < next_t:
                self._stop.wait(next_t - now)
                continue
            next_t += period
            if next_t < now - 1.0:  # far behind (machine busy): do not burst to catch up
                next_t = now
            seq += 1
            body = (f"{seq} {time.time():.6f} ".encode() + b"x" * self.size)[:self.size]
            req = (f"POST /topics/{self.topic} HTTP/1.1\r\nHost: {self.host}\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body
            try:
                if sock is None:
                    sock = self._connect()
                sock.sendall(req)
                status = read_response(sock, 10)[0]
                if status != 202:
                    self.errors += 1
                else:
                    self.ok += 1
                    self.bytes += len(body)
                    self.log.append((time.monotonic(), self.bytes))
            except (OSError, ConnectionError, ValueError, IndexError):
                self.errors += 1
                if sock is not None:
                    sock.close()
                sock = None
        if sock is not None:
            sock.close()

    def bytes_since(self, t0):
        """Payload bytes published after monotonic time t0 (so far)."""
        log = self.log[:]
        i = bisect.bisect_right(log, t0, key=lambda e: e[0])
        base = log[i - 1][1] if i > 0 else 0
        return (log[-1][1] if log else 0) - base

    def time_when_bytes_since(self, t0, nbytes):
        """The monotonic time at which `nbytes` payload bytes had been published after t0, or
        None if that has not happened yet."""
        log = self.log[:]
        i = bisect.bisect_right(log, t0, key=lambda e: e[0])
        base = log[i - 1][1] if i > 0 else 0
        j = bisect.bisect_left(log, base + nbytes, lo=i, key=lambda e: e[1])
        return log[j][0] if j < len(log) else None

    def stop(self):
        self._stop.set()
        self._thread.join(15)


def plot_connections(csv_path, png_path, title, extra_y2=()):
    """The standard chaos figure: server RSS (MB, left axis) and, on the right axis, the
    connection gauge (wide pale line), the kernel's ESTABLISHED count for the port (thin dashed
    line on top of it: where they differ, the two lines separate), CLOSE_WAIT sockets, and any
    `extra_y2` (column, label) series. Labels are printed literally (no gnuplot markup)."""
    if shutil.which("gnuplot") is None:
        print("plot skipped: gnuplot is not installed", file=sys.stderr)
        return False
    header = Path(csv_path).read_text().splitlines()[0].split(",")
    col = {name: i + 1 for i, name in enumerate(header)}
    src = f"'{csv_path}' using 1:"
    plots = [src + f"{col['rss_mb']} axes x1y1 with lines lw 2 lc rgb '#7b1fa2' "
             "title 'server RSS, MB (left axis)'",
             src + f"{col['gauge']} axes x1y2 with lines lw 7 lc rgb '#a5d6a7' "
             "title 'sluice_connections gauge (right axis)'",
             src + f"{col['kernel_established']} axes x1y2 with lines lw 1.5 dt 2 "
             "lc rgb '#1b5e20' title 'kernel: ESTABLISHED on the port (right axis)'",
             src + f"{col['close_wait']} axes x1y2 with lines lw 2 lc rgb '#e65100' "
             "title 'kernel: CLOSE_WAIT on the port (right axis)'"]
    colors = ["#1565c0", "#6d4c41", "#c62828", "#00838f"]
    for i, (c, label) in enumerate(extra_y2):
        if c in col:
            plots.append(src + f"{col[c]} axes x1y2 with lines lw 1.5 "
                         f"lc rgb '{colors[i % len(colors)]}' title '{label} (right axis)'")
    script = "\n".join([
        "set terminal pngcairo size 1100,650 font 'sans,11' noenhanced" if _has_cairo() else
        "set terminal png size 1100,650 noenhanced",
        f"set output '{png_path}'",
        "set datafile separator ','",
        "set key below",
        f"set title '{title}'",
        "set xlabel 'seconds'",
        "set ylabel 'MB'",
        "set y2label 'connections / sockets'",
        "set grid",
        "set yrange [0:*]",
        "set y2range [0:*]",
        "set ytics nomirror",
        "set y2tics",
        "plot " + ", ".join(plots),
    ])
    r = subprocess.run(["gnuplot"], input=script, text=True, capture_output=True)
    if r.returncode != 0:
        print("gnuplot failed: " + r.stderr, file=sys.stderr)
        return False
    return True


class ManualSampler(Sampler):
    """A Sampler driven by its caller: no thread; sample() (or tick(), which samples when
    `interval` has passed) is called from the scenario's own loop, so samples never overlap the
    scenario's other /metrics requests and can be taken at chosen quiet moments.

    Same rows as Sampler, plus what sluice holds (`held*`), and a stricter comparison for
    scenarios where connections never stop moving: the gauge is compared with the kernel only
    when the *set* of established connections (peer and inode) is identical before and after
    the scrape, and connections still in the listen queue (not yet accepted, inode 0) are not
    counted. `compared` counts the samples where the comparison was made, `inconclusive` the
    others; `mismatches` (and `mismatch_rows`, the full rows) the compared samples where the
    gauge differed from the kernel."""

    def __init__(self, server, interval=1.0, extra=None):
        self.compared = 0
        self.inconclusive = 0
        self.mismatch_rows = []
        self._last = None
        super().__init__(server, interval, extra)

    def _run(self):
        return

    @staticmethod
    def _established(port):
        """Accepted ESTABLISHED server-side sockets of `port`, as a set of (peer, inode).
        A socket whose handshake the kernel completed but that sluice has not accept()ed yet is
        still in the listen queue, has no inode (0), and is not counted: sluice cannot know of
        it, and under churn there is nearly always one."""
        return {(peer, inode) for peer, (st, inode) in kernel_conn_table(port).items()
                if st == TCP_ESTABLISHED and inode != 0}

    def sample(self):
        s = self.server
        e1 = self._established(s.port)
        m = {}
        try:
            m = s.metrics()
        except Exception:
            self.errors += 1
        e2 = self._established(s.port)
        # Compared only when the very same connections were established before and after the
        # scrape (equal counts are not enough under churn: an open and a close cancel out).
        k1, k2 = (0, 0) if e1 == e2 else (len(e1), -1)
        k2_count = len(e2)
        gauge = int(m.get("sluice_connections", -1)) - 1 if m else -1
        row = {
            "t": round(time.monotonic() - self._t0, 3),
            "rss_mb": round(s.rss() / 2**20, 3),
            "gauge": gauge,
            "kernel_established": k2_count,
            "close_wait": kernel_sockets(s.port, TCP_CLOSE_WAIT),
            "fds": s.fds(),
            "deliveries": int(m.get("sluice_deliveries_total", 0)),
            "published": int(m.get("sluice_messages_published_total", 0)),
        }
        row["accounted_mb"] = round(m.get("sluice_memory_accounted_bytes", 0) / 2**20, 4)
        # What sluice itself holds: sockets on the port (any state) whose inode is in its fd
        # table, by state. ESTABLISHED is what the gauge is compared with; the others explain a
        # difference (CLOSE_WAIT: the peer closed, sluice has not yet; FIN_WAIT*/CLOSING/LAST_ACK:
        # sluice sent its FIN and lingers for the peer's).
        held = held_by_state(s.port, s.proc.pid)
        row["held"] = sum(held.values())
        row["held_close_wait"] = held.get("CLOSE_WAIT", 0)
        row["held_fin"] = sum(v for k, v in held.items()
                              if k in ("FIN_WAIT1", "FIN_WAIT2", "CLOSING", "LAST_ACK"))
        if self.extra:
            row.update(self.extra())
        if m and k1 == k2:
            self.compared += 1
            if gauge != k2_count:
                self.mismatches.append((row["t"], gauge, k2_count))
                self.mismatch_rows.append(dict(row))
        else:
            self.inconclusive += 1
        row["compared"] = int(bool(m) and k1 == k2)
        self.rows.append(row)
        self.last_metrics = m
        self._last = time.monotonic()
        return row

    def tick(self):
        if self._last is None or time.monotonic() - self._last >= self.interval:
            return self.sample()
        return None


class StdinLines:
    """Unbuffered line reader for a child process's stdin (fd 0), safe to use with select():
    readable() -> register fd 0; read() after select() returns the complete lines now available
    (None once stdin is closed); first() blocks for the first line."""

    def __init__(self, fd=0):
        self.fd = fd
        self.buf = b""
        self.lines = []

    def fileno(self):
        return self.fd

    def _fill(self):
        data = os.read(self.fd, 65536)
        if not data:
            return False
        self.buf += data
        *done, self.buf = self.buf.split(b"\n")
        self.lines += [d.decode() for d in done]
        return True

    def first(self):
        while not self.lines:
            if not self._fill():
                return None
        return self.lines.pop(0)

    def read(self):
        """Lines available after a select() said fd 0 is readable (and any left over)."""
        if not self._fill() and not self.lines:
            return None
        out, self.lines = self.lines, []
        return out

    def pending(self):
        out, self.lines = self.lines, []
        return out


class ServerAt(Server):
    """A Server listening on `host` instead of 127.0.0.1 (e.g. "0.0.0.0", to be reachable from a
    network namespace as well as on loopback). Everything else as Server: same temporary
    directory layout, `url` and wait on 127.0.0.1."""

    def __init__(self, config="", host="0.0.0.0", binary=SLUICE_BIN, memory_limit=None):
        self.dir = Path(tempfile.mkdtemp(prefix="sluice-chaos-"))
        self.port = free_port()
        self.memory_limit = memory_limit
        text = f"[server]\nlisten = {host}:{self.port}\ndata_dir = {self.dir}/data\n"
        if memory_limit:
            text += f"memory_limit = {memory_limit}\n"
        text += config
        (self.dir / "sluice.ini").write_text(text)
        self.log = open(self.dir / "sluice.log", "wb")
        self.proc = subprocess.Popen([binary, "--config", str(self.dir / "sluice.ini")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.pids = [self.proc.pid]
        self.url = f"http://127.0.0.1:{self.port}"
        wait_listening(self.port, self.proc)
        self.exit_code = None


class NetNS:
    """A network namespace joined to the root namespace by a veth pair, for clients whose
    traffic can then be cut (`cut()`: the namespace's end of the link goes down, so nothing
    reaches them and nothing comes back; no FIN, no RST). Only addresses inside the namespace
    and on the two veth ends created here are touched (10.231.x.y/30); inside, ephemeral ports
    are 20000-29999. `NetNS.create()` returns (ns, None) or (None, reason) when namespaces
    cannot be used here (not root, no `ip`, no permission); destroy() removes both."""

    def __init__(self, tag):
        self.name = f"sluice-chaos-{tag}"
        self.host_if = f"slc{tag}h"[:15]
        self.peer_if = f"slc{tag}p"[:15]
        n = int(tag) % 16384
        self.host_ip = f"10.231.{n >> 6}.{(n & 63) * 4 + 1}"
        self.peer_ip = f"10.231.{n >> 6}.{(n & 63) * 4 + 2}"
        self.created = False

    def _run(self, *cmd, ns=False):
        full = (["ip", "netns", "exec", self.name] if ns else []) + list(cmd)
        r = subprocess.run(full, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(full)}: {r.stderr.strip()}")
        return r.stdout

    @classmethod
    def create(cls, tag=None):
        if os.geteuid() != 0:
            return None, "not root"
        if shutil.which("ip") is None:
            return None, "no ip command"
        ns = cls(tag if tag is not None else os.getpid() % 100000)
        try:
            ns._run("ip", "netns", "add", ns.name)
            ns.created = True
            ns._run("ip", "link", "add", ns.host_if, "type", "veth", "peer", "name", ns.peer_if)
            ns._run("ip", "link", "set", ns.peer_if, "netns", ns.name)
            ns._run("ip", "addr", "add", f"{ns.host_ip}/30", "dev", ns.host_if)
            ns._run("ip", "link", "set", ns.host_if, "up")
            ns._run("ip", "addr", "add", f"{ns.peer_ip}/30", "dev", ns.peer_if, ns=True)
            ns._run("ip", "link", "set", ns.peer_if, "up", ns=True)
            ns._run("ip", "link", "set", "lo", "up", ns=True)
            # Client ports inside the namespace never collide with client ports on loopback,
            # so a client port alone names a connection on the server's side.
            ns._run("sysctl", "-qw", "net.ipv4.ip_local_port_range=20000 29999", ns=True)
        except (RuntimeError, OSError) as e:
            ns.destroy()
            return None, str(e)
        return ns, None

    def cmd_prefix(self):
        """Prefix a command with this to run it inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def cut(self):
        self._run("ip", "link", "set", self.peer_if, "down", ns=True)

    def destroy(self):
        if self.created:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
            self.created = False
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
