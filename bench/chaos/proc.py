"""The processes of the chaos scenarios: a server to test (sluice, started through test/integ's
sluice_proc, or nginx + nchan for A/B runs) in a temporary directory on a free port, and what
/proc says about a process (RSS, open fds, the sockets it holds), its metrics as the server
reports them, the file-descriptor limit, and a line reader for a child scenario's stdin.

Run with Debian's interpreter (/usr/bin/python3); only the standard library is used.
"""

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "test" / "integ"))
from sluice_proc import (REPO, SLUICE_BIN, free_port, render_config, spawn,  # noqa: E402
                         wait_listening)

LOAD_BIN = os.environ.get("SLUICE_LOAD", str(REPO / "build" / "sluice-load"))

# src/server.c SWEEP_MS: the period at which sluice checks every connection's deadlines
# (header/idle timeouts, write stall, WebSocket ping and pong, SSE heartbeats). A deadline
# fires at most one sweep after it is due; liveness bounds below add it.
SWEEP_S = 0.25


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


def raise_nofile(want=None):
    """Raises RLIMIT_NOFILE to `want` (default: the hard limit); returns the new soft limit.
    Children (the server included) inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if want is None or want > hard else max(soft, want)
    if target != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


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
    temporary directory, listening on `host` (e.g. "0.0.0.0", to be reachable from a network
    namespace as well as on loopback); `url` and the wait for it use 127.0.0.1. stop() sends
    SIGTERM and waits; the exit code is kept."""

    kind = "sluice"

    def __init__(self, config="", binary=SLUICE_BIN, memory_limit=None, host="127.0.0.1",
                 admin_token=None):
        self.admin_token = admin_token  # sent to /metrics when the config has [auth]
        self.dir = Path(tempfile.mkdtemp(prefix="sluice-chaos-"))
        self.port = free_port()
        self.memory_limit = memory_limit
        server = {"listen": f"{host}:{self.port}", "data_dir": f"{self.dir}/data"}
        if memory_limit:
            server["memory_limit"] = memory_limit
        # Sections given by the caller follow; a second [server] section adds keys to the first.
        (self.dir / "sluice.ini").write_text(render_config(server) + config)
        self.proc = spawn(self.dir / "sluice.ini", self.dir / "sluice.log", binary)
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
        return self.exit_code

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class ServerAt(Server):
    """A Server listening on `host`, by default "0.0.0.0"."""

    def __init__(self, config="", host="0.0.0.0", binary=SLUICE_BIN, memory_limit=None):
        super().__init__(config, binary, memory_limit, host)


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
        with open(self.dir / "nginx.log", "wb") as log:
            self.proc = subprocess.Popen(["nginx", "-c", str(self.dir / "nginx.conf"), "-p",
                                          str(self.dir)],
                                         stdout=log, stderr=subprocess.STDOUT)
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
