#!/usr/bin/python3
"""Chaos scenario "soak": an hour of every kind of client at once against one sluice with
memory_limit = 64 MiB, sampled throughout.

  steady     a publisher at 200 msg/s x 512 B on soak/live, read by 4 SSE + 4 WebSocket readers
             (in their own process) that check every sequence number; 10 msg/s x 512 B on each of
             churn/a and churn/b
  lossless   a publisher at 20 msg/s x 1 KiB on the lossless topic soak/ll, and one durable
             reader (?durable=soak) that acknowledges its last id every second and drops its
             connection (reset) every 4 minutes, resuming from its checkpoint
  churn      a worker (bench/chaos/churn.py's) holding 300 SSE and WebSocket connections and
             replacing 20 a second (clean closes, resets, plain closes); a victim process
             holding 100 that is SIGKILLed every 30 s +-40% and replaced
  stalled    every 2 minutes a wave of 50 readers (half SSE, half WebSocket, SO_RCVBUF 1 KiB)
             that never read; the previous wave's clients reset when the next arrives
  ghosts     every 5 minutes a process holding 60 connections is SIGSTOPped (a vanished peer:
             no FIN, no RST, nothing read) and SIGKILLed 150 s later
  flood      every 5 minutes, 20 s of two publishers sending 64 x 1 KiB NDJSON batches to
             soak/flood (a ring allowed 256 MiB, so the memory budget is what binds) as fast as
             they can

Sampled every 2 s (ManualSampler): RSS, the memory sluice accounts for, open fds, the connection
gauge against the kernel's ESTABLISHED count, CLOSE_WAIT. Every 60 s a checkpoint pauses the
churn worker (it finishes its closes), so the gauge can always be compared there.

Pass (each can fail), over the last 40 minutes (with --minutes M < 60: the last two thirds):
  * RSS: the last third's mean within 15 MB of the first third's, fewer than 10 consecutive
    rising samples (FAILURES.md); the same rule for open fds, within 50 fds
  * accounted memory never above memory_limit; RSS never above memory_limit + 32 MiB
  * the gauge equals the kernel's count at every compared sample, and every checkpoint was
    compared; no CLOSE_WAIT socket held by sluice in 3 consecutive samples; at the end (every
    client gone) gauge 0, kernel 0, CLOSE_WAIT 0
  * lossless: every accepted message reached the durable reader, with no gap marker
  * no silent gap: a steady reader that missed a sequence number was told (a gap marker); none
    saw one out of order
  * every stalled reader closed by the write-stall timeout; the server alive, exit 0 on SIGTERM

  bench/chaos/soak.py [--minutes M]     (default 60; it is not part of run.sh or CI)

Writes soak.csv and soak.png into out_dir("soak"); bench/charts.sh redraws the chart from the
recorded CSV. Exits 1 on FAIL.
"""

import argparse
import json
import os
import random
import signal
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loadkit as lk  # noqa: E402
from churn import Worker  # noqa: E402
from clients import read_response  # noqa: E402
from kernel import TCP_CLOSE_WAIT, kernel_conn_table  # noqa: E402
from proc import Server, raise_nofile, socket_inodes  # noqa: E402
from report import out_dir, verdict  # noqa: E402
from sampling import ManualSampler  # noqa: E402

LIMIT, LIMIT_MB = "64MiB", 64
STALL_S = 20
CONFIG = f"""write_stall_timeout = {STALL_S}s
ws_ping_interval = 15s
ws_pong_timeout = 15s
log_level = warn
[limits]
max_connections_per_ip = 1000000
[topic "soak/ll"]
durability = lossless
disk_quota = 1GiB
[topic "soak/flood"]
max_messages = 1000000
max_bytes = 256MiB
"""
LIVE_RATE, LIVE_SIZE = 200, 512
LL_RATE, LL_SIZE = 20, 1024
CHURN_TARGET, CHURN_RATE, VICTIM_N, VICTIM_EVERY = 300, 20, 100, 30
WAVE_N, WAVE_EVERY = 50, 120
GHOST_N, GHOST_EVERY, GHOST_HOLD = 60, 300, 150
FLOOD_EVERY, FLOOD_S, FLOOD_BATCH = 300, 20, 64
CHECKPOINT_EVERY = 60
RECONNECT_EVERY = 240


