#!/usr/bin/python3
"""Chaos scenario "ghosts": peers that vanish without FIN or RST, and peers that half-close,
over SSE and WebSocket (FAILURES.md #3 and #6: a gauge of 199 against 17 real connections).

Client processes open subscriptions and are then turned into ghosts, class by class:

  vanished: the process is SIGSTOPped and never resumed (its kernel keeps the connection
  ESTABLISHED and keeps acknowledging, so only sluice's own deadlines can find it)
    sse_live      SSE on a topic with traffic (25 msg/s of 1 KiB); half with the minimum
                  SO_RCVBUF -> write stall, once both socket buffers are full
    sse_quiet     SSE on a topic with no traffic and a 250 ms heartbeat event (52 bytes),
                  minimum SO_RCVBUF -> write stall, once the heartbeats alone filled the buffers
    sse_quiet_hb  (full profile) the same with the heartbeat comment ": hb" (6 bytes)
    ws_stopped    WebSocket on the live and the quiet topic (some with the minimum SO_RCVBUF)
                  -> ping timeout
    midreq_head   half a request's headers sent, then stopped -> header timeout
    midreq_body   headers and half a body sent, then stopped -> idle timeout
  vanished network (when network namespaces can be used here; --no-netns skips them): clients
  in a namespace joined by a veth pair, whose end of the link is then set down: the processes
  keep running but nothing reaches them and nothing comes back (no FIN, no RST)
    net_sse_live, net_sse_quiet -> write stall;  net_ws -> ping timeout
  unresponsive: the process keeps running and reading
    ws_nopong     WebSocket clients that stop answering pings -> ping timeout
  half-closed: shutdown(SHUT_WR), the socket stays open on the client
    half_sse, half_ws     after subscribing -> closed as "peer"
    half_head, half_body  after half a request (headers / body) -> closed as "peer"

Healthy controls (SSE and WebSocket, on all three topics, reading everything and answering
pings) run alongside: the liveness machinery must not touch them.

Pass criteria (each can fail; every one is printed with its figures on failure):
  * every ghost's server-side socket (found by inode) leaves sluice's fd table: no poll (every
    0.2 s or so) finds it still there after its liveness bound (below)
  * write-stall ghosts: no poll finds the socket still open later than write_stall_timeout +
    2*SWEEP + SLACK after the last byte it accepted from sluice (the kernel's own count, `ss
    -ti`): the server's promise checked against the kernel, however long the buffers took
  * sluice_connections_closed_total{reason} grew by exactly the expected count for every reason
    (peer, write_stall, header_timeout, idle_timeout, ping_timeout; 0 for the others)
  * the connection gauge equals the kernel's count of established connections at every sample
    (ManualSampler: compared when the set of established connections was the same
    before and after the scrape, which it is for at least half the samples, else FAIL)
  * once the ghosts are gone: gauge == controls + publisher, CLOSE_WAIT on the port == 0
  * no control connection was closed; every control received data, heartbeats or pings
  * after the controls close: gauge, kernel count and CLOSE_WAIT are 0; SIGTERM exits 0

Liveness bounds, computed from the config below (SWEEP = 0.25 s: sluice checks deadlines and
sends heartbeats on that period, src/server.c; SLACK = 1.2 s for scheduling on a loaded 2-core
machine and this script's 0.2 s polling); t_ghost is the SIGSTOP, the cut, the last command:
  ws_stopped, ws_nopong, net_ws:  t_ghost + ws_ping_interval + ws_pong_timeout + 2*SWEEP + SLACK
  midreq_head:    t_ghost + header_timeout + 2*SWEEP + SLACK
  midreq_body:    t_ghost + idle_timeout + 2*SWEEP + SLACK
  half_*:         t_ghost + SLACK (an end of stream is an event, not a deadline)
  sse_live:       t_fill + write_stall_timeout + 2*SWEEP + SLACK, t_fill the moment the
                  publisher had published C = SO_SNDBUF(server) + SO_RCVBUF(client) + 64 KiB
                  payload bytes after t_ghost: the two buffers cannot take more (the kernel
                  charges at least a byte per payload byte; 64 KiB is one GSO segment queued
                  past the send buffer), so from then on the pending write cannot progress.
                  Both buffer sizes are read with `ss -tm` at t_ghost. net_sse_live: the same
                  with SO_RCVBUF(client) = 0 (nothing reaches the client).
  sse_quiet*:     t_ghost + C / (hb / P) + write_stall_timeout + 2*SWEEP + SLACK, with
                  C = SO_SNDBUF + SO_RCVBUF + hb, hb the heartbeat's bytes and P the slowest
                  heartbeat period the sweep allows ((ceil(heartbeat/SWEEP) + 1) * SWEEP).
                  net_sse_quiet: the same with SO_RCVBUF = 0.

What sluice cannot detect, and why: an idle SSE subscriber (no messages) whose process is
stopped, or whose machine vanished while something still acks for it, is only found when the
heartbeats fill both socket buffers; with the defaults (heartbeat 15 s ": hb" = 6 bytes,
send_buffer 128 KiB -> 256 KiB in the kernel) that is (262144 + its SO_RCVBUF) / 0.4 B/s, more
than a week: never, in practice. TCP keepalive (on, 60 s) cannot help against a stopped process,
whose kernel answers the probes; it does find a vanished host, but only after 60 s + 9 probes
75 s apart (the kernel's defaults: about 12 minutes). The scenario therefore configures a small
send_buffer, a 250 ms heartbeat and a minimum SO_RCVBUF for those clients, and checks the bound
that follows. WebSocket has pings and is found within ping interval + pong timeout.

Usage: bench/chaos/ghosts.py [--short] [--no-netns]
  --short: CI profile (720 ghosts + 130 in the namespace, about 35 s); full: 3x the ghosts
  and the ": hb" class (about 100 s).
Writes ghosts.csv (samples), ghosts.png (RSS, gauge vs kernel, CLOSE_WAIT, ghosts not yet
freed) and ghosts-detail.csv (one line per ghost: bound, time to be freed, socket buffers,
bytes accepted) into out_dir("ghosts"). Exits 1 on FAIL.
"""

