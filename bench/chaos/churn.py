#!/usr/bin/python3
"""Chaos scenario "churn": subscribers connect, subscribe and disconnect in a loop over SSE and
WebSocket (single- and multi-topic streams, on two topics with traffic and an idle one), closing
in every way a real client does, while two publishers send 10 messages/s of 512 bytes each:

  clean   SSE: shutdown(SHUT_WR) (FIN), read to EOF, close; WebSocket: a close frame (1000),
          read the server's close frame and EOF, close
  rst     SO_LINGER 0, then close: the server gets a reset
  plain   close() with whatever is still unread (a FIN, or a reset when data was pending)
  killed  a "victim" child process holding 300 (full: 500) connections is SIGKILLed every 6 s
          (full: 10 s) +-40%, sometimes before it finished opening them, and replaced

Two worker processes each keep 350 (full: 800) connections open and replace one at random
60 times a second (45% clean, 35% rst, 20% plain); they read everything and answer pings.
Peak concurrency is about 1,010 (full: 2,110) connections; about 150 are accepted a second.

The gauge is compared with the kernel on every sample (ManualSampler: only when the set
of established connections is the same before and after the scrape, which under churn is
rarely the case), and at checkpoints: every 5 s (full: 15 s) the workers pause and finish the
closes they started, a victim still opening its connections is killed, and a sample is taken
at rest, where the comparison must always be possible.

The steady state everything is measured against: the two publishers and one subscriber of
each of the 8 kinds (reading from=oldest, so that every retained message already carries every
encoding sluice caches lazily: WebSocket JSON envelopes, multi-topic ids), rings filled to their
bound before. Baseline = that state before the churn; "after" = the same state after the churn
and a cool-down (8 s, full: 20 s).

Pass criteria (each can fail):
  * no compared sample, during the churn or at a checkpoint, where the gauge differed from the
    kernel's count of established connections; every checkpoint compared
  * after: sluice's open fds == baseline exactly; RSS within 5 MB of the baseline; the memory
    sluice accounts for itself (sluice_memory_accounted_bytes) within 64 KiB of the baseline (a
    stricter leak check than RSS); the gauge == the 10 steady connections; CLOSE_WAIT == 0; no
    steady subscriber lost. About RSS: glibc keeps the heap's high-water mark, about 2 KB per
    connection that was open at the peak plus what a mass close needs, so RSS after the churn
    sits 1.5 (short) to 4 MB (full) above the cold baseline however long the churn ran; that is
    why the full profile peaks near 2,100 connections rather than more.
  * at the end (everything closed): sluice_connections == 0, kernel ESTABLISHED == 0,
    CLOSE_WAIT == 0, fds == before any connection, and accepted_total - sum(closed_total) ==
    sluice_connections (every accepted connection closed exactly once)
  * validity: every connection attempt succeeded, every clean close was completed by the
    server within 5 s; SIGTERM exits 0

Profiles: full (default) churns for --minutes (30); --short churns for 40 s: the issue asks for
2 minutes, but CI allows about 75 s for the whole command, so the short profile is about 55 s
end to end (40 s of churn, setup, cool-down and checks). --minutes also applies to --short.

Usage: bench/chaos/churn.py [--short] [--minutes M]
Writes churn.csv (samples; phase, kills, held sockets by state, whether compared) and churn.png
(RSS, gauge vs kernel, CLOSE_WAIT, fds) into out_dir("churn"). Exits 1 on FAIL.
"""

import argparse
import json
import os
import random
import selectors
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../test/integ"))
from clients import WsReader, hard_close, read_head, read_response, ws_request  # noqa: E402
from loadkit import Publisher  # noqa: E402
from proc import Server, StdinLines, raise_nofile  # noqa: E402
from report import out_dir, plot_connections, verdict  # noqa: E402
from sampling import ManualSampler  # noqa: E402
from ws_client import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, encode_frame  # noqa: E402

TOPICS = ["churn/a", "churn/b", "churn/c"]     # a, b carry traffic; c is idle
PUB_RATE = 10          # messages/s on each of churn/a and churn/b
PUB_SIZE = 512
CLOSE_TIMEOUT = 5.0    # a clean close must complete (server's close/EOF) within this
RSS_TOLERANCE_MB = 5.0
# sluice_memory_accounted_bytes after vs before: the rings hold the same number of messages of
# the same size, so only the width of the ids differs (a digit more per message and encoding).
ACCOUNTED_TOLERANCE_KB = 64