class KeepAlive:
    """A raw keep-alive HTTP/1.1 connection: request() returns (status, body), status 0 when it
    failed. A request that fails on a connection kept from before (the server may have closed
    it for its idle_timeout between two bursts, as it should) is sent once more on a new one:
    `stale` counts those, `failed` the requests that failed on a fresh connection."""

    def __init__(self, port):
        self.port = port
        self.sock = None
        self.stale = self.failed = 0

    def request(self, method, path, body=b"", ctype="text/plain"):
        for _attempt in range(2):
            fresh = self.sock is None
            if fresh:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            req = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body
            try:
                self.sock.sendall(req)
                return read_response(self.sock, 30)
            except (OSError, ConnectionError, ValueError, IndexError):
                self.close()
                if fresh:
                    break
                self.stale += 1
        self.failed += 1
        return 0, b""

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class LosslessPublisher(threading.Thread):
    """LL_RATE messages a second "<n> <time> xxx…" to soak/ll; `accepted` holds every n that got
    202 (acknowledged: on disk), `refused` counts the others (pushback: allowed, not loss)."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.ka = KeepAlive(port)
        self.accepted = set()
        self.refused = 0
        self.stop_evt = threading.Event()
        self.start()

    def run(self):
        n = 0
        next_t = time.monotonic()
        while not self.stop_evt.is_set():
            now = time.monotonic()
            if now < next_t:
                self.stop_evt.wait(next_t - now)
                continue
            next_t = max(next_t + 1.0 / LL_RATE, now - 1.0)
            n += 1
            body = (f"{n} {time.time():.6f} ".encode() + b"l" * LL_SIZE)[:LL_SIZE]
            status, _ = self.ka.request("POST", "/topics/soak/ll", body)
            if status == 202:
                self.accepted.add(n)
            else:
                self.refused += 1
        self.ka.close()


class DurableReader(threading.Thread):
    """The durable reader of soak/ll: records every n it receives, acknowledges its last id every
    second, and every RECONNECT_EVERY s acknowledges, resets its connection and resubscribes (it
    then gets again what followed its checkpoint: at least once). Any control event (gap, reset,
    overflow) is recorded: on a lossless topic there must be none."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.received = set()
        self.ctrl = []
        self.reconnects = 0
        self.acks = self.ack_errors = 0
        self.last_id = None
        self.stop_evt = threading.Event()
        self.ka = KeepAlive(port)
        self.ready = threading.Event()
        self.start()

    def on_msg(self, ev_id, data, n):
        try:
            self.received.add(int(data.split(b" ", 1)[0]))
        except ValueError:
            self.ctrl.append(("bad_payload", data[:32]))
        self.last_id = ev_id

    def on_ctrl(self, kind, d):
        if kind not in ("closed",):
            self.ctrl.append((kind, d))

    def ack(self):
        if self.last_id is None:
            return
        status, _ = self.ka.request("POST", "/topics/soak/ll/cursors/soak", self.last_id.encode())
        if status // 100 == 2:
            self.acks += 1
        else:
            self.ack_errors += 1

    def run(self):
        import selectors
        while not self.stop_evt.is_set():
            r = lk.StreamReader(self.port, "sse", "/topics/soak/ll?durable=soak",
                                on_msg=self.on_msg, on_ctrl=self.on_ctrl)
            sel = selectors.DefaultSelector()
            sel.register(r, selectors.EVENT_READ)
            t_conn = last_ack = time.monotonic()
            while not self.stop_evt.is_set() and not r.closed:
                for _key, _ in sel.select(0.2):
                    r.read()
                if r.head is not None:
                    self.ready.set()
                now = time.monotonic()
                if now - last_ack >= 1.0:
                    self.ack()
                    last_ack = now
                if now - t_conn >= RECONNECT_EVERY:
                    break
            self.ack()
            sel.close()
            try:
                r.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            r.close()
            if not self.stop_evt.is_set():
                self.reconnects += 1
                if r.closed:  # closed by the server: not expected; back off a little
                    self.ctrl.append(("server_closed", {}))
                    time.sleep(1.0)
        self.ka.close()