import argparse
import json
import math
import os
import selectors
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../test/integ"))
from clients import WsReader, open_client  # noqa: E402
from kernel import kernel_conn_table, ss_accepted, ss_skmem  # noqa: E402
from loadkit import Publisher  # noqa: E402
from netns import NetNS  # noqa: E402
from proc import SWEEP_S, Server, ServerAt, StdinLines, raise_nofile, socket_inodes  # noqa: E402
from report import out_dir, plot_connections, verdict  # noqa: E402
from sampling import ManualSampler  # noqa: E402
from ws_client import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, encode_frame  # noqa: E402

WRITE_STALL = 5.0
PING = 2.0
PONG = 2.0
HEADER_TIMEOUT = 4.0
IDLE_TIMEOUT = 6.0
SEND_BUFFER = 1024          # the kernel raises it to its minimum (4608 here)
HEARTBEAT = 0.25
SLACK = 1.2
POLL = 0.2
HB_EVENT_BYTES = len('event: sluice.heartbeat\ndata: {"ts":1764000000000}\n\n')
HB_COMMENT_BYTES = len(": hb\n\n")
PUB_RATE = 25               # messages/s on the live topic
PUB_SIZE = 1024             # bytes each
GSO_SLACK = 65536

T_LIVE, T_QUIET, T_QUIET_HB = "ghost/live", "ghost/quiet", "ghost/quiet-hb"

CONFIG = f"""write_stall_timeout = {int(WRITE_STALL * 1000)}ms
ws_ping_interval = {int(PING * 1000)}ms
ws_pong_timeout = {int(PONG * 1000)}ms
header_timeout = {int(HEADER_TIMEOUT * 1000)}ms
idle_timeout = {int(IDLE_TIMEOUT * 1000)}ms
send_buffer = {SEND_BUFFER}
[limits]
max_connections_per_ip = 100000
[topic "{T_QUIET}"]
heartbeat = {int(HEARTBEAT * 1000)}ms
heartbeat_event = true
[topic "{T_QUIET_HB}"]
heartbeat = {int(HEARTBEAT * 1000)}ms
heartbeat_event = false
"""

# Expected close reason of each ghost class.
REASON = {"sse_live": "write_stall", "sse_quiet": "write_stall", "sse_quiet_hb": "write_stall",
          "ws_stopped": "ping_timeout", "ws_nopong": "ping_timeout",
          "midreq_head": "header_timeout", "midreq_body": "idle_timeout",
          "half_sse": "peer", "half_ws": "peer", "half_head": "peer", "half_body": "peer",
          "net_sse_live": "write_stall", "net_sse_quiet": "write_stall",
          "net_ws": "ping_timeout"}
WATCHED_REASONS = ["peer", "write_stall", "header_timeout", "idle_timeout", "overflow",
                   "shutdown", "error", "protocol", "ping_timeout", "ws_close"]


# ---- child process: holds connections, obeys commands on stdin ------------------------------

HALF_HEAD = "GET /topics/{t} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/ev"
HALF_BODY = ("POST /topics/{t} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n"
             + "y" * 400)


