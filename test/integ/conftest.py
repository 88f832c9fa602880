"""Fixtures for the black-box suite: start the real `sluice` binary with a generated config,
talk to it over TCP, and stop it by PID, failing the test if it crashed.

Binary: $SLUICE_BIN, else <repo>/build/sluice.
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from sluice_client import RawConn, SSEClient, http  # noqa: E402
from sluice_proc import SLUICE_BIN, free_port, render_config, spawn  # noqa: E402, F401

CRASH_MARKERS = ("AddressSanitizer", "runtime error", "LeakSanitizer", "Segmentation fault")


def parse_metrics(text):
    """Prometheus text -> {'name{k="v",...}': value} with labels sorted; also 'name' for
    unlabelled series."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)(\s+\d+)?$', line)
        if not m:
            raise AssertionError(f"unparseable metrics line: {line!r}")
        name, labels, value = m.group(1), m.group(2), m.group(3)
        key = name
        if labels:
            pairs = re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"', labels)
            if pairs:
                key = name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(pairs)) + "}"
        out[key] = float(value)
    return out


class Metrics(dict):
    """A metrics snapshot; missing series read as 0 through .v()."""

    def v(self, key):
        return self.get(key, 0.0)


class Sluice:
    """A running server process and helpers to talk to it."""

    def __init__(self, proc, port, workdir, config_path, stderr_path, shutdown_drain_s):
        self.proc = proc
        self.pid = proc.pid
        self.port = port
        self.host = "127.0.0.1"
        self.base_url = f"http://127.0.0.1:{port}"
        self.workdir = workdir
        self.config_path = config_path
        self.stderr_path = stderr_path
        self.shutdown_drain_s = shutdown_drain_s
        self.killed_by_us = None  # signal we sent, if any
        self.stopped = False

    # -- process ---------------------------------------------------------------------------
    def logs(self):
        try:
            return Path(self.stderr_path).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self):
        return self.proc.poll() is None

    def fd_count(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_bytes(self):
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def signal(self, sig):
        self.killed_by_us = sig
        os.kill(self.pid, sig)

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    # -- HTTP ------------------------------------------------------------------------------
    def request(self, method, path, headers=None, body=None, timeout=5.0):
        return http(self.port, method, path, headers, body, timeout)

    def get(self, path, headers=None, timeout=5.0):
        return self.request("GET", path, headers, None, timeout)

    def post(self, path, body, headers=None, timeout=5.0):
        return self.request("POST", path, headers, body, timeout)

    def publish(self, topic, payload, event=None, expect=202):
        path = f"/topics/{topic}" + (f"?event={event}" if event else "")
        r = self.post(path, payload)
        assert r.status == expect, f"publish to {topic}: {r.status} {r.body!r}"
        if expect == 202:
            return r.json()["id"]
        return r

    def publish_batch(self, topic, lines, event=None):
        body = "".join(line + "\n" for line in lines)
        path = f"/topics/{topic}" + (f"?event={event}" if event else "")
        r = self.post(path, body, {"Content-Type": "application/x-ndjson"})
        assert r.status == 202, f"batch publish to {topic}: {r.status} {r.body!r}"
        return r.json()["ids"]

    def topics(self):
        r = self.get("/topics")
        assert r.status == 200, r
        return {t["name"]: t for t in r.json()["topics"]}

    def metrics(self):
        r = self.get("/metrics")
        assert r.status == 200, r
        return Metrics(parse_metrics(r.body.decode()))

    def wait_metric(self, key, pred, timeout=10.0, interval=0.1):
        """Polls until pred(value) holds; returns the last snapshot. Fails with the value."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics()
            if pred(m.v(key)):
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"metric {key} = {m.v(key)} did not reach the condition "
                                     f"within {timeout}s")
            time.sleep(interval)

    def sse(self, path, **kw):
        return SSEClient(self.port, path, **kw)

    def raw(self, **kw):
        return RawConn(self.port, **kw)


def _check_crash(srv):
    """Returns a message if the server crashed, else None."""
    logs = srv.logs()
    for marker in CRASH_MARKERS:
        if marker in logs:
            return f"'{marker}' in server stderr:\n{logs[-4000:]}"
    rc = srv.proc.returncode
    if rc is None:
        return None
    if srv.killed_by_us is None:
        return f"server exited by itself with code {rc}:\n{logs[-4000:]}"
    ok = {0, -signal.SIGKILL, -signal.SIGTERM}
    if rc not in ok:
        return f"server exit code {rc} after signal {srv.killed_by_us}:\n{logs[-4000:]}"
    return None


@pytest.fixture
def sluice_factory(tmp_path):
    """start(server=..., limits=..., topics=..., text=None, args=(), port=None,
    extra_text=None, env=None) -> Sluice (env: variables added to the server's environment).

    Writes the config, starts the binary on 127.0.0.1 with a free port, waits for /healthz.
    At teardown every server still running gets SIGTERM (SIGKILL after a grace period); the
    test fails if a server crashed or exited on its own with a nonzero code."""
    if not os.access(SLUICE_BIN, os.X_OK):
        pytest.skip(f"sluice binary not found at {SLUICE_BIN}")
    servers = []

    def start(server=None, limits=None, topics=None, text=None, args=(), port=None,
              listen_arg=False, extra_text=None, env=None):
        n = len(servers)
        workdir = tmp_path / f"srv{n}"
        workdir.mkdir()
        last_err = None
        for _attempt in range(3):
            p = port if port is not None else free_port()
            srv_conf = {"listen": f"127.0.0.1:{p}", "data_dir": str(workdir / "data"),
                        "shutdown_drain": "1s", "log_level": "info",
                        "memory_limit": "64MiB"}
            srv_conf.update(server or {})
            cfg_text = text if text is not None else render_config(srv_conf, limits, topics)
            cfg_text += extra_text or ""  # more sections (e.g. [source "…"])
            cfg_path = workdir / "sluice.ini"
            cfg_path.write_text(cfg_text)
            stderr_path = workdir / "stderr.log"
            argv = ["--listen", f"127.0.0.1:{p}"] if listen_arg else []
            proc = spawn(cfg_path, stderr_path, args=argv + list(args), cwd=workdir, env=env)
            drain = _duration_s(srv_conf.get("shutdown_drain", "5s"))
            srv = Sluice(proc, p, workdir, cfg_path, stderr_path, drain)
            servers.append(srv)
            if p == 0:
                srv.port = _port_from_log(srv)
                srv.base_url = f"http://127.0.0.1:{srv.port}"
            if _wait_healthy(srv):
                return srv
            last_err = srv.logs()
            if srv.alive():
                srv.signal(signal.SIGKILL)
                srv.wait_exit(5)
            else:
                srv.killed_by_us = "startup"  # reported below, not as a crash
            if "in use" not in last_err.lower():
                break
        pytest.fail(f"sluice did not become healthy; stderr:\n{last_err}")

    yield start

    problems = []
    for srv in servers:
        if srv.alive():
            crash = None
            try:
                srv.signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            if srv.wait_exit(srv.shutdown_drain_s + 5) is None:
                srv.signal(signal.SIGKILL)
                srv.wait_exit(5)
                problems.append(f"server pid {srv.pid} ignored SIGTERM for "
                                f"{srv.shutdown_drain_s + 5}s and was killed")
        elif srv.killed_by_us == "startup":
            continue
        crash = _check_crash(srv)
        if crash:
            problems.append(f"server pid {srv.pid}: {crash}")
    if problems:
        pytest.fail("\n".join(problems))


@pytest.fixture
def sluice(sluice_factory):
    """A server with the default test config."""
    return sluice_factory()


def _duration_s(v):
    m = re.match(r"^(\d+)(ms|s|m|h)?$", str(v).strip())
    if not m:
        return 5.0
    n = int(m.group(1))
    return {"ms": n / 1000, "s": n, "m": n * 60, "h": n * 3600, None: n}[m.group(2)]


def _port_from_log(srv, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(r'msg="?listening"?.*?addr=\[?[0-9a-fA-F.:]*?\]?:(\d+)', srv.logs())
        if m:
            return int(m.group(1))
        if not srv.alive():
            break
        time.sleep(0.02)
    pytest.fail(f"no 'listening' line with a port in stderr:\n{srv.logs()}")


def _wait_healthy(srv, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not srv.alive():
            return False
        try:
            r = http(srv.port, "GET", "/healthz", timeout=1.0)
            if r.status == 200:
                return True
        except (OSError, TimeoutError, AssertionError):
            pass
        time.sleep(0.05)
    return False



@pytest.fixture
def kafka_mock():
    """A librdkafka mock cluster (test/integ/kafka_mock.py); destroyed at teardown."""
    from kafka_mock import KafkaMock, mock_bin
    if not os.access(mock_bin(), os.X_OK):
        pytest.skip(f"sluice-kafka-mock not found at {mock_bin()}")
    mock = KafkaMock()
    yield mock
    mock.close()
