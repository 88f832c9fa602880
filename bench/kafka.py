#!/usr/bin/python3
"""Kafka source benchmarks (issue 12), on librdkafka's mock cluster (build/sluice-kafka-mock),
reported against a baseline measured in the same run.

    /usr/bin/python3 bench/kafka.py [--quick] [--bin build/sluice] [--only a,b]

* throughput: the mock's background producer writes 100 B records flat out over 16
  partitions (the mock keeps 5 MiB a partition, so fewer roll over faster than a reader
  fetches). The ceiling is a plain librdkafka consumer (bench/kafka-ceiling.c, assign, no
  group) reading them for a window (10 s; 5 s quick); then sluice with a source into one lossy
  topic (fan_in = local) and 0 readers, its published counter over the same window; then the
  ceiling again. Both start at the end of the log and reset to the end when they fall behind.
  Reported: records/s each, and sluice / mean(ceiling before, ceiling after). Target >= 0.5.
* latency: the producer at 1,000 records/s of 100 B carrying their CLOCK_REALTIME send time;
  an SSE reader takes now - send time per event for 10 s (after 2 s of warm-up): p50, p99.
* rss: a lossless topic kept full (a durable reader that never acknowledges) so its partition
  stays paused, while the producer writes 10 MB/s (10,000 x 1 KiB) to it for 60 s (20 s
  quick); RSS every 2 s; first third against last third. Run with sluice's default prefetch
  (2 MiB) and with librdkafka's default (prefetch = 64MiB).
* resume: a lossless topic with a small quota fed 200 records/s of 1 KiB; 20 cycles of: read
  until nothing comes for 0.3 s (the partition is paused), acknowledge the last id, time until
  the second record after it arrives (the first is the stash, published as soon as room frees;
  the second is the first record fetched after the resume): p50, p99.

Results: bench/out/kafka-<timestamp>/results.txt (key=value lines).
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "test" / "integ"))
from kafka_mock import KafkaMock, unique_group  # noqa: E402
from sluice_proc import free_port  # noqa: E402


def percentile(values, p):
    if not values:
        return 0.0
    v = sorted(values)
    return v[max(0, min(len(v) - 1, int(-(-p * len(v) // 1)) - 1))]


class Sluice:
    def __init__(self, binary, workdir, mock, kafka_topic, tmpl, topics=(), prefetch=None,
                 memory="256MiB", extra=""):
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        cfg = [f"[server]\nlisten = 127.0.0.1:{self.port}\ndata_dir = {workdir}/data\n"
               f"memory_limit = {memory}\nlog_level = warn\nshutdown_drain = 1s\n"]
        for pattern, kv in topics:
            cfg.append(f'[topic "{pattern}"]\n' + "".join(f"{k} = {v}\n" for k, v in kv.items()))
        cfg.append(f'[source "k"]\ntype = kafka\nbrokers = {mock.bootstrap}\n'
                   f"group = {unique_group('bench')}\nkafka_topics = {kafka_topic}\n"
                   f"topic = {tmpl}\nstart = latest\nkafka.session.timeout.ms = 6000\n"
                   "kafka.heartbeat.interval.ms = 1000\n"
                   + (f"prefetch = {prefetch}\n" if prefetch else "") + extra
                   + "".join(f"{kv.strip()}\n" for kv in SOURCE_EXTRA if kv.strip()))
        (workdir / "sluice.ini").write_text("".join(cfg))
        self.log = open(workdir / "stderr.log", "wb")
        self.proc = subprocess.Popen([binary, "--config", str(workdir / "sluice.ini")],
                                     stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=self.log)
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.get("/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and self.proc.poll() is None, "sluice did not start"
            time.sleep(0.05)

    def get(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
            return r.status, r.read()

    def post(self, path, body):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body.encode(),
                                     headers={"Content-Type": "text/plain"}, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status

    def metric(self, name):
        text = self.get("/metrics")[1].decode()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def source(self):
        return json.loads(self.get("/sources")[1])["sources"][0]

    def rss(self):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def cpu_s(self):
        f = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class SSE:
    """A minimal SSE reader on a raw socket: events as (id, data)."""

    def __init__(self, port, path):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
                       .encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.s.recv(65536)
        self.buf = self.buf.split(b"\r\n\r\n", 1)[1]

    def event(self, timeout):
        """The next event with data, or None after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n\n" in self.buf:
                blk, self.buf = self.buf.split(b"\n\n", 1)
                ev_id, data = None, []
                for line in blk.split(b"\n"):
                    if line.startswith(b"id:"):
                        ev_id = line[3:].strip().decode()
                    elif line.startswith(b"data:"):
                        data.append(line[5:].lstrip(b" ").decode())
                if data:
                    return ev_id, "\n".join(data)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.s.settimeout(left)
            try:
                d = self.s.recv(1 << 20)
            except socket.timeout:
                return None
            if not d:
                raise EOFError("stream closed")
            self.buf += d

    def close(self):
        self.s.close()