def child_main(spec, stdin):
    raise_nofile()
    port = spec["port"]
    host = spec.get("host", "127.0.0.1")
    pong = spec.get("pong", True)
    sel = selectors.DefaultSelector()
    sel.register(stdin, selectors.EVENT_READ, -1)
    out = sys.stdout
    conns = [{"s": None, "kind": c["kind"], "topic": c["topic"], "rcvbuf": c.get("rcvbuf"),
              "bytes": 0, "frames": 0, "pings": 0, "eof": None, "ws": WsReader(),
              "sent_partial": False} for c in spec["conns"]]

    def ports():
        return json.dumps([c["s"].getsockname()[1] if c["s"] is not None else None
                           for c in conns])

    def on_readable(i):
        c = conns[i]
        try:
            data = c["s"].recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            c["eof"] = time.monotonic()
            sel.unregister(c["s"])   # the socket itself stays open: a ghost never closes
            return
        c["bytes"] += len(data)
        if c["kind"] == "ws":
            for op, payload in c["ws"].feed(data):
                if op == OP_PING:
                    c["pings"] += 1
                    if pong:
                        try:
                            c["s"].send(encode_frame(OP_PONG, payload))
                        except OSError:
                            pass
                elif op in (OP_TEXT, OP_BINARY):
                    c["frames"] += 1

    # Subscriptions first, one by one; between two opens the ones already open are served, so
    # a WebSocket answers its pings however long the whole setup takes on a busy machine.
    for i, c in enumerate(conns):
        if c["kind"] not in ("sse", "ws"):
            continue
        s, rest = open_client(port, c["kind"], c["topic"], rcvbuf=c["rcvbuf"], host=host)
        s.setblocking(False)
        c["s"] = s
        c["bytes"] = len(rest)
        if c["kind"] == "ws" and rest:
            c["ws"].feed(rest)
        sel.register(s, selectors.EVENT_READ, i)
        for key, _ in sel.select(0):
            if key.data != -1:
                on_readable(key.data)
    out.write("READY " + ports() + "\n")
    out.flush()

    def prep():
        """Opens the half-request connections and sends their half request (immediately: an
        idle new connection would meet the header timeout first)."""
        for c in conns:
            if c["kind"] in ("req_head", "req_body") and c["s"] is None:
                s = socket.socket()
                if c["rcvbuf"]:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, c["rcvbuf"])
                s.connect((host, port))
                tmpl = HALF_HEAD if c["kind"] == "req_head" else HALF_BODY
                s.sendall(tmpl.format(t=c["topic"]).encode())
                s.setblocking(False)
                c["s"] = s

    def command(cmd):
        """Runs one command; False when the child should exit."""
        nonlocal pong
        if cmd == "prep":
            prep()
            out.write("PORTS " + ports() + "\n")
        elif cmd == "stats":
            st = [{"kind": c["kind"], "topic": c["topic"], "bytes": c["bytes"],
                   "frames": c["frames"], "pings": c["pings"], "eof": c["eof"]}
                  for c in conns]
            out.write("STATS " + json.dumps(st) + "\n")
        elif cmd == "close":
            for c in conns:
                if c["s"] is None:
                    continue
                if c["eof"] is None and c["kind"] == "ws":
                    try:
                        c["s"].send(encode_frame(OP_CLOSE, b"\x03\xe8"))
                    except OSError:
                        pass
                c["s"].close()
            out.write("DONE\n")
            out.flush()
            return False
        else:
            if cmd == "shutwr":
                for c in conns:
                    if c["s"] is not None:
                        try:
                            c["s"].shutdown(socket.SHUT_WR)
                        except OSError:
                            pass
            elif cmd == "nopong":
                pong = False
            out.write("DONE\n")
        out.flush()
        return True

    for cmd in stdin.pending():
        if not command(cmd.strip()):
            return
    while True:
        for key, _ in sel.select(1.0):
            i = key.data
            if i != -1:
                on_readable(i)
                continue
            lines = stdin.read()
            if lines is None:
                return
            for cmd in lines:
                if not command(cmd.strip()):
                    return


class Child:
    """A client process of one class (or of controls)."""

    def __init__(self, cls, port, conns, pong=True, netns=None):
        self.cls = cls
        spec = {"port": port, "conns": conns, "pong": pong}
        prefix = []
        if netns is not None:
            spec["host"] = netns.host_ip
            prefix = netns.cmd_prefix()
        spec = json.dumps(spec)
        self.proc = subprocess.Popen(prefix + [sys.executable, os.path.abspath(__file__),
                                               "--child"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     bufsize=1)
        self.proc.stdin.write(spec + "\n")
        self.proc.stdin.flush()
        self.conns = conns
        self.ports = None
        self.stopped = False

    def expect(self, prefix, timeout=60.0):
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sel.select(max(0.0, deadline - time.monotonic())):
                line = self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"child {self.cls} exited ({self.proc.poll()})")
                if line.startswith(prefix):
                    sel.close()
                    return line[len(prefix):].strip()
        sel.close()
        raise RuntimeError(f"child {self.cls}: no {prefix!r} in {timeout}s")

    def ready(self):
        self.ports = json.loads(self.expect("READY ", 120))

    def command(self, cmd, wait=True):
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        if wait:
            self.expect("DONE", 30)

    def stats(self):
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return json.loads(self.expect("STATS ", 30))

    def stop(self):
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.stopped = True

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


