"""Starting the real `sluice` binary, without pytest: a free port, a config rendered from dicts,
the process started with its output in a log file, and a wait until it listens. The black-box
fixtures (conftest.py) and the chaos scenarios (bench/chaos/proc.py) both start servers with it.

Binary: $SLUICE_BIN, else <repo>/build/sluice. Standard library only.
"""

import os
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SLUICE_BIN = os.environ.get("SLUICE_BIN", str(REPO / "build" / "sluice"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def render_config(server=None, limits=None, topics=None):
    """INI text from dicts. `topics` is a list of (glob, {key: value}) or a dict glob -> dict
    (in order). Values are written as given (strings like '2s', '64MiB', 'true')."""
    out = []
    if server:
        out.append("[server]")
        out += [f"{k} = {v}" for k, v in server.items()]
    if limits:
        out.append("[limits]")
        out += [f"{k} = {v}" for k, v in limits.items()]
    if topics:
        items = topics.items() if isinstance(topics, dict) else topics
        for glob, kv in items:
            out.append(f'[topic "{glob}"]')
            out += [f"{k} = {v}" for k, v in kv.items()]
    return "\n".join(out) + "\n"


def spawn(config_path, log_path, binary=SLUICE_BIN, args=(), cwd=None, env=None):
    """Starts `binary --config config_path [args…]` with stdin closed and stdout and stderr both
    written to `log_path`, with `env` (a dict) added to the environment. Returns the Popen; the
    caller stops it."""
    full = dict(os.environ, **env) if env else None
    with open(log_path, "wb") as log:
        return subprocess.Popen([str(binary), "--config", str(config_path)] + list(args),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=cwd,
                                env=full)


def wait_listening(port, proc, timeout=10.0):
    """Waits until 127.0.0.1:`port` accepts a connection. Raises RuntimeError if `proc` exits
    first or the time runs out."""
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