def wait(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


SOURCE_EXTRA = []  # --source-extra: more lines for every [source] section
PARTS = 16  # the mock keeps 5 MiB a partition: one partition would roll over in a fraction of a
#             second at full speed, and a reader a little behind would only see offset resets


def ceiling(binary, mock, topic, parts, window):
    out = subprocess.run([binary, mock.bootstrap, topic, str(parts), str(window), "1"],
                         capture_output=True, text=True, timeout=window + 60)
    kv = out.stdout.split()
    return float(kv[kv.index("rate") + 1])


def bench_throughput(a, res, work):
    mock = KafkaMock()
    try:
        mock.topic("tp", PARTS)
        mock.flood("tp", -1, a.rate, 100)
        t_flood = time.monotonic()
        time.sleep(2)
        c1 = ceiling(a.ceiling, mock, "tp", PARTS, a.window)
        srv = Sluice(a.bin, work / "tp", mock, "tp", "tp", extra="fan_in = local\n")
        wait(lambda: srv.metric('sluice_kafka_messages_total{source="k",result="published"}')
             > 0, 60, "records published")
        time.sleep(2)
        p0, cpu0, t0 = (srv.metric('sluice_kafka_messages_total{source="k",result="published"}'),
                        srv.cpu_s(), time.monotonic())
        time.sleep(a.window)
        p1, cpu1, t1 = (srv.metric('sluice_kafka_messages_total{source="k",result="published"}'),
                        srv.cpu_s(), time.monotonic())
        srv.stop()
        c2 = ceiling(a.ceiling, mock, "tp", PARTS, a.window)
        produced = mock.flood_stop()
        rate = (p1 - p0) / (t1 - t0)
        res.update(ceiling_before=round(c1), ceiling_after=round(c2), sluice_published=round(rate),
                   sluice_cpu_s_per_s=round((cpu1 - cpu0) / (t1 - t0), 2),
                   sluice_over_ceiling=round(rate / ((c1 + c2) / 2), 3),
                   producer_rate=round(produced / (time.monotonic() - t_flood)))
    finally:
        mock.close()


def bench_latency(a, res, work):
    mock = KafkaMock()
    try:
        mock.topic("lat", 1)
        srv = Sluice(a.bin, work / "lat", mock, "lat", "lat/{partition}")
        wait(lambda: any(p["state"] == "assigned" for p in srv.source()["partitions"]), 60,
             "assignment")
        sub = SSE(srv.port, "/topics/lat/0")
        mock.flood("lat", 0, 1000, 100)
        lats, start = [], time.monotonic()
        while time.monotonic() - start < 2 + a.window:
            ev = sub.event(5)
            assert ev is not None, "no event for 5 s"
            now = time.time_ns()
            if time.monotonic() - start >= 2:
                lats.append((now - int(ev[1][1:].split(":", 1)[0])) / 1e6)
        mock.flood_stop()
        sub.close()
        srv.stop()
        res.update(latency_events=len(lats), latency_p50_ms=round(percentile(lats, 0.5), 2),
                   latency_p99_ms=round(percentile(lats, 0.99), 2),
                   latency_max_ms=round(max(lats), 2))
    finally:
        mock.close()


TIGHT = {"durability": "lossless", "segment_bytes": "4KiB", "disk_quota": "16KiB",
         "max_bytes": "8KiB"}


def bench_rss(a, res, work, prefetch, label):
    mock = KafkaMock()
    try:
        mock.topic("rss", 1)
        srv = Sluice(a.bin, work / f"rss-{label}", mock, "rss", "rss/{partition}",
                     topics=[("rss/0", TIGHT)], prefetch=prefetch)
        wait(lambda: any(p["state"] == "assigned" for p in srv.source()["partitions"]), 60,
             "assignment")
        sub = SSE(srv.port, "/topics/rss/0?durable=r&from=oldest")  # never acknowledges
        mock.flood("rss", 0, 10000, 1024)
        wait(lambda: any(p["state"] == "paused" for p in srv.source()["partitions"]), 60,
             "the partition paused")
        rows, start = [], time.monotonic()
        while time.monotonic() - start < a.rss_seconds:
            rows.append(srv.rss() / 2**20)
            time.sleep(2)
        produced = mock.flood_stop()
        src = srv.source()
        sub.close()
        srv.stop()
        third = max(1, len(rows) // 3)
        first, last = sum(rows[:third]) / third, sum(rows[-third:]) / third
        res.update({f"rss_{label}_first_third_mib": round(first, 1),
                    f"rss_{label}_last_third_mib": round(last, 1),
                    f"rss_{label}_max_mib": round(max(rows), 1),
                    f"rss_{label}_produced_mb_s": round(produced * 1024 / 1e6 /
                                                        (time.monotonic() - start), 1),
                    f"rss_{label}_still_paused": src["partitions"][0]["state"] == "paused"})
    finally:
        mock.close()


def bench_resume(a, res, work):
    mock = KafkaMock()
    try:
        mock.topic("ack", 1)
        srv = Sluice(a.bin, work / "ack", mock, "ack", "ack/{partition}",
                     topics=[("ack/0", TIGHT)], prefetch="512KiB")
        wait(lambda: any(p["state"] == "assigned" for p in srv.source()["partitions"]), 60,
             "assignment")
        sub = SSE(srv.port, "/topics/ack/0?durable=r&from=oldest")
        mock.flood("ack", 0, 200, 1024)
        figures = []
        last = None
        for _ in range(a.cycles):
            # Read until the partition is paused and nothing more comes.
            while True:
                ev = sub.event(0.3)
                if ev is not None:
                    last = ev[0]
                elif last is not None and any(p["state"] == "paused"
                                              for p in srv.source()["partitions"]):
                    break
            assert last is not None, "nothing to read"
            seq = int(last.split("-")[1])
            t0 = time.monotonic()
            assert srv.post(f"/topics/ack/0/cursors/r", last) == 204
            while True:
                ev = sub.event(10)
                assert ev is not None, "no record after the acknowledgement"
                if int(ev[0].split("-")[1]) >= seq + 2:
                    figures.append((time.monotonic() - t0) * 1000)
                    break
        mock.flood_stop()
        sub.close()
        srv.stop()
        res.update(resume_cycles=len(figures), resume_p50_ms=round(percentile(figures, 0.5), 1),
                   resume_p99_ms=round(percentile(figures, 0.99), 1),
                   resume_max_ms=round(max(figures), 1))
    finally:
        mock.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--bin", default=str(REPO / "build" / "sluice"))
    ap.add_argument("--only", default="throughput,latency,rss,resume")
    ap.add_argument("--rate", type=int, default=0,
                    help="throughput: the producer's records/s (0: flat out)")
    ap.add_argument("--source-extra", default="",
                    help="more [source] lines, separated by ';' (e.g. kafka.fetch.wait.max.ms=10)")
    a = ap.parse_args()
    SOURCE_EXTRA.extend(a.source_extra.split(";"))
    a.ceiling = str(Path(a.bin).parent / "sluice-kafka-ceiling")
    a.window = 5 if a.quick else 10
    a.rss_seconds = 20 if a.quick else 60
    a.cycles = 10 if a.quick else 20
    os.environ.setdefault("SLUICE_KAFKA_MOCK", str(Path(a.bin).parent / "sluice-kafka-mock"))
    out = REPO / "bench" / "out" / time.strftime("kafka-%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    work = Path(tempfile.mkdtemp(prefix="sluice-kafka-bench-"))
    res = {"quick": a.quick, "source_extra": a.source_extra, "rate": a.rate}
    only = a.only.split(",")
    try:
        if "throughput" in only:
            bench_throughput(a, res, work)
        if "latency" in only:
            bench_latency(a, res, work)
        if "rss" in only:
            bench_rss(a, res, work, None, "prefetch_2mib")
            bench_rss(a, res, work, "64MiB", "prefetch_64mib")
        if "resume" in only:
            bench_resume(a, res, work)
    finally:
        text = "".join(f"{k}={v}\n" for k, v in res.items())
        (out / "results.txt").write_text(text)
        print(text, end="")
        print(f"results: {out / 'results.txt'}")


if __name__ == "__main__":
    main()