class Flood(threading.Thread):
    """One flooding publisher while `active` is set: NDJSON batches of FLOOD_BATCH x 1 KiB to
    soak/flood on a keep-alive connection, as fast as answers come; statuses counted."""

    def __init__(self, port, active, stop_evt):
        super().__init__(daemon=True)
        self.ka = KeepAlive(port)
        self.active, self.stop_evt = active, stop_evt
        self.status = {}
        self.start()

    def run(self):
        line = b"f" * 1023 + b"\n"
        body = line * FLOOD_BATCH
        while not self.stop_evt.is_set():
            if not self.active.wait(0.2):
                continue
            st, _ = self.ka.request("POST", "/topics/soak/flood", body, "application/x-ndjson")
            self.status[st] = self.status.get(st, 0) + 1
        self.ka.close()


class CloseWaitTracker:
    """CLOSE_WAIT sockets sluice holds, by peer, across samples: a peer seen in CLOSE_WAIT in 3
    consecutive samples is a connection sluice did not close after its client did."""

    def __init__(self, server):
        self.server = server
        self.history = []
        self.persistent = set()

    def sample(self):
        inodes = socket_inodes(self.server.proc.pid)
        now = {peer for peer, (st, inode) in kernel_conn_table(self.server.port).items()
               if st == TCP_CLOSE_WAIT and inode in inodes}
        self.history = (self.history + [now])[-3:]
        if len(self.history) == 3:
            self.persistent |= self.history[0] & self.history[1] & self.history[2]
        return len(now)


def reason_of(key):
    """The reason label of a sluice_connections_closed_total{reason="…"} key."""
    return key.split('reason="', 1)[-1].split('"', 1)[0]


def window(rows, minutes_total):
    """The rows the slopes are judged on: the last 40 minutes, or the last two thirds of a
    shorter run."""
    t_end = rows[-1]["t"]
    start = t_end - 40 * 60 if minutes_total >= 60 else t_end / 3
    w = [dict(r, t=r["t"] - start) for r in rows if r["t"] >= start]
    return w


