"""A real browser against the real server: headless Chromium subscribes with `EventSource` and
`WebSocket` from a page on another origin (so it relies on sluice's CORS headers), receives
published messages, resumes exactly after closing its connections, and resumes after the server
is restarted on the same port (one reset marker, then every message exactly once, in order).

The browser side is test/browser/browser_test.mjs (Node + playwright-core driving
/usr/bin/chromium); this test starts sluice, runs the script, and restarts sluice when the script
prints `CTRL RESTART` (SIGTERM, wait for exit 0, start a new process with the same config on the
same port, answer `RESTARTED` on the script's stdin). Skipped when Chromium or the npm
dependencies are missing (`bash scripts/dev.sh deps` installs both)."""

import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BROWSER_DIR = REPO / "test" / "browser"
SCRIPT = BROWSER_DIR / "browser_test.mjs"
CHROMIUM = "/usr/bin/chromium"
PLAYWRIGHT = BROWSER_DIR / "node_modules" / "playwright-core"

# sse_retry: how soon EventSource reconnects after the server goes away.
SERVER = {"sse_retry": "500ms", "shutdown_drain": "2s"}
TOPICS = [("*", {"max_messages": 1024})]

OVERALL_TIMEOUT = 90  # hard cap; a passing run takes a few seconds
STEP_TIMEOUT = 60


def _missing():
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} not installed (apt-get install chromium, or bash scripts/dev.sh deps)"
    if not (PLAYWRIGHT / "package.json").exists():
        return (f"{PLAYWRIGHT} missing (run `npm ci` in {BROWSER_DIR}, "
                "or bash scripts/dev.sh deps)")
    return None


class NodeScript:
    """The browser script as a child process in its own process group: stdout lines arrive on
    a queue, stderr goes to a file, stdin carries control lines."""

    def __init__(self, args, stderr_path):
        node = shutil.which("node") or "/usr/bin/node"
        self.stderr_path = stderr_path
        self.errf = open(stderr_path, "wb")
        self.proc = subprocess.Popen([node, str(SCRIPT), *args], cwd=BROWSER_DIR,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.errf, start_new_session=True, text=True,
                                     bufsize=1)
        self.lines = queue.Queue()
        self.stdout = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.stdout.append(line)
            self.lines.put(line)
        self.lines.put(None)  # EOF

    def next_line(self, timeout):
        """The next stdout line, None at EOF, or raises queue.Empty on timeout."""
        return self.lines.get(timeout=timeout)

    def send(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def output(self):
        err = Path(self.stderr_path).read_text(errors="replace")
        return "--- script stdout ---\n" + "\n".join(self.stdout) + \
            "\n--- script stderr ---\n" + err[-12000:]

    def stop(self):
        """Ends the script and its Chromium (same process group, ours by id)."""
        if self.proc.poll() is None:
            for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
        else:
            # Node exited; make sure no Chromium of its group is left behind.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.errf.close()


def test_browser_eventsource_and_websocket(sluice_factory, tmp_path):
    reason = _missing()
    if reason:
        pytest.skip(reason)

    srv = sluice_factory(server=SERVER, topics=TOPICS)
    servers = [srv]
    script = NodeScript([srv.base_url, "--restart"], tmp_path / "browser_test.stderr")
    deadline = time.monotonic() + OVERALL_TIMEOUT
    result = None
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"browser script did not finish within {OVERALL_TIMEOUT}s\n"
                            + script.output() + _server_logs(servers))
            try:
                line = script.next_line(timeout=min(left, STEP_TIMEOUT))
            except queue.Empty:
                pytest.fail("browser script silent for too long\n" + script.output()
                            + _server_logs(servers))
            if line is None:
                break
            if line == "CTRL RESTART":
                old = servers[-1]
                old.signal(signal.SIGTERM)
                rc = old.wait_exit(old.shutdown_drain_s + 10)
                assert rc == 0, (f"sluice exit code {rc} after SIGTERM (want 0)\n"
                                 + _server_logs(servers))
                new = sluice_factory(server=SERVER, topics=TOPICS, port=old.port)
                assert new.port == old.port
                servers.append(new)
                script.send("RESTARTED")
            elif line == "PASS":
                result = "PASS"
        rc = script.proc.wait(timeout=15)
    finally:
        script.stop()
    out = script.output()
    assert rc == 0 and result == "PASS", \
        f"browser script failed (exit {rc})\n{out}{_server_logs(servers)}"
    assert len(servers) == 2, "the script never asked for the restart\n" + out


def _server_logs(servers):
    out = []
    for s in servers:
        out.append(f"\n--- sluice pid {s.pid} port {s.port} stderr (tail) ---\n{s.logs()[-3000:]}")
    return "".join(out)


AUTH_SCRIPT = BROWSER_DIR / "auth_test.mjs"


def test_browser_subscribes_with_access_token(sluice_factory, tmp_path):
    """The page subscribes with ?access_token= (EventSource and WebSocket cannot send an
    Authorization header): refused without it, served with it, and told when it expires."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    from auth_util import start_auth, token
    srv = start_auth(sluice_factory, tmp_path, auth={"leeway": "0s"})
    topic = "room/browser"
    sub = token(grants={"sub": ["room/*"]}, sub="page")
    pub = token(grants={"pub": ["room/*"]}, sub="backend")
    # long enough for the page to open its subscribers, short enough to see it expire
    short = token(grants={"sub": ["room/*"]}, sub="page", exp_in=6)
    node = shutil.which("node") or "/usr/bin/node"
    errf = tmp_path / "auth_test.stderr"
    with open(errf, "wb") as err:
        p = subprocess.Popen([node, str(AUTH_SCRIPT), srv.base_url, topic, sub, pub, short],
                             cwd=BROWSER_DIR, stdout=subprocess.PIPE, stderr=err,
                             start_new_session=True, text=True)
        try:
            out, _ = p.communicate(timeout=OVERALL_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, _ = p.communicate()
    log = Path(errf).read_text(errors="replace")
    assert p.returncode == 0 and out.strip().endswith("PASS"), \
        f"auth browser script failed (exit {p.returncode})\n{out}\n{log}\n{srv.logs()[-3000:]}"
    # the token in the URL never reached the server's logs
    assert sub not in srv.logs() and short not in srv.logs()