# ---- the scenario -------------------------------------------------------------------------

def plan(short, netns=False):
    """Classes -> (number of processes, connection list per process)."""
    k = 1 if short else 3
    tiny = 1   # SO_RCVBUF 1: the kernel's minimum (2304 bytes here)
    p = {}

    def sse(topic, n, rcvbuf=None):
        return [{"kind": "sse", "topic": topic, "rcvbuf": rcvbuf} for _ in range(n)]

    def ws(topic, n, rcvbuf=None):
        return [{"kind": "ws", "topic": topic, "rcvbuf": rcvbuf} for _ in range(n)]

    p["sse_live"] = (2 * k, sse(T_LIVE, 50, tiny) + sse(T_LIVE, 50))
    p["sse_quiet"] = (k, sse(T_QUIET, 60, tiny))
    if not short:
        p["sse_quiet_hb"] = (1, sse(T_QUIET_HB, 60, tiny))
    p["ws_stopped"] = (k, ws(T_LIVE, 40, tiny) + ws(T_LIVE, 40) + ws(T_QUIET, 40))
    p["ws_nopong"] = (k, ws(T_LIVE, 40) + ws(T_QUIET, 40))
    p["midreq_head"] = (k, [{"kind": "req_head", "topic": T_LIVE} for _ in range(40)])
    p["midreq_body"] = (k, [{"kind": "req_body", "topic": T_LIVE} for _ in range(40)])
    p["half_sse"] = (k, sse(T_LIVE, 30) + sse(T_QUIET, 30))
    p["half_ws"] = (k, ws(T_LIVE, 30) + ws(T_QUIET, 30))
    p["half_head"] = (k, [{"kind": "req_head", "topic": T_LIVE} for _ in range(30)])
    p["half_body"] = (k, [{"kind": "req_body", "topic": T_LIVE} for _ in range(30)])
    p["control"] = (2, sse(T_LIVE, 40) + ws(T_LIVE, 40) + sse(T_QUIET, 20) + ws(T_QUIET, 20)
                    + sse(T_QUIET_HB, 10) + ws(T_QUIET_HB, 10))
    if netns:
        # Clients in a network namespace whose link is then cut.
        p["net_sse_live"] = (1, sse(T_LIVE, 40 * k))
        p["net_sse_quiet"] = (1, sse(T_QUIET, 30 * k))
        p["net_ws"] = (1, ws(T_LIVE, 30 * k) + ws(T_QUIET, 30 * k))
    return p