CONFIG = """write_stall_timeout = 10s
ws_ping_interval = 5s
ws_pong_timeout = 5s
[limits]
max_connections_per_ip = 100000
"""

KINDS = [("sse", "/topics/churn/a"), ("sse", "/topics/churn/b"), ("sse", "/topics/churn/c"),
         ("sse", "/sse?topic=churn/a&topic=churn/b&topic=churn/c"),
         ("ws", "/topics/churn/a"), ("ws", "/topics/churn/b"), ("ws", "/topics/churn/c"),
         ("ws", "/ws?topic=churn/a&topic=churn/b&topic=churn/c")]
MODES = [("clean", 0.45), ("rst", 0.35), ("plain", 0.20)]


# ---- child process: a churn worker (or, with rate 0, a victim that just holds connections) ----

def open_conn(port, kind, path):
    s = socket.socket()
    s.settimeout(10)
    try:
        s.connect(("127.0.0.1", port))
        if kind == "sse":
            s.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       "Accept: text/event-stream\r\n\r\n").encode())
            want = 200
        else:
            s.sendall(ws_request(path))
            want = 101
        status, rest = read_head(s, 10)
        if status != want:
            raise ConnectionError(f"status_{status}")
    except BaseException:
        s.close()
        raise
    s.setblocking(False)
    return s, rest