def plot_soak(csv, png, minutes):
    """The soak chart from its CSV (also: soak.py --plot CSV PNG)."""
    return lk.plot_curves(
        png, f"soak: {minutes:g} min of steady, lossless, churning, stalled, ghost and flooding "
        f"clients at once, memory_limit {LIMIT}",
        [(csv, "t", "rss_mb", "RSS (MB, left)"),
         (csv, "t", "accounted_mb", "accounted memory (MB, left)"),
         (csv, "t", "gauge", "sluice_connections gauge (right)", "y2", "lw 4"),
         (csv, "t", "kernel_established", "kernel ESTABLISHED on the port (right)", "y2",
          "lw 1 dt 3"),
         (csv, "t", "fds", "open fds (right)", "y2", "lw 1"),
         (csv, "t", "close_wait", "CLOSE_WAIT (right)", "y2", "lw 2")],
        "MB", hlines=[(LIMIT_MB, "memory_limit (64 MiB)", "red")], y2label="connections / fds")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--plot", nargs=2, metavar=("CSV", "PNG"),
                    help="only redraw the chart of a recorded run")
    args = ap.parse_args()
    if args.plot:
        rows = args.plot[0]
        t_end = float(open(rows).read().splitlines()[-1].split(",")[0])
        return 0 if plot_soak(args.plot[0], args.plot[1], round(t_end / 60)) else 1
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    duration = args.minutes * 60
    raise_nofile()
    out = out_dir("soak")
    print(f"# soak: {args.minutes:g} minutes, memory_limit {LIMIT}; out {out}", flush=True)
    server = Server(CONFIG, memory_limit=LIMIT)
    port = server.port
    rng = random.Random(11)
    failures = []
    counts = {"waves": 0, "stalled_opened": 0, "stalled_failed": 0, "ghosts": 0, "victims": 0,
              "floods": 0, "checkpoints": 0, "checkpoints_compared": 0}
    pubs, readers, llpub, durable, worker, victim = [], None, None, None, None, None
    waves, ghosts, floods = [], [], []
    flood_on, flood_stop = threading.Event(), threading.Event()
    cw = CloseWaitTracker(server)
    state = {"flood": 0, "stalled": 0}
    sampler = ManualSampler(server, interval=2.0,
                            extra=lambda: {"flood": state["flood"], "stalled": state["stalled"],
                                           "sluice_close_wait": cw.sample()})
    end = {}
    try:
        durable = DurableReader(port)
        durable.ready.wait(10)
        specs = [{"kind": k, "path": "/topics/soak/live"} for k in ("sse", "ws") for _ in range(4)]
        readers = lk.Readers(port, specs, mode="seq", drain=3.0)
        pubs = [lk.Publisher(port, "soak/live", LIVE_RATE, LIVE_SIZE),
                lk.Publisher(port, "churn/a", 10, 512), lk.Publisher(port, "churn/b", 10, 512)]
        llpub = LosslessPublisher(port)
        floods = [Flood(port, flood_on, flood_stop) for _ in range(2)]
        worker = Worker("w0", port, CHURN_TARGET, CHURN_RATE, seed=1000)
        victim = Worker("victim", port, VICTIM_N, 0, seed=1)
        t0 = time.monotonic()
        next_victim = t0 + VICTIM_EVERY * rng.uniform(0.6, 1.4)
        next_wave, next_ghost, next_flood = t0 + 60, t0 + 120, t0 + 200
        next_cp = t0 + CHECKPOINT_EVERY
        flood_until = None
        last_report = t0
        while time.monotonic() - t0 < duration:
            now = time.monotonic()
            for w in (worker, victim):  # (stopped ghosts say nothing)
                while w.poll_line(0) is not None:
                    pass
            if now >= next_victim:
                victim.kill()
                counts["victims"] += 1
                victim = Worker("victim", port, VICTIM_N, 0, seed=rng.randrange(1 << 30))
                next_victim = now + VICTIM_EVERY * rng.uniform(0.6, 1.4)
            if now >= next_wave and now - t0 < duration - STALL_S - 30:
                for w in waves:
                    w.close_all()
                w = lk.StalledReaders(port)
                w.open(WAVE_N, "/topics/soak/live", "/topics/soak/live")
                waves.append(w)
                counts["waves"] += 1
                counts["stalled_opened"] += w.opened["sse"] + w.opened["ws"]
                counts["stalled_failed"] += w.failed
                state["stalled"] = len(w.socks)
                next_wave = now + WAVE_EVERY
            if now >= next_ghost and now - t0 < duration - 60:
                g = Worker("ghost", port, GHOST_N, 0, seed=rng.randrange(1 << 30))
                try:
                    g.expect("READY", 30)
                except RuntimeError as e:
                    failures.append(f"ghost_not_ready:{e}")
                g.proc.send_signal(signal.SIGSTOP)
                ghosts.append((g, now + GHOST_HOLD))
                counts["ghosts"] += 1
                next_ghost = now + GHOST_EVERY
            for i, (g, until) in enumerate(ghosts):
                if g is not None and now >= until:
                    g.kill()
                    ghosts[i] = (None, until)
            if now >= next_flood and now - t0 < duration - 60:
                flood_on.set()
                state["flood"] = 1
                flood_until = now + FLOOD_S
                counts["floods"] += 1
                next_flood = now + FLOOD_EVERY
            if flood_until is not None and now >= flood_until:
                flood_on.clear()
                state["flood"] = 0
                flood_until = None
            if now >= next_cp:
                worker.send("pause")
                worker.expect("PAUSED", 30)
                if not victim.ready:
                    try:
                        victim.expect("READY", 30)
                    except RuntimeError:
                        pass
                compared = 0
                for _ in range(3):
                    time.sleep(0.5)
                    before = len(sampler.mismatches)
                    row = sampler.sample()
                    if row["compared"]:
                        compared = 1
                        if len(sampler.mismatches) > before:
                            print(f"checkpoint mismatch at t={row['t']}: gauge {row['gauge']} "
                                  f"kernel {row['kernel_established']}", flush=True)
                        break
                counts["checkpoints"] += 1
                counts["checkpoints_compared"] += compared
                worker.send("resume")
                worker.expect("RESUMED", 30)
                next_cp = now + CHECKPOINT_EVERY
            sampler.tick()
            if now - last_report >= 300:
                r = sampler.rows[-1]
                print(f"t={now - t0:.0f}s rss={r['rss_mb']}MB accounted={r['accounted_mb']}MB "
                      f"fds={r['fds']} gauge={r['gauge']} kernel={r['kernel_established']} "
                      f"close_wait={r['close_wait']} ll_accepted={len(llpub.accepted)} "
                      f"ll_received={len(durable.received)}", flush=True)
                last_report = now
            time.sleep(0.05)

        # Wind down: the flood and the writers stop, the durable reader catches up.
        flood_on.clear()
        flood_stop.set()
        llpub.stop_evt.set()
        llpub.join(30)
        for p in pubs:
            p.stop()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not llpub.accepted <= durable.received:
            time.sleep(0.2)
        durable.stop_evt.set()
        durable.join(30)
        live = readers.stop()
        readers = None
        worker.send("stop")
        try:
            worker.expect("DONE", 60)
        except RuntimeError as e:
            failures.append(f"worker_stop:{e}")
        worker.kill()
        victim.kill()
        for g, _ in ghosts:
            if g is not None:
                g.kill()
        for w in waves:
            w.close_all()
        for f in floods:
            f.join(30)
        # Everything closed: the server must come back to nothing.
        deadline = time.monotonic() + 30
        while True:
            row = sampler.sample()
            if (row["gauge"] == 0 and row["kernel_established"] == 0 and row["close_wait"] == 0
                    and row["compared"]) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        end = dict(row)
        metrics = sampler.last_metrics
    finally:
        flood_stop.set()
        flood_on.clear()
        for obj in [worker, victim] + [g for g, _ in ghosts]:
            if obj is not None:
                try:
                    obj.kill()
                except Exception:
                    pass
        for w in waves:
            w.close_all()
        if readers is not None:
            readers.stop(10)
        alive = server.alive()
        exit_code = server.stop()
        sampler.write_csv(out / "soak.csv")

    rows = [r for r in sampler.rows if r["gauge"] >= 0]
    w = window(rows, args.minutes)
    first, last = lk.thirds(w)
    rise = lk.longest_rise(w)
    fd_first, fd_last = lk.thirds(w, "fds")
    fd_rise = lk.longest_rise(w, "fds")
    acc_max = max(r["accounted_mb"] for r in rows)
    rss_max = max(r["rss_mb"] for r in rows)
    f = {}

    def check(cond, name):
        if not cond:
            failures.append(name)

    f.update(minutes=args.minutes, samples=len(rows), window_samples=len(w),
             rss_first_third_mb=round(first, 1), rss_last_third_mb=round(last, 1),
             rss_longest_rise=rise, rss_max_mb=round(rss_max, 1),
             accounted_max_mb=round(acc_max, 1), fds_first_third=round(fd_first, 1),
             fds_last_third=round(fd_last, 1), fds_longest_rise=fd_rise)
    check(last - first <= 15, "rss_last_third_within_15MB_of_first")
    check(rise < 10, "rss_fewer_than_10_consecutive_rises")
    check(fd_last - fd_first <= 50, "fds_last_third_within_50_of_first")
    check(fd_rise < 10, "fds_fewer_than_10_consecutive_rises")
    check(acc_max <= LIMIT_MB, "accounted_within_memory_limit")
    check(rss_max <= LIMIT_MB + 32, "rss_within_limit_plus_32MiB")

    compared = sum(r["compared"] for r in sampler.rows)
    f.update(compared_samples=compared, gauge_kernel_mismatches=len(sampler.mismatches),
             reset_unread_max=max((r.get("reset_unread", 0) for r in sampler.rows), default=0),
             stale_resets=sampler.stale_resets,
             checkpoints=counts["checkpoints"], checkpoints_compared=counts["checkpoints_compared"],
             close_wait_max=max(r["close_wait"] for r in rows),
             close_wait_persistent=len(cw.persistent),
             end_gauge=end.get("gauge"), end_kernel=end.get("kernel_established"),
             end_close_wait=end.get("close_wait"))
    check(not sampler.mismatches, "gauge_equals_kernel_at_every_compared_sample")
    check(sampler.stale_resets == 0, "no_reset_connection_left_unnoticed")
    check(counts["checkpoints"] > 0 and counts["checkpoints_compared"] == counts["checkpoints"],
          "every_checkpoint_compared")
    check(not cw.persistent, "no_close_wait_across_3_samples")
    check(end.get("gauge") == 0 and end.get("kernel_established") == 0 and
          end.get("close_wait") == 0, "nothing_left_at_the_end")

    missing_ll = len(llpub.accepted - durable.received)
    f.update(ll_accepted=len(llpub.accepted), ll_refused=llpub.refused,
             ll_received=len(durable.received), ll_missing=missing_ll,
             ll_control_events=len(durable.ctrl), ll_reconnects=durable.reconnects,
             ll_acks=durable.acks, ll_ack_errors=durable.ack_errors)
    check(len(llpub.accepted) > 0 and missing_ll == 0, "lossless_nothing_lost")
    check(not durable.ctrl, "lossless_no_gap_marker")
    if durable.ctrl:
        print(f"lossless control events: {durable.ctrl[:5]}", flush=True)

    if isinstance(live, dict):
        failures.append(f"steady_readers:{live.get('error')}")
        live = []
    silent = sum(1 for d in live if d["missing"] > 0 and d["gaps"] == 0)
    f.update(steady_readers=len(live), steady_delivered=sum(d["count"] for d in live),
             steady_missing=sum(d["missing"] for d in live),
             steady_gaps=sum(d["gaps"] for d in live),
             steady_disorder=sum(d["disorder"] for d in live),
             steady_p99_ms=lk.hist_pct([sum(x) for x in zip(*[d["lat"] for d in live])], 0.99)
             if live else -1,
             live_published=sum(p.ok for p in pubs), live_publish_errors=sum(p.errors for p in pubs))
    check(len(live) == len(specs) and all(d["count"] > 0 for d in live), "steady_readers_ran")
    check(silent == 0, "no_silent_gap")
    check(sum(d["disorder"] for d in live) == 0, "steady_readers_in_order")

    m = metrics
    closed_ws = lk.metric(m, "sluice_connections_closed_total", reason="write_stall")
    statuses = {}
    for fl in floods:
        for k, v in fl.status.items():
            statuses[k] = statuses.get(k, 0) + v
    f.update(waves=counts["waves"], stalled_opened=counts["stalled_opened"],
             closed_write_stall=int(closed_ws), ghosts=counts["ghosts"],
             victims_killed=counts["victims"], floods=counts["floods"],
             flood_statuses="/".join(f"{k}:{v}" for k, v in sorted(statuses.items())),
             flood_stale_reconnects=sum(fl.ka.stale for fl in floods),
             closed_by_reason="/".join(
                 f"{reason_of(k)}:{int(v)}" for k, v in m.items()
                 if k.startswith("sluice_connections_closed_total{")))
    check(counts["stalled_failed"] == 0 and closed_ws >= counts["stalled_opened"],
          "every_stalled_reader_closed_by_write_stall")
    check(counts["floods"] == 0 or statuses.get(202, 0) > 0, "flood_published")
    check(set(statuses) <= {202, 429, 503}, "flood_answers_are_202_or_pushback")
    check(alive and exit_code == 0, "server_alive_and_clean_exit")

    plot_soak(out / "soak.csv", out / "soak.png", args.minutes)
    if failures:
        f["failed"] = ",".join(failures)
    f["out"] = out
    ok = not failures
    verdict("soak", ok, **f)
    json.dump({k: str(v) for k, v in f.items()}, open(out / "figures.json", "w"), indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