def metric_reasons(m):
    return {r: int(m.get(f'sluice_connections_closed_total{{reason="{r}"}}', 0))
            for r in WATCHED_REASONS}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--short", action="store_true", help="CI profile (about 35 s)")
    ap.add_argument("--no-netns", action="store_true",
                    help="skip the network-namespace clients whose link is cut")
    args = ap.parse_args()
    # run.sh's timeout sends SIGTERM: unwind through the finally blocks, which kill the (maybe
    # stopped) client processes and remove what was created.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    t_start = time.monotonic()
    raise_nofile()
    out = out_dir("ghosts")
    netns, why = (None, "disabled (--no-netns)") if args.no_netns else NetNS.create()
    if netns is None:
        print(f"netns variant skipped: {why}", flush=True)
        server = Server(CONFIG)
    else:
        # Reachable on loopback and from the namespace (the veth end 10.231.x.y).
        server = ServerAt(CONFIG, host="0.0.0.0")
    children = []
    sampler = None
    pub = None
    ghosts = []          # one dict per ghost connection
    failures = []
    try:
        # Topics exist before anyone subscribes, and the live one has traffic from the start.
        pub = Publisher(server.port, T_LIVE, PUB_RATE, PUB_SIZE)
        state = {"open": 0}
        # Samples are taken from this thread only (ManualSampler), never overlapping another
        # /metrics request of this script.
        sampler = ManualSampler(server, interval=1.0,
                                extra=lambda: {"ghosts_open": state["open"]})
        sampler.sample()

        p = plan(args.short, netns=netns is not None)
        for cls, (nproc, conns) in p.items():
            for _ in range(nproc):
                children.append(Child(cls, server.port, conns, pong=True,
                                      netns=netns if cls.startswith("net_") else None))
        for ch in children:
            ch.ready()
            sampler.tick()

        def map_ghosts(ch, ports):
            """Finds the server-side socket (inode) of each of a child's connections."""
            # A connection still in the accept queue has no inode yet (0): wait for sluice to
            # accept them all.
            wanted = {p_ for p_ in ports if p_ is not None}
            for _ in range(100):
                table = kernel_conn_table(server.port)
                by_port = {rport: inode for (rip, rport), (st_, inode) in table.items()
                           if st_ == "01" and inode != 0}
                if wanted <= set(by_port):
                    break
                time.sleep(0.05)
            for port, c in zip(ports, ch.conns):
                if port is None:
                    continue
                if port not in by_port:
                    raise RuntimeError(f"{ch.cls}: client port {port} has no established "
                                       "server socket (closed before it became a ghost?); "
                                       "closed so far: " +
                                       str(metric_reasons(server.metrics())))
                ghosts.append({"cls": ch.cls, "child": ch, "port": port,
                               "inode": by_port[port], "kind": c["kind"], "topic": c["topic"],
                               "rcvbuf_set": c.get("rcvbuf") or 0,
                               "t_ghost": None, "deadline": None, "t_freed": None})

        for ch in children:
            if ch.cls != "control":
                map_ghosts(ch, ch.ports)
        n_controls = sum(len(ch.conns) for ch in children if ch.cls == "control")
        g0 = sampler.sample()["gauge"]
        print(f"setup: {sum(len(ch.conns) for ch in children if ch.cls != 'control')} "
              f"ghosts-to-be, {n_controls} controls, gauge {g0}, "
              f"{time.monotonic() - t_start:.1f}s", flush=True)
        t_healthy = time.monotonic() + 2.5  # every WebSocket answers a ping while healthy
        while time.monotonic() < t_healthy:
            sampler.tick()
            time.sleep(0.1)
        sampler.sample()
        reasons_before = metric_reasons(sampler.last_metrics)

        # ---- make the ghosts ----
        kids = {}
        for ch in children:
            kids.setdefault(ch.cls, []).append(ch)

        def prep(ch):
            ch.proc.stdin.write("prep\n")
            ch.proc.stdin.flush()
            ports = json.loads(ch.expect("PORTS ", 30))
            map_ghosts(ch, ports)

        # Mid-request processes open their connections, send half a request, and stop at once.
        for cls in ("midreq_head", "midreq_body"):
            for ch in kids[cls]:
                prep(ch)
                ch.stop()
                ch.t_ghost = time.monotonic()
        for cls in ("sse_live", "sse_quiet", "sse_quiet_hb", "ws_stopped"):
            for ch in kids.get(cls, []):
                ch.stop()
                ch.t_ghost = time.monotonic()
        if netns is not None:
            # The namespace's end of the link goes down: its clients keep running, but nothing
            # reaches them and nothing comes back.
            netns.cut()
            t_cut = time.monotonic()
            for cls in ("net_sse_live", "net_sse_quiet", "net_ws"):
                for ch in kids[cls]:
                    ch.t_ghost = t_cut
        skmem_srv = ss_skmem(server.port, "sport")    # client port -> server socket memory
        skmem_cli = ss_skmem(server.port, "dport")    # client port -> client socket memory
        acc0 = ss_accepted(server.port)               # client port -> bytes accepted so far
        for cls in ("ws_nopong",):
            for ch in kids[cls]:
                ch.t_ghost = time.monotonic()
                ch.command("nopong")
        for cls in ("half_sse", "half_ws", "half_head", "half_body"):
            for ch in kids[cls]:
                if cls in ("half_head", "half_body"):
                    prep(ch)
                ch.t_ghost = time.monotonic()
                ch.command("shutwr")
        state["open"] = len(ghosts)

        # Heartbeats go out on sweeps: the gap between two is ceil(heartbeat/SWEEP) sweeps, or
        # one more when a sweep lands a hair early; the bound takes the slower rate.
        hb_eff = (math.ceil(HEARTBEAT / SWEEP_S - 1e-9) + 1) * SWEEP_S
        fixed = {
            "ws_stopped": PING + PONG + 2 * SWEEP_S + SLACK,
            "ws_nopong": PING + PONG + 2 * SWEEP_S + SLACK,
            "net_ws": PING + PONG + 2 * SWEEP_S + SLACK,
            "midreq_head": HEADER_TIMEOUT + 2 * SWEEP_S + SLACK,
            "midreq_body": IDLE_TIMEOUT + 2 * SWEEP_S + SLACK,
            "half_sse": SLACK, "half_ws": SLACK, "half_head": SLACK, "half_body": SLACK,
        }
        for g in ghosts:
            g["t_ghost"] = g["child"].t_ghost
            srv_mem = skmem_srv.get(g["port"], {})
            cli_mem = skmem_cli.get(g["port"], {})
            g["tb"] = srv_mem.get("tb", 0)
            g["rb"] = cli_mem.get("rb", 0)
            if g["cls"] in fixed:
                g["deadline"] = g["t_ghost"] + fixed[g["cls"]]
            elif g["cls"].startswith("net_"):
                # Link cut: nothing more reaches the client, so only the server's own send
                # buffer can take bytes.
                g["rb"] = 0
                if not g["tb"]:
                    raise RuntimeError(f"no socket memory for {g['cls']} port {g['port']}")
                if g["cls"] == "net_sse_quiet":
                    fill = (g["tb"] + HB_EVENT_BYTES) / (HB_EVENT_BYTES / hb_eff)
                    g["fill"] = fill
                    g["deadline"] = g["t_ghost"] + fill + WRITE_STALL + 2 * SWEEP_S + SLACK
                else:
                    g["capacity"] = g["tb"] + GSO_SLACK
            elif g["cls"] in ("sse_quiet", "sse_quiet_hb"):
                if not g["tb"] or not g["rb"]:
                    raise RuntimeError(f"no socket memory for {g['cls']} port {g['port']}")
                hb = HB_EVENT_BYTES if g["cls"] == "sse_quiet" else HB_COMMENT_BYTES
                fill = (g["tb"] + g["rb"] + hb) / (hb / hb_eff)
                g["fill"] = fill
                g["deadline"] = g["t_ghost"] + fill + WRITE_STALL + 2 * SWEEP_S + SLACK
            elif g["cls"] == "sse_live":
                if not g["tb"] or not g["rb"]:
                    raise RuntimeError(f"no socket memory for sse_live port {g['port']}")
                g["capacity"] = g["tb"] + g["rb"] + GSO_SLACK
            else:
                raise RuntimeError(g["cls"])

        # ---- watch them go ----
        # For the write-stall classes the kernel also tells when each socket last accepted a
        # byte from sluice; the stall timeout must close it write_stall_timeout after that.
        stall = [g for g in ghosts if REASON[g["cls"]] == "write_stall"]
        for g in stall:
            g["acc"] = acc0.get(g["port"])
            g["t_last_accept"] = g["t_ghost"]
        # Each poll brackets a ghost's end: t_seen_held is the last poll that still found its
        # socket in sluice's fd table (it was certainly still open then), t_freed the first that
        # did not. A ghost is late only if it was seen held after its bound: polling delays
        # never count against sluice.
        for g in ghosts:
            g["t_seen_held"] = None
        last_deadline_known = False
        t_prev_poll = None
        poll_max = 0.0
        while True:
            if any(g["t_freed"] is None for g in stall):
                acc = ss_accepted(server.port)
                t_acc = time.monotonic()
                for g in stall:
                    v = acc.get(g["port"])
                    if g["t_freed"] is None and v is not None:
                        if g["acc"] is not None and v != g["acc"]:
                            g["t_last_accept"] = t_acc
                        g["acc"] = v
            t_poll = time.monotonic()
            held = socket_inodes(server.proc.pid)
            now = time.monotonic()
            if t_prev_poll is not None:
                poll_max = max(poll_max, now - t_prev_poll)
            t_prev_poll = now
            for g in ghosts:
                if g["t_freed"] is None:
                    if g["inode"] in held:
                        g["t_seen_held"] = t_poll
                    else:
                        g["t_freed"] = now
                if g["cls"] in ("sse_live", "net_sse_live") and g["deadline"] is None:
                    t_fill = pub.time_when_bytes_since(g["t_ghost"], g["capacity"])
                    if t_fill is not None:
                        g["fill"] = t_fill - g["t_ghost"]
                        g["deadline"] = t_fill + WRITE_STALL + 2 * SWEEP_S + SLACK
            state["open"] = sum(1 for g in ghosts if g["t_freed"] is None)
            last_deadline_known = all(g["deadline"] is not None for g in ghosts)
            if last_deadline_known:
                last = max(g["deadline"] for g in ghosts)
                if state["open"] == 0 or now > last + 0.5:
                    break
            if now - t_start > 900:
                failures.append("gave up waiting after 900 s")
                break
            sampler.tick()
            time.sleep(POLL)
        t_settle = time.monotonic() + 1.5   # a sample or two of the settled state
        while time.monotonic() < t_settle:
            sampler.tick()
            time.sleep(0.1)
        row = sampler.sample()
        reasons_after = metric_reasons(sampler.last_metrics)
        close_wait_settled = row["close_wait"]
        gauge_settled = row["gauge"]

        # ---- judge the ghosts ----
        for g in ghosts:
            if g["deadline"] is None:   # the publisher never published enough: no bound
                failures.append(f"{g['cls']} port {g['port']}: no bound (publisher stalled?)")
                g["deadline"] = g["t_ghost"]
        late = [g for g in ghosts if g["t_freed"] is None or
                (g["t_seen_held"] is not None and g["t_seen_held"] > g["deadline"])]
        for g in late[:10]:
            failures.append(
                f"{g['cls']} port {g['port']} "
                + ("never freed" if g["t_freed"] is None else
                   f"still open {g['t_seen_held'] - g['t_ghost']:.2f}s after t_ghost") +
                f" (bound {g['deadline'] - g['t_ghost']:.2f}s)")
        if len(late) > 10:
            failures.append(f"... {len(late)} ghosts late or never freed in all")
        late_ids = {id(g) for g in late}
        # The write-stall promise itself: closed within write_stall_timeout (+ sweeps, slack)
        # of the last byte the kernel accepted.
        stall_late = [g for g in stall if g["t_seen_held"] is not None and
                      g["t_seen_held"] > g["t_last_accept"] + WRITE_STALL + 2 * SWEEP_S + SLACK]
        for g in stall_late[:10]:
            failures.append(
                f"{g['cls']} port {g['port']}: still open "
                f"{g['t_seen_held'] - g['t_last_accept']:.2f}s "
                f"after its socket last accepted a byte (write_stall_timeout {WRITE_STALL}s)")
        expected = {r: 0 for r in WATCHED_REASONS}
        for g in ghosts:
            expected[REASON[g["cls"]]] += 1
        delta = {r: reasons_after[r] - reasons_before[r] for r in WATCHED_REASONS}
        for r in ("peer", "write_stall", "header_timeout", "idle_timeout", "ping_timeout",
                  "overflow", "error", "ws_close", "shutdown"):
            if delta[r] != expected[r]:
                failures.append(f"closed_total{{reason={r}}} grew by {delta[r]}, "
                                f"expected {expected[r]}")
        if gauge_settled != n_controls + 1:
            failures.append(f"gauge {gauge_settled} after the ghosts, expected "
                            f"{n_controls} controls + 1 publisher")
        if close_wait_settled != 0:
            failures.append(f"{close_wait_settled} sockets in CLOSE_WAIT after the ghosts")

        # Controls: all alive, all received something after the ghosts were made.
        ctl_eof = 0
        ctl_silent = 0
        for ch in kids["control"]:
            st = ch.stats()
            for c in st:
                if c["eof"] is not None:
                    ctl_eof += 1
                if c["bytes"] == 0 or (c["kind"] == "ws" and c["pings"] == 0):
                    ctl_silent += 1
        if ctl_eof:
            failures.append(f"{ctl_eof} control connections were closed by the server")
        if ctl_silent:
            failures.append(f"{ctl_silent} control connections received nothing or no ping")

        # ---- clean up: the stopped children are killed, the controls close cleanly ----
        for ch in children:
            if ch.stopped:
                ch.kill()
        for ch in children:
            if ch.cls == "control":
                ch.command("close")
        for ch in children:
            if ch.proc.poll() is None and ch.cls != "control":
                ch.kill()
        pub.stop()
        deadline = time.monotonic() + 10
        gauge_end = kern_end = cw_end = None
        while time.monotonic() < deadline:
            row = sampler.sample()
            gauge_end, kern_end, cw_end = (row["gauge"], row["kernel_established"],
                                           row["close_wait"])
            if gauge_end == 0 and kern_end == 0 and cw_end == 0:
                break
            time.sleep(0.25)
        t_settle = time.monotonic() + 1.0
        while time.monotonic() < t_settle:
            sampler.tick()
            time.sleep(0.1)
        sampler.sample()
        sampler.stop()
        if gauge_end != 0 or kern_end != 0 or cw_end != 0:
            failures.append(f"at the end: gauge {gauge_end}, kernel established {kern_end}, "
                            f"CLOSE_WAIT {cw_end} (all should be 0)")
        if sampler.mismatches:
            failures.append(f"{len(sampler.mismatches)} samples where the gauge differed from "
                            f"the kernel, first {sampler.mismatches[:5]}")
        if sampler.errors:
            failures.append(f"{sampler.errors} failed /metrics scrapes")
        if sampler.compared < len(sampler.rows) / 2:
            failures.append(f"only {sampler.compared} of {len(sampler.rows)} samples could "
                            "compare the gauge with the kernel (connections kept moving)")
        max_cw = max(r["close_wait"] for r in sampler.rows)
        code = server.stop()
        if code != 0:
            failures.append(f"sluice exited {code} on SIGTERM")

        # ---- report ----
        csv = out / "ghosts.csv"
        sampler.write_csv(csv)
        plot_connections(csv, out / "ghosts.png",
                         "ghosts: stopped, ping-deaf and half-closed peers "
                         f"({'short' if args.short else 'full'} profile)",
                         extra_y2=[("ghosts_open", "ghosts not yet freed")])
        with open(out / "ghosts-detail.csv", "w") as f:
            f.write("class,kind,topic,client_port,rcvbuf_set,server_sndbuf,client_rcvbuf,"
                    "freed_after_s,bound_s,reason_expected,last_accept_s,accepted_bytes,"
                    "freed_after_last_accept_s\n")
            for g in ghosts:
                tla = g.get("t_last_accept")
                f.write(",".join(str(x) for x in (
                    g["cls"], g["kind"], g["topic"], g["port"], g["rcvbuf_set"], g["tb"],
                    g["rb"],
                    "" if g["t_freed"] is None else round(g["t_freed"] - g["t_ghost"], 3),
                    round(g["deadline"] - g["t_ghost"], 3), REASON[g["cls"]],
                    "" if tla is None else round(tla - g["t_ghost"], 3),
                    "" if g.get("acc") is None else g["acc"],
                    "" if tla is None or g["t_freed"] is None else
                    round(g["t_freed"] - tla, 3))) + "\n")
        per_class = {}
        for g in ghosts:
            d = per_class.setdefault(g["cls"], [0, 0.0, 0.0, 0])
            d[0] += 1
            if g["t_freed"] is not None:
                d[1] = max(d[1], g["t_freed"] - g["t_ghost"])
            d[2] = max(d[2], g["deadline"] - g["t_ghost"])
            d[3] += id(g) not in late_ids
        print("class          n  in-bound  worst(s)  bound(s)  reason   (worst: time to the "
              "first poll that found it gone)")
        for cls, (n, worst, bound, ok) in per_class.items():
            print(f"{cls:13s} {n:4d} {ok:8d} {worst:9.2f} {bound:9.2f}  {REASON[cls]}")
        print("closed_total deltas:", {r: v for r, v in delta.items() if v},
              "expected:", {r: v for r, v in expected.items() if v})
        for f_ in failures:
            print("FAIL:", f_)
        ok = not failures
        verdict(
            "ghosts", ok,
            profile="short" if args.short else "full",
            ghosts=len(ghosts), freed_in_bound=len(ghosts) - len(late),
            controls=n_controls, controls_closed=ctl_eof,
            worst_ws_s=round(max(per_class["ws_stopped"][1], per_class["ws_nopong"][1]), 2),
            worst_sse_live_s=round(per_class["sse_live"][1], 2),
            worst_sse_quiet_s=round(per_class["sse_quiet"][1], 2),
            **({"worst_sse_quiet_hb_s": round(per_class["sse_quiet_hb"][1], 2)}
               if "sse_quiet_hb" in per_class else {}),
            worst_stall_after_last_accept_s=round(max(
                (g["t_freed"] - g["t_last_accept"] for g in stall if g["t_freed"] is not None),
                default=0), 2),
            netns="on" if netns is not None else "skipped",
            **({"worst_net_sse_s": round(max(per_class["net_sse_live"][1],
                                             per_class["net_sse_quiet"][1]), 2),
                "worst_net_ws_s": round(per_class["net_ws"][1], 2)} if netns is not None
               else {}),
            write_stall=delta["write_stall"], ping_timeout=delta["ping_timeout"],
            header_timeout=delta["header_timeout"], idle_timeout=delta["idle_timeout"],
            peer=delta["peer"],
            gauge_after=gauge_settled, close_wait_after=close_wait_settled,
            max_close_wait=max_cw, mismatches=len(sampler.mismatches),
            samples=len(sampler.rows), compared=sampler.compared,
            poll_max_s=round(poll_max, 2),
            max_rss_mb=round(max(r["rss_mb"] for r in sampler.rows), 1),
            seconds=round(time.monotonic() - t_start, 1), out=out)
        return 0 if ok else 1
    finally:
        for ch in children:
            try:
                ch.kill()
            except Exception:
                pass
        if pub is not None:
            pub.stop()
        if sampler is not None and not sampler._stop.is_set():
            sampler.stop()
        if server.alive():
            server.stop()
        server.cleanup()
        if netns is not None:
            netns.destroy()


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] == "--child":
        try:
            # The spec is the first line on stdin (commands follow), not argv: ps stays legible.
            stdin = StdinLines()
            child_main(json.loads(stdin.first()), stdin)
        except (BrokenPipeError, KeyboardInterrupt):
            pass
        sys.exit(0)
    sys.exit(main())
