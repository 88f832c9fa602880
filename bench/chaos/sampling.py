"""Sampling a server while a scenario runs: RSS, the connection gauge against the kernel's own
count for the port, CLOSE_WAIT sockets, open fds, deliveries and published totals, one row per
sample, written as CSV; Sampler samples in a thread, ManualSampler when its caller says. Also
the slope of a column (RSS growth) over the second half of a run.

Run with Debian's interpreter (/usr/bin/python3); only the standard library is used.
"""

import threading
import time

from kernel import (TCP_CLOSE_WAIT, TCP_ESTABLISHED, held_by_state, kernel_conn_table,
                    kernel_sockets, unlisted_sockets)


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
        row = self._row(m, k2)
        gauge = row["gauge"]
        if self.extra:
            row.update(self.extra())
        if m and k1 == k2 and gauge != k2:
            self.mismatches.append((row["t"], gauge, k2))
        self.rows.append(row)
        return row

    def _row(self, m, established):
        """The standard columns of a sample, from the scrape `m` (empty when it failed) and the
        kernel's ESTABLISHED count."""
        s = self.server
        # Our own /metrics request is one of the established connections while it runs; sluice
        # counts it too, so both sides include it (or neither, after it closed).
        return {
            "t": round(time.monotonic() - self._t0, 3),
            "rss_mb": round(s.rss() / 2**20, 3),
            "gauge": int(m.get("sluice_connections", -1)) - 1 if m else -1,
            "kernel_established": established,
            "close_wait": kernel_sockets(s.port, TCP_CLOSE_WAIT),
            "fds": s.fds(),
            "deliveries": int(m.get("sluice_deliveries_total", 0)),
            "published": int(m.get("sluice_messages_published_total", 0)),
        }

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
    gauge differed from the kernel. The kernel's count includes the sockets sluice holds that a
    reset took out of the kernel's tables before sluice read the error (`reset_unread`);
    `stale_resets` counts samples where one of them had been held for 3 samples running."""

    def __init__(self, server, interval=1.0, extra=None):
        self._unread = []
        self.stale_resets = 0
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
        u1 = unlisted_sockets(s.proc.pid)
        e1 = self._established(s.port)
        m = {}
        try:
            m = s.metrics()
        except Exception:
            self.errors += 1
        e2 = self._established(s.port)
        u2 = unlisted_sockets(s.proc.pid)
        # Compared only when the very same connections were established before and after the
        # scrape (equal counts are not enough under churn: an open and a close cancel out), and
        # the same reset sockets were held unread: a connection reset by its peer leaves the
        # kernel's tables at once, while sluice counts it until it reads the error. Those are
        # counted beside the kernel's (`reset_unread`), and one held in 3 consecutive samples
        # is a connection sluice failed to notice (`stale_resets`).
        k1, k2 = (0, 0) if e1 == e2 and u1 == u2 else (len(e1), -1)
        k2_count = len(e2) + len(u2)
        self._unread.append(u2)
        if len(self._unread) >= 3 and (self._unread[-1] & self._unread[-2] & self._unread[-3]):
            self.stale_resets += 1
        del self._unread[:-3]
        row = self._row(m, k2_count)
        row["reset_unread"] = len(u2)
        gauge = row["gauge"]
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