def worker_main(spec, stdin):
    raise_nofile()
    rng = random.Random(spec["seed"])
    port, target, rate = spec["port"], spec["target"], spec["rate"]
    ramp = spec.get("ramp", 400.0)
    modes = [m for m, _ in MODES]
    weights = [w for _, w in MODES]
    sel = selectors.DefaultSelector()
    sel.register(stdin, selectors.EVENT_READ, None)
    conns = {}       # fileno -> state
    open_set = []    # filenos of open (not closing) connections, for random choice
    st = {"opened": 0, "clean": 0, "rst": 0, "plain": 0, "errors": {}, "stuck": 0,
          "server_closed": 0, "frames": 0, "pings": 0, "bytes": 0}
    paused = stopping = False
    announced_ready = False
    reported_pause = False
    next_t = time.monotonic()
    out = sys.stdout

    def say(line):
        out.write(line + "\n")
        out.flush()

    def forget(fd):
        c = conns.pop(fd)
        try:
            sel.unregister(c["s"])
        except (KeyError, ValueError):
            pass
        if fd in open_set_idx:
            i = open_set_idx.pop(fd)
            last = open_set.pop()
            if last != fd:
                open_set[i] = last
                open_set_idx[last] = i
        return c

    open_set_idx = {}

    def add_open(fd):
        open_set_idx[fd] = len(open_set)
        open_set.append(fd)

    fixed_kinds = spec.get("kinds")

    def do_open():
        if fixed_kinds is not None:
            kind, path = KINDS[fixed_kinds[st["opened"] % len(fixed_kinds)]]
        else:
            kind, path = KINDS[rng.randrange(len(KINDS))]
        if spec.get("from_oldest"):
            path += ("&" if "?" in path else "?") + "from=oldest"
        try:
            s, rest = open_conn(port, kind, path)
        except ConnectionError as e:
            k = str(e) if str(e).startswith("status_") else "closed_in_handshake"
            st["errors"][k] = st["errors"].get(k, 0) + 1
            return
        except OSError as e:
            k = "os_" + (os.strerror(e.errno) if e.errno else type(e).__name__)
            st["errors"][k] = st["errors"].get(k, 0) + 1
            return
        fd = s.fileno()
        conns[fd] = {"s": s, "kind": kind, "ws": WsReader(), "closing": None}
        if kind == "ws" and rest:
            conns[fd]["ws"].feed(rest)
        sel.register(s, selectors.EVENT_READ, fd)
        add_open(fd)
        st["opened"] += 1

    def do_close(fd, mode):
        c = conns[fd]
        s = c["s"]
        if mode == "rst":
            forget(fd)
            hard_close(s)
            st["rst"] += 1
        elif mode == "plain":
            forget(fd)
            s.close()
            st["plain"] += 1
        else:
            try:
                if c["kind"] == "ws":
                    s.send(encode_frame(OP_CLOSE, b"\x03\xe8"))
                else:
                    s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            c["closing"] = time.monotonic()
            i = open_set_idx.pop(fd)
            last = open_set.pop()
            if last != fd:
                open_set[i] = last
                open_set_idx[last] = i

    while True:
        now = time.monotonic()
        # Actions due: open up to the target (at the ramp rate), then close and reopen at
        # `rate` cycles a second.
        if not paused and not stopping:
            n = 0
            while now >= next_t and n < 50:
                if len(open_set) < target:
                    do_open()
                    next_t += 1.0 / ramp
                elif rate > 0:
                    fd = open_set[rng.randrange(len(open_set))]
                    do_close(fd, rng.choices(modes, weights)[0])
                    next_t += 1.0 / rate
                else:
                    next_t = now + 0.2
                n += 1
                now = time.monotonic()
            if now - next_t > 2.0:   # far behind: do not burst
                next_t = now
            if not announced_ready and len(open_set) >= target:
                announced_ready = True
                say("READY")
        timeout = max(0.0, min(0.05, next_t - time.monotonic()))
        for key, _ in sel.select(timeout):
            fd = key.data
            if fd is None:
                lines = stdin.read()
                if lines is None:
                    return
                for cmd in lines:
                    cmd = cmd.strip()
                    if cmd == "pause":
                        paused = True
                        reported_pause = False
                    elif cmd == "resume":
                        paused = False
                        next_t = time.monotonic()
                        say("RESUMED")
                    elif cmd == "stop":
                        stopping = True
                        for f in list(open_set):
                            do_close(f, rng.choices(modes, weights)[0])
                    elif cmd == "stats":
                        say("STATS " + json.dumps(dict(st, open=len(open_set),
                                                       closing=len(conns) - len(open_set))))
                continue
            c = conns.get(fd)
            if c is None:
                continue
            try:
                data = c["s"].recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                if c["closing"] is None:
                    st["server_closed"] += 1   # the server ended a connection we did not
                forget(fd)
                c["s"].close()
                if c["closing"] is not None:
                    st["clean"] += 1
                continue
            st["bytes"] += len(data)
            if c["kind"] == "ws":
                for op, payload in c["ws"].feed(data):
                    if op == OP_PING:
                        st["pings"] += 1
                        if c["closing"] is None:
                            try:
                                c["s"].send(encode_frame(OP_PONG, payload))
                            except OSError:
                                pass
                    elif op in (OP_TEXT, OP_BINARY):
                        st["frames"] += 1
        # Clean closes the server never completed.
        now = time.monotonic()
        for fd in [f for f, c in conns.items() if c["closing"] is not None
                   and now - c["closing"] > CLOSE_TIMEOUT]:
            c = forget(fd)
            st["stuck"] += 1
            hard_close(c["s"])
        closing = len(conns) - len(open_set)
        if paused and not reported_pause and closing == 0:
            reported_pause = True
            say("PAUSED")
        if stopping and not conns:
            say("DONE " + json.dumps(st))
            return


