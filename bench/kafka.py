#!/usr/bin/python3
"""Kafka source benchmarks (issue 12), on librdkafka's mock cluster (build/sluice-kafka-mock),
reported against a baseline measured in the same run.

    /usr/bin/python3 bench/kafka.py [--quick] [--bin build/sluice] [--only a,b]

* throughput: the mock's background producer writes 100 B records flat out (or at --rate)
  over 16 partitions (the mock keeps 5 MiB a partition, so fewer roll over faster than a reader
  fetches; --partitions 256 keeps about 12 s of a flat-out producer, so a reader that falls
  behind is not reset to the end within the window). The ceiling is a plain librdkafka consumer (bench/kafka-ceiling.c, assign, no
  group) reading them for a window (10 s; 5 s quick); then sluice with a source into one lossy
  topic (fan_in = local) and 0 readers, its published counter over the same window; then the
  ceiling again. Both start at the end of the log and reset to the end when they fall behind.
  Reported: records/s each, and sluice / mean(ceiling before, ceiling after). Target >= 0.5.
  The ceiling gets sluice's fetch.wait.max.ms (CEILING_PROPS, and any kafka.* property of
  --source-extra); its queue limits stay librdkafka's defaults (64 MiB), as a plain
  application would have them.
* latency: the producer at 1,000 records/s of 100 B carrying their CLOCK_REALTIME send time;
  the plain consumer takes now - send time per record for 10 s (after 2 s of warm-up), then an
  SSE reader of sluice does the same per event: p50, p99 of each, on the same mock.
* fanout: 1,000 SSE readers (build/sluice-load fanout --external) on a sluice topic fed by a
  Kafka source at 100 records/s of 100 B (the mock's `flood`), then 1,000 SSE readers on a
  topic of a fresh sluice without a source fed by HTTP POSTs at the same rate and size
  (sluice-load fanout): deliveries per second of feed (events received / window), deliveries
  per server CPU-second, loss, p50/p99 of each (Kafka's include the mock's fetch wait).
* p254: the platformatic #254 scenario of test/integ/test_kafka.py (15 Kafka topics x 1,000
  records into lossless topics with small quotas, durable readers acknowledging every 20
  records): the longest time without any record arriving, the number of 5 s windows without
  progress, pauses and resumes, the time to deliver everything.
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
# What the ceiling shares with sluice's consumer (src/kafka/source.c FETCH_WAIT_MS); any
# kafka.* line of --source-extra is given to both.
CEILING_PROPS = {"fetch.wait.max.ms": "100"}
PARTS = 16  # the mock keeps 5 MiB a partition: one partition would roll over in a fraction of a
#             second at full speed, and a reader a little behind would only see offset resets


def ceiling_props():
    props = dict(CEILING_PROPS)
    for kv in SOURCE_EXTRA:
        k, _, v = kv.partition("=")
        if k.strip().startswith("kafka."):
            props[k.strip()[6:]] = v.strip()
    return sum((["-X", f"{k}={v}"] for k, v in props.items()), [])


def ceiling(binary, mock, topic, parts, window, warmup=1, full=False):
    out = subprocess.run([binary] + ceiling_props() +
                         [mock.bootstrap, topic, str(parts), str(window), str(warmup)],
                         capture_output=True, text=True, timeout=window + 60)
    kv = out.stdout.split()
    if full:
        return {kv[i]: float(kv[i + 1]) for i in range(0, len(kv) - 1, 2)}
    return float(kv[kv.index("rate") + 1])


def bench_throughput(a, res, work):
    mock = KafkaMock()
    try:
        parts = a.partitions
        mock.topic("tp", parts)
        mock.flood("tp", -1, a.rate, 100)
        t_flood = time.monotonic()
        time.sleep(2)
        c1 = ceiling(a.ceiling, mock, "tp", parts, a.window)
        srv = Sluice(a.bin, work / "tp", mock, "tp", "tp", extra="fan_in = local\n")
        wait(lambda: srv.metric('sluice_kafka_messages_total{source="k",result="published"}')
             > 0, 60, "records published")
        time.sleep(2)
        restarts = 'sluice_kafka_fetch_restarts_total{source="k"}'
        p0, cpu0, t0 = (srv.metric('sluice_kafka_messages_total{source="k",result="published"}'),
                        srv.cpu_s(), time.monotonic())
        r0 = srv.metric(restarts)
        time.sleep(a.window)
        p1, cpu1, t1 = (srv.metric('sluice_kafka_messages_total{source="k",result="published"}'),
                        srv.cpu_s(), time.monotonic())
        res.update(sluice_fetch_restarts=round(srv.metric(restarts) - r0))
        srv.stop()
        c2 = ceiling(a.ceiling, mock, "tp", parts, a.window)
        produced = mock.flood_stop()
        rate = (p1 - p0) / (t1 - t0)
        res.update(partitions=parts, ceiling_before=round(c1), ceiling_after=round(c2),
                   sluice_published=round(rate),
                   sluice_cpu_s_per_s=round((cpu1 - cpu0) / (t1 - t0), 2),
                   sluice_over_ceiling=round(rate / ((c1 + c2) / 2), 3),
                   producer_rate=round(produced / (time.monotonic() - t_flood)))
    finally:
        mock.close()


def bench_latency(a, res, work):
    mock = KafkaMock()
    try:
        mock.topic("lat", 1)
        mock.flood("lat", 0, 1000, 100)
        c = ceiling(a.ceiling, mock, "lat", 1, a.window, warmup=2, full=True)
        mock.flood_stop()
        res.update(ceiling_latency_p50_ms=c["p50_ms"], ceiling_latency_p99_ms=c["p99_ms"],
                   ceiling_latency_max_ms=c["max_ms"])
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


def load_fanout(a, port, pid, path, external):
    args = [a.load, "fanout", "--port", str(port), "--server-pid", str(pid), "-n",
            str(a.readers), "-r", str(a.fan_rate), "--size", "100", "-d", str(a.window),
            "--sub-path", path, "--pub-path", path] + (["--external"] if external else [])
    out = subprocess.run(args, capture_output=True, text=True, timeout=a.window + 120)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("scenario=fanout")]
    assert line, f"sluice-load: {out.stdout} {out.stderr}"
    return dict(kv.split("=", 1) for kv in line[0].split())


def bench_fanout(a, res, work):
    mock = KafkaMock()
    try:
        mock.topic("fan", 1)
        srv = Sluice(a.bin, work / "fan", mock, "fan", "fan/{partition}")
        wait(lambda: any(p["state"] == "assigned" for p in srv.source()["partitions"]), 60,
             "assignment")
        mock.flood("fan", 0, a.fan_rate, 100)
        wait(lambda: srv.metric('sluice_kafka_messages_total{source="k",result="published"}')
             > 0, 30, "records published")
        k = load_fanout(a, srv.port, srv.proc.pid, "/topics/fan/0", True)
        mock.flood_stop()
        srv.stop()
    finally:
        mock.close()
    # The same readers on a topic fed by HTTP POSTs, on a sluice without a source.
    port = free_port()
    d = work / "fan-http"
    d.mkdir(parents=True, exist_ok=True)
    (d / "sluice.ini").write_text(f"[server]\nlisten = 127.0.0.1:{port}\ndata_dir = {d}/data\n"
                                  "memory_limit = 256MiB\nlog_level = warn\n"
                                  "shutdown_drain = 1s\n")
    log = open(d / "stderr.log", "wb")
    proc = subprocess.Popen([a.bin, "--config", str(d / "sluice.ini")], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "no sluice"
                time.sleep(0.05)
        h = load_fanout(a, port, proc.pid, "/topics/fanhttp", False)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    # Deliveries per second of feed: events received / the window (HTTP: the publishes span
    # the window and sluice-load waits 1 s more for the last deliveries; Kafka: events
    # received during the window). CPU: sluice's, over the same spans.
    for r in (k, h):
        r["deliveries_per_s"] = int(r["delivered"]) // a.window
    for label, r in (("kafka", k), ("http", h)):
        res.update({f"fanout_{label}_subscribed": int(r["subscribed"]),
                    f"fanout_{label}_delivered": int(r["delivered"]),
                    f"fanout_{label}_deliveries_per_s": int(r["deliveries_per_s"]),
                    f"fanout_{label}_deliveries_per_cpu_s": int(r["deliveries_per_cpu_s"]),
                    f"fanout_{label}_lost": int(r["lost"]), f"fanout_{label}_gaps": int(r["gaps"]),
                    f"fanout_{label}_p50_ms": float(r["p50_ms"]),
                    f"fanout_{label}_p99_ms": float(r["p99_ms"])})
    res.update(fanout_readers=a.readers, fanout_rate=a.fan_rate,
               fanout_kafka_over_http=round(int(k["deliveries_per_s"]) /
                                            max(1, int(h["deliveries_per_s"])), 3),
               fanout_kafka_over_http_per_cpu=round(int(k["deliveries_per_cpu_s"]) /
                                                    max(1, int(h["deliveries_per_cpu_s"])), 3))


def bench_p254(a, res, work):
    """The #254 scenario, timed: every record's arrival moves the progress clock."""
    import threading
    n_topics, n = 15, 1000
    names = [f"p254-{i}" for i in range(n_topics)]
    mock = KafkaMock()
    try:
        for name in names:
            mock.topic(name, 1)
        srv = Sluice(a.bin, work / "p254", mock, ", ".join(names), "k/{kafka_topic}",
                     topics=[("k/*", TIGHT)], prefetch="256KiB",
                     extra="commit_interval = 200ms\n")
        got = {name: 0 for name in names}
        lock = threading.Lock()
        arrivals = []
        errors = []

        def reader(name):
            try:
                sub = SSE(srv.port, f"/topics/k/{name}?durable=r&from=oldest")
                last = None
                while got[name] < n:
                    ev = sub.event(60)
                    assert ev is not None, "no event for 60 s"
                    last = ev[0]
                    with lock:
                        got[name] += 1
                        arrivals.append(time.monotonic())
                    if got[name] % 20 == 0:
                        time.sleep(0.02)  # a slow reader: acknowledges in steps, late
                        assert srv.post(f"/topics/k/{name}/cursors/r", last) == 204
                assert srv.post(f"/topics/k/{name}/cursors/r", last) == 204
                sub.close()
            except Exception as ex:  # reported below
                errors.append(f"{name}: {ex!r}")

        threads = [threading.Thread(target=reader, args=(nm,), daemon=True) for nm in names]
        for t in threads:
            t.start()
        wait(lambda: sum(p["state"] == "assigned" for p in srv.source()["partitions"])
             == n_topics, 60, "every partition assigned")
        t0 = time.monotonic()
        for batch in range(10):
            for name in names:
                mock.produce(name, 0, 100, prefix=f"{name}-{batch}-", size=100)
        for t in threads:
            t.join(timeout=300)
        t1 = time.monotonic()
        src = srv.source()
        srv.stop()
        points = [t0] + sorted(arrivals) + [max(arrivals + [t0])]
        gaps = [b - x for x, b in zip(points, points[1:])]
        parts = src["partitions"]
        res.update(p254_records=sum(got.values()), p254_errors=len(errors),
                   p254_seconds=round(max(arrivals + [t0]) - t0, 2),
                   p254_longest_no_progress_s=round(max(gaps), 3),
                   p254_stalls_5s=sum(1 for g in gaps if g >= 5),
                   p254_pauses=sum(p.get("pauses", 0) for p in parts),
                   p254_resumes=sum(p.get("resumes", 0) for p in parts),
                   p254_wall_s=round(t1 - t0, 2))
        if errors:
            print("p254 errors:", errors[:3], file=sys.stderr)
    finally:
        mock.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--bin", default=str(REPO / "build" / "sluice"))
    ap.add_argument("--only", default="throughput,latency,rss,resume,fanout,p254")
    ap.add_argument("--partitions", type=int, default=16,
                    help="throughput: partitions of the flooded topic (the mock keeps 5 MiB "
                         "each: more keep a reader that falls behind from being reset)")
    ap.add_argument("--rate", type=int, default=0,
                    help="throughput: the producer's records/s (0: flat out)")
    ap.add_argument("--fanout-rate", type=int, default=100,
                    help="fanout: records (and HTTP publishes) a second")
    ap.add_argument("--source-extra", default="",
                    help="more [source] lines, separated by ';' (e.g. kafka.fetch.wait.max.ms=10)")
    a = ap.parse_args()
    SOURCE_EXTRA.extend(a.source_extra.split(";"))
    a.ceiling = str(Path(a.bin).parent / "sluice-kafka-ceiling")
    a.load = str(Path(a.bin).parent / "sluice-load")
    a.readers = 1000
    a.fan_rate = a.fanout_rate
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
        if "fanout" in only:
            bench_fanout(a, res, work)
        if "p254" in only:
            bench_p254(a, res, work)
    finally:
        text = "".join(f"{k}={v}\n" for k, v in res.items())
        (out / "results.txt").write_text(text)
        print(text, end="")
        print(f"results: {out / 'results.txt'}")


if __name__ == "__main__":
    main()