class Worker:
    def __init__(self, name, port, target, rate, seed, **extra):
        spec = json.dumps(dict({"port": port, "target": target, "rate": rate, "seed": seed},
                               **extra))
        self.name = name
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     bufsize=1)
        self.proc.stdin.write(spec + "\n")
        self.proc.stdin.flush()
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.proc.stdout, selectors.EVENT_READ)
        self.ready = False

    def send(self, cmd):
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def poll_line(self, timeout=0.0):
        if self.sel.select(timeout):
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"worker {self.name} exited ({self.proc.poll()})")
            if line.startswith("READY"):
                self.ready = True
            return line.strip()
        return None

    def expect(self, prefix, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.poll_line(max(0.0, deadline - time.monotonic()))
            if line is not None and line.startswith(prefix):
                return line[len(prefix):].strip()
        raise RuntimeError(f"worker {self.name}: no {prefix!r} within {timeout}s")

    def stats(self):
        self.send("stats")
        return json.loads(self.expect("STATS ", 30))

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.sel.close()


def prefill(port):
    """Fills the traffic topics' rings to their bound (1,024 messages by default) and puts one
    message in the idle topic, so that ring memory is at its steady state before the baseline."""
    body = "\n".join("p" * PUB_SIZE for _ in range(1100)).encode()
    for t in TOPICS:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        data = body if t != "churn/c" else b"p" * PUB_SIZE
        ctype = "application/x-ndjson" if t != "churn/c" else "application/octet-stream"
        s.sendall((f"POST /topics/{t} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
                   f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data)
        status = read_response(s, 10)[0]
        s.close()
        if status != 202:
            raise RuntimeError(f"prefill {t}: {status}")


def reasons(m):
    return {k.split('"')[1]: int(v) for k, v in m.items()
            if k.startswith("sluice_connections_closed_total{")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--short", action="store_true", help="CI profile (40 s of churn, ~60 s)")
    ap.add_argument("--minutes", type=float, default=None,
                    help="churn duration in minutes (full profile default: 30)")
    args = ap.parse_args()
    # run.sh's timeout sends SIGTERM: unwind through the finally blocks, which kill the client
    # processes and stop the server.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.short:
        churn_s = 40.0 if args.minutes is None else args.minutes * 60
        per_worker, victim_n, rate, kill_every, checkpoint_every, cool = 350, 300, 60, 6, 5, 8
        sample_every = 1.0
    else:
        churn_s = (30.0 if args.minutes is None else args.minutes) * 60
        per_worker, victim_n, rate, kill_every, checkpoint_every, cool = 800, 500, 60, 10, 15, 20
        sample_every = 2.0
    n_workers = 2
    t_start = time.monotonic()
    raise_nofile()
    out = out_dir("churn")
    server = Server(CONFIG)
    workers = []
    victim = None
    steady = None
    pubs = []
    sampler = None
    failures = []
    counters = {"kills": 0, "kills_before_ready": 0, "checkpoints": 0, "checkpoint_compared": 0}
    try:
        prefill(server.port)
        phase = ["baseline"]
        sampler = ManualSampler(server, interval=sample_every,
                                extra=lambda: {"phase": phase[0], "kills": counters["kills"]})
        time.sleep(1.0)
        base0 = sampler.sample()          # no connection at all
        # The steady state the churn is measured against: the publishers, and one subscriber
        # of every kind (from=oldest), so that every message in the rings carries every
        # encoding sluice caches (WebSocket JSON envelopes, multi-topic ids) before the baseline
        # as after the churn.
        pubs = [Publisher(server.port, t, PUB_RATE, PUB_SIZE) for t in TOPICS[:2]]
        steady = Worker("steady", server.port, len(KINDS), 0, seed=2,
                        kinds=list(range(len(KINDS))), from_oldest=True)
        steady.expect("READY", 30)
        n_steady = 2 + len(KINDS)
        t_b = time.monotonic() + 3.0
        while time.monotonic() < t_b:
            sampler.tick()
            time.sleep(0.1)
        base = sampler.sample()           # publishers and steady subscribers only
        if base["gauge"] != n_steady:
            failures.append(f"baseline gauge {base['gauge']}, expected {n_steady}")
        m_base = sampler.last_metrics
        print(f"baseline: fds {base0['fds']} (none) / {base['fds']} (steady), "
              f"RSS {base['rss_mb']:.1f} MB", flush=True)

        phase[0] = "churn"
        for i in range(n_workers):
            workers.append(Worker(f"w{i}", server.port, per_worker, rate, seed=1000 + i))
        victim = Worker("victim", server.port, victim_n, 0, seed=1)
        t_churn = time.monotonic()
        next_kill = t_churn + kill_every * random.uniform(0.6, 1.4)
        next_cp = t_churn + checkpoint_every
        rng = random.Random(7)
        while time.monotonic() - t_churn < churn_s:
            now = time.monotonic()
            for w in workers + [victim]:
                while w.poll_line(0) is not None:
                    pass
            if now >= next_kill:
                if not victim.ready:
                    counters["kills_before_ready"] += 1
                victim.kill()
                counters["kills"] += 1
                victim = Worker("victim", server.port, victim_n, 0, seed=rng.randrange(1 << 30))
                next_kill = now + kill_every * rng.uniform(0.6, 1.4)
            if now >= next_cp:
                # A checkpoint at rest: workers pause and finish their closes; a victim still
                # opening is killed (and replaced afterwards).
                for w in workers:
                    w.send("pause")
                for w in workers:
                    w.expect("PAUSED", 30)
                replace = False
                if not victim.ready:
                    counters["kills_before_ready"] += 1
                    victim.kill()
                    counters["kills"] += 1
                    replace = True
                time.sleep(0.5)
                before = len(sampler.mismatches)
                row = sampler.sample()
                counters["checkpoints"] += 1
                counters["checkpoint_compared"] += row["compared"]
                if len(sampler.mismatches) > before:
                    print(f"checkpoint mismatch at t={row['t']}: gauge {row['gauge']} "
                          f"kernel {row['kernel_established']}", flush=True)
                for w in workers:
                    w.send("resume")
                for w in workers:
                    w.expect("RESUMED", 30)
                if replace:
                    victim = Worker("victim", server.port, victim_n, 0,
                                    seed=rng.randrange(1 << 30))
                next_cp = time.monotonic() + checkpoint_every
            sampler.tick()
            time.sleep(0.02)

        # ---- stop the churn ----
        phase[0] = "cooldown"
        victim.kill()
        counters["kills"] += 1
        stats = []
        for w in workers:
            w.send("stop")
        for w in workers:
            stats.append(json.loads(w.expect("DONE ", 60)))
            w.proc.wait(10)
        t_cool = time.monotonic()
        while time.monotonic() - t_cool < 30:
            steady.poll_line(0)
            row = sampler.sample()
            if (row["gauge"] == n_steady and row["kernel_established"] == n_steady
                    and row["close_wait"] == 0):
                break
            time.sleep(0.5)
        t_cool_end = time.monotonic() + cool
        while time.monotonic() < t_cool_end:
            sampler.tick()
            time.sleep(0.1)
        after = sampler.sample()          # the publishers only, again
        m_after_pub = sampler.last_metrics

        phase[0] = "end"
        steady_stats = steady.stats()
        steady.send("stop")
        steady.expect("DONE ", 30)
        for p in pubs:
            p.stop()
        t_end = time.monotonic()
        while time.monotonic() - t_end < 15:
            row = sampler.sample()
            if row["gauge"] == 0 and row["kernel_established"] == 0 and row["close_wait"] == 0:
                break
            time.sleep(0.25)
        time.sleep(1.0)
        end = sampler.sample()
        m_end = sampler.last_metrics
        sampler.stop()

        # ---- judge ----
        if sampler.mismatches:
            failures.append(f"{len(sampler.mismatches)} samples where the gauge differed from "
                            f"the kernel, first {sampler.mismatches[:5]}")
            for r in sampler.mismatch_rows[:5]:
                print("mismatch sample:", {k: r.get(k) for k in (
                    "t", "phase", "gauge", "kernel_established", "close_wait", "held",
                    "held_close_wait", "held_fin")}, flush=True)
        if sampler.errors:
            failures.append(f"{sampler.errors} failed /metrics scrapes")
        # While the churn runs most samples cannot compare (connections move during the scrape);
        # at a checkpoint nothing moves, so every checkpoint must compare.
        if counters["checkpoint_compared"] != counters["checkpoints"] or \
                counters["checkpoints"] < max(3, int(churn_s / checkpoint_every / 2)):
            failures.append(f"{counters['checkpoint_compared']} of {counters['checkpoints']} "
                            "checkpoints compared the gauge with the kernel")
        if after["fds"] != base["fds"]:
            failures.append(f"open fds {after['fds']} after the churn, baseline {base['fds']}")
        d_rss = after["rss_mb"] - base["rss_mb"]
        if abs(d_rss) > RSS_TOLERANCE_MB:
            failures.append(f"RSS {after['rss_mb']:.1f} MB after the churn, baseline "
                            f"{base['rss_mb']:.1f} MB ({d_rss:+.1f} MB)")
        d_acc = (after["accounted_mb"] - base["accounted_mb"]) * 1024
        if abs(d_acc) > ACCOUNTED_TOLERANCE_KB:
            failures.append(f"memory accounted by sluice {after['accounted_mb'] * 1024:.1f} KiB "
                            f"after the churn, baseline {base['accounted_mb'] * 1024:.1f} KiB "
                            f"({d_acc:+.1f} KiB)")
        if after["gauge"] != n_steady or after["close_wait"] != 0:
            failures.append(f"after the cool-down: gauge {after['gauge']} ({n_steady} steady "
                            f"connections expected), CLOSE_WAIT {after['close_wait']}")
        if steady_stats["server_closed"] or steady_stats["open"] != len(KINDS):
            failures.append(f"steady subscribers lost: {steady_stats}")
        if end["gauge"] != 0 or end["kernel_established"] != 0 or end["close_wait"] != 0:
            failures.append(f"at the end: sluice_connections {end['gauge']}, kernel "
                            f"{end['kernel_established']}, CLOSE_WAIT {end['close_wait']}")
        if end["fds"] != base0["fds"]:
            failures.append(f"open fds {end['fds']} at the end, {base0['fds']} before any "
                            "connection")
        accepted = int(m_end.get("sluice_connections_accepted_total", -1))
        closed = sum(reasons(m_end).values())
        conns_now = int(m_end.get("sluice_connections", -1))
        if accepted - closed != conns_now:
            failures.append(f"accepted {accepted} - closed {closed} != sluice_connections "
                            f"{conns_now}")
        errors = {}
        for s_ in stats:
            for k, v in s_["errors"].items():
                errors[k] = errors.get(k, 0) + v
        stuck = sum(s_["stuck"] for s_ in stats)
        if errors:
            failures.append(f"connection attempts failed: {errors}")
        if stuck:
            failures.append(f"{stuck} clean closes not completed by the server within "
                            f"{CLOSE_TIMEOUT}s")
        pub_ok = sum(p.ok for p in pubs)
        pub_err = sum(p.errors for p in pubs)
        code = server.stop()
        if code != 0:
            failures.append(f"sluice exited {code} on SIGTERM")

        # ---- report ----
        csv = out / "churn.csv"
        sampler.write_csv(csv)
        plot_connections(csv, out / "churn.png",
                         f"churn: {churn_s / 60:.1f} min of connect/subscribe/close "
                         f"({'short' if args.short else 'full'} profile)",
                         extra_y2=[("fds", "sluice open fds")])
        r_delta = {k: v - reasons(m_base).get(k, 0) for k, v in reasons(m_after_pub).items()}
        churned = sum(s_["opened"] for s_ in stats)
        accepted_churn = (int(m_after_pub.get("sluice_connections_accepted_total", 0))
                          - int(m_base.get("sluice_connections_accepted_total", 0)))
        peak = max(r["gauge"] for r in sampler.rows)
        for f_ in failures:
            print("FAIL:", f_)
        print("closed during the churn, by reason:", {k: v for k, v in r_delta.items() if v})
        ok = not failures
        verdict(
            "churn", ok, profile="short" if args.short else "full",
            churn_s=round(churn_s), accepted=accepted_churn, worker_opens=churned,
            clean=sum(s_["clean"] for s_ in stats), rst=sum(s_["rst"] for s_ in stats),
            plain=sum(s_["plain"] for s_ in stats), kills=counters["kills"],
            kills_mid_open=counters["kills_before_ready"], peak_conns=peak,
            server_closed=sum(s_["server_closed"] for s_ in stats),
            samples=len(sampler.rows), compared=sampler.compared,
            checkpoints=counters["checkpoints"],
            checkpoints_compared=counters["checkpoint_compared"],
            mismatches=len(sampler.mismatches),
            fds_base=base["fds"], fds_after=after["fds"], fds_end=end["fds"],
            fds_none=base0["fds"],
            rss_base_mb=base["rss_mb"], rss_after_mb=after["rss_mb"],
            accounted_base_kb=round(base["accounted_mb"] * 1024, 1),
            accounted_after_kb=round(after["accounted_mb"] * 1024, 1),
            rss_peak_mb=round(max(r["rss_mb"] for r in sampler.rows), 1),
            gauge_end=end["gauge"], close_wait_end=end["close_wait"],
            max_close_wait=max(r["close_wait"] for r in sampler.rows),
            published=pub_ok, publish_errors=pub_err,
            seconds=round(time.monotonic() - t_start, 1), out=out)
        return 0 if ok else 1
    finally:
        for w in workers + ([victim] if victim else []) + ([steady] if steady else []):
            try:
                w.kill()
            except Exception:
                pass
        for p in pubs:
            p.stop()
        if sampler is not None and not sampler._stop.is_set():
            sampler.stop()
        if server.alive():
            server.stop()
        server.cleanup()


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] == "--child":
        try:
            # The spec is the first line on stdin (commands follow), not argv: ps stays legible.
            stdin = StdinLines()
            worker_main(json.loads(stdin.first()), stdin)
        except (BrokenPipeError, KeyboardInterrupt):
            pass
        sys.exit(0)
    sys.exit(main())
