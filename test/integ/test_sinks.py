"""Black-box tests of webhook sinks: the real binary delivering to a real aiohttp receiver
(webhook_receiver.py) on 127.0.0.1. Order and batching, signatures, retries and Retry-After,
the circuit breaker, poison messages and the dead-letter topic, 410, SSRF refusal, lossy gaps,
answers that hang, SIGTERM with a request in flight, and kill -9 mid-delivery on a lossless
topic."""

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import SLUICE_BIN, free_port
from webhook_receiver import Receiver

SECRET1 = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SECRET2 = "whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24="


@pytest.fixture
def receiver():
    r = Receiver(secrets=[SECRET1, SECRET2])
    yield r
    r.close()


def sink_config(port, data_dir, sinks, topics=None, server=None):
    lines = ["[server]", f"listen = 127.0.0.1:{port}", f"data_dir = {data_dir}",
             "shutdown_drain = 1s", "memory_limit = 64MiB", "log_level = info"]
    lines += [f"{k} = {v}" for k, v in (server or {}).items()]
    for glob, kv in (topics or {}).items():
        lines.append(f'[topic "{glob}"]')
        lines += [f"{k} = {v}" for k, v in kv.items()]
    for name, kv in sinks.items():
        lines.append(f'[sink "{name}"]')
        for k, v in kv.items():
            for one in (v if isinstance(v, list) else [v]):
                lines.append(f"{k} = {one}")
    return "\n".join(lines) + "\n"


def start(sluice_factory, tmp_path, sinks, topics=None, server=None, data=None, port=None):
    port = port or free_port()
    data = data or (tmp_path / "data")
    text = sink_config(port, data, sinks, topics, server)
    return sluice_factory(text=text, port=port)


def webhook(url, **kw):
    conf = {"type": "webhook", "topics": "t/*", "url": url, "allow_private": "true",
            "batch_linger": "0", "retry_initial": "20ms", "retry_max": "200ms"}
    conf.update(kw)
    return conf


def secret_file(tmp_path):
    p = tmp_path / "secrets"
    p.write_text(f"# old and new\n{SECRET1}\n{SECRET2}\n")
    return str(p)


def test_order_batching_and_signatures(sluice_factory, tmp_path, receiver):
    srv = start(sluice_factory, tmp_path, {
        "s": webhook(receiver.url("/in/{topic}"), batch_linger="50ms", batch_max_messages=10,
                     signing_secret_file=secret_file(tmp_path),
                     header="Authorization: Bearer xyz")})
    srv.publish("t/a", "first")
    assert receiver.wait(lambda r: len(r.delivered_payloads()) == 1)
    lines = [f"m{i}" for i in range(200)]
    srv.publish_batch("t/a", lines)
    assert receiver.wait(lambda r: len(r.delivered_payloads()) == 201), \
        len(receiver.delivered_payloads())
    assert receiver.delivered_payloads() == ["first"] + lines
    ok = receiver.ok()
    sizes = [len(d.envelopes()) for d in ok]
    assert max(sizes) == 10 and len(ok) <= 1 + 200 // 2, sizes  # batched, within the cap
    d = ok[-1]
    assert d.path == "/in/t%2Fa"
    assert d.headers["sluice-topic"] == "t/a"
    assert d.headers["Authorization"] == "Bearer xyz"
    assert d.headers["Content-Type"] == "application/x-ndjson"
    assert d.headers["webhook-id"] and d.headers["webhook-timestamp"].isdigit()
    assert len(d.headers["webhook-signature"].split()) == 2
    assert receiver.bad_signatures == 0
    ids = [e["id"] for dd in ok for e in dd.envelopes()]
    seqs = [int(i.split("-")[1]) for i in ids]
    assert seqs == list(range(1, 202))
    assert len({dd.headers["webhook-id"] for dd in ok}) == len(ok)


def test_json_and_raw_formats(sluice_factory, tmp_path, receiver):
    srv = start(sluice_factory, tmp_path, {
        "j": webhook(receiver.url("/j"), topics="t/j", format="json", batch_linger="30ms"),
        "r": webhook(receiver.url("/r"), topics="t/r", format="raw")})
    srv.publish_batch("t/j", ["1", "2", "3"])
    srv.publish_batch("t/r", ["x", "y"])
    assert receiver.wait(lambda r: len([d for d in r.ok() if d.path == "/r"]) == 2)
    assert receiver.wait(lambda r: sum(len(d.envelopes()) for d in r.ok() if d.path == "/j") == 3)
    raw = [d for d in receiver.ok() if d.path == "/r"]
    assert [d.body for d in raw] == [b"x", b"y"]
    assert raw[0].headers["Content-Type"] == "application/octet-stream"
    # The ids, exactly: webhook-id msg_<epoch>_<first seq>_<last seq>, sluice-id <epoch>-<seq>.
    for seq, d in enumerate(raw, 1):
        epoch, sid_seq = d.headers["sluice-id"].split("-")
        assert re.fullmatch(r"[0-9a-f]{16}", epoch) and sid_seq == str(seq), d.headers
        assert d.headers["webhook-id"] == f"msg_{epoch}_{seq}_{seq}", d.headers
        assert abs(int(d.headers["webhook-timestamp"]) - time.time()) < 60, d.headers
    j = [d for d in receiver.ok() if d.path == "/j"]
    assert j[0].body.startswith(b"[") and j[0].headers["Content-Type"] == "application/json"
    first, last = j[0].envelopes()[0]["id"], j[0].envelopes()[-1]["id"]
    epoch = first.split("-")[0]
    assert j[0].headers["webhook-id"] == \
        f"msg_{epoch}_{first.split('-')[1]}_{last.split('-')[1]}", j[0].headers
    assert j[0].headers["sluice-id"] == first, j[0].headers


def test_retries_keep_order_and_id(sluice_factory, tmp_path, receiver):
    receiver.set("status", status=500)
    srv = start(sluice_factory, tmp_path, {"s": webhook(receiver.url(), breaker_failures=1000)})
    srv.publish("t/a", "one")
    assert receiver.wait(lambda r: len(r.all()) >= 4)
    receiver.set("ok")
    srv.publish("t/a", "two")
    assert receiver.wait(lambda r: receiver.delivered_payloads() == ["one", "two"])
    attempts = [d for d in receiver.all() if b"one" in d.body]
    # Every attempt of the batch carried the same webhook-id and body.
    assert len({d.headers["webhook-id"] for d in attempts}) == 1
    assert len({d.body for d in attempts}) == 1
    # Backoff with full jitter stays below retry_max between attempts (plus scheduling).
    gaps = [b.t - a.t for a, b in zip(attempts, attempts[1:])]
    assert max(gaps) < 0.2 + 1.0, gaps


def test_retry_after_is_honoured(sluice_factory, tmp_path, receiver):
    receiver.set("status", status=503, retry_after=1)
    srv = start(sluice_factory, tmp_path, {
        "s": webhook(receiver.url(), retry_max="5s", breaker_failures=1000)})
    srv.publish("t/a", "x")
    assert receiver.wait(lambda r: len(r.all()) >= 3, timeout=10)
    receiver.set("ok")
    t = [d.t for d in receiver.all()[:3]]
    # Without Retry-After the backoff would be at most 20-80 ms.
    assert t[1] - t[0] >= 0.9 and t[2] - t[1] >= 0.9, t
    assert receiver.wait(lambda r: r.delivered_payloads() == ["x"])


def test_breaker_opens_and_probes(sluice_factory, tmp_path, receiver):
    receiver.set("status", status=500)
    srv = start(sluice_factory, tmp_path, {
        "s": webhook(receiver.url(), breaker_failures=3, breaker_open="1s",
                     breaker_open_max="2s", retry_initial="10ms", retry_max="20ms")})
    srv.publish("t/a", "x")
    assert receiver.wait(lambda r: len(r.all()) >= 6, timeout=15)
    t = [d.t for d in receiver.all()]
    # Three failures quickly, then the breaker holds the next attempt (a probe) >= 1 s, and
    # after a failed probe the open period doubles.
    assert t[2] - t[0] < 1.0, t
    assert t[3] - t[2] >= 0.9, t
    assert t[4] - t[3] >= 1.8, t
    receiver.set("ok")
    assert receiver.wait(lambda r: r.delivered_payloads() == ["x"], timeout=10)


def test_poison_message_dead_letter(sluice_factory, tmp_path, receiver):
    receiver.set("reject_id", reject="poison-7")
    srv = start(sluice_factory, tmp_path, {
        "s": webhook(receiver.url("/main"), batch_linger="100ms", dead_letter="dlq/s"),
        "d": webhook(receiver.url("/dlq"), topics="dlq/*")})
    lines = [f"msg-{i}" for i in range(7)] + ["poison-7"] + [f"msg-{i}" for i in range(8, 12)]
    srv.publish_batch("t/a", lines)
    want = [x for x in lines if x != "poison-7"]
    assert receiver.wait(lambda r: [p for p in r.delivered_payloads("t/a")] == want), \
        receiver.delivered_payloads("t/a")
    assert receiver.wait(lambda r: len(r.delivered_payloads("dlq/s")) == 1)
    env = json.loads(receiver.delivered_payloads("dlq/s")[0])
    assert env["sluice"] == "dead_letter" and env["sink"] == "s" and env["status"] == 400
    assert env["message"]["data"] == "poison-7" and env["message"]["topic"] == "t/a"
    assert env["answer"] == "answer 400"
    # The stream went on: later messages arrive.
    receiver.set("ok")
    srv.publish("t/a", "after")
    assert receiver.wait(lambda r: r.delivered_payloads("t/a")[-1:] == ["after"])
    assert "dead-lettered" in srv.logs()


def test_poison_without_dead_letter_stops_only_that_stream(sluice_factory, tmp_path, receiver):
    receiver.set("reject_id", reject="poison")
    srv = start(sluice_factory, tmp_path, {"s": webhook(receiver.url())})
    srv.publish("t/a", "poison")
    assert receiver.wait(lambda r: len(r.all()) >= 1)
    srv.publish("t/b", "fine")
    srv.publish("t/a", "stuck")
    assert receiver.wait(lambda r: "fine" in r.delivered_payloads())
    assert receiver.wait(lambda r: "sink stream stopped" in srv.logs())
    assert "stuck" not in receiver.delivered_payloads()


def test_410_disables_the_sink(sluice_factory, tmp_path, receiver):
    receiver.set("status", status=410)
    srv = start(sluice_factory, tmp_path, {"s": webhook(receiver.url())})
    srv.publish("t/a", "x")
    assert receiver.wait(lambda r: "sink disabled" in srv.logs())
    n = len(receiver.all())
    receiver.set("ok")
    srv.publish("t/a", "y")
    srv.publish("t/b", "z")
    # Another sink-driven request would come within milliseconds; a healthz round-trip per
    # publish orders the check after the flush passes that would have sent it.
    for _ in range(5):
        srv.get("/healthz")
    assert len(receiver.all()) == n == 1


def test_private_addresses_refused_by_default(sluice_factory, tmp_path, receiver):
    srv = start(sluice_factory, tmp_path, {
        "s": webhook(receiver.url(), allow_private="false", retry_initial="50ms")})
    srv.publish("t/a", "x")
    deadline = time.monotonic() + 10
    while "private address" not in srv.logs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "private address" in srv.logs()
    assert receiver.all() == []


def test_lossy_gap_envelope(sluice_factory, tmp_path, receiver):
    receiver.set("slow", delay=1.0)
    srv = start(sluice_factory, tmp_path, {"s": webhook(receiver.url(), batch_max_messages=5)},
                topics={"t/*": {"max_messages": "10"}})
    srv.publish("t/a", "m0")
    assert receiver.wait(lambda r: len(r.all()) == 1)
    srv.publish_batch("t/a", [f"m{i}" for i in range(1, 101)])
    receiver.set("ok")
    assert receiver.wait(lambda r: "m100" in r.delivered_payloads(), timeout=15)
    got = receiver.delivered_payloads()
    gaps = [e for d in receiver.ok() for e in d.envelopes() if e.get("sluice") == "gap"]
    assert len(gaps) >= 1
    missed = sum(g["missed"] for g in gaps)
    assert missed > 0 and len(got) + missed == 101, (len(got), missed)
    assert got == sorted(got, key=lambda s: int(s[1:]))


def test_raw_gap_request_headers(sluice_factory, tmp_path, receiver):
    """A raw sink sends a gap as a request of its own: a JSON gap envelope, Content-Type
    application/json, webhook-id gap_<epoch>_<from>_<to>, sluice-control: gap, no sluice-id."""
    receiver.set("slow", delay=1.0)
    srv = start(sluice_factory, tmp_path, {"s": webhook(receiver.url(), format="raw")},
                topics={"t/*": {"max_messages": "10"}})
    srv.publish("t/a", "m0")
    assert receiver.wait(lambda r: len(r.all()) == 1)
    srv.publish_batch("t/a", [f"m{i}" for i in range(1, 101)])
    receiver.set("ok")
    assert receiver.wait(lambda r: any(d.body == b"m100" for d in r.ok()), timeout=15)
    gaps = [d for d in receiver.ok() if d.headers.get("sluice-control") == "gap"]
    assert gaps, [d.headers for d in receiver.ok()]
    for d in gaps:
        g = json.loads(d.body)
        assert g["sluice"] == "gap" and g["missed"] > 0, g
        epoch, frm = g["from"].split("-")
        assert g["to"].split("-")[0] == epoch
        to = g["to"].split("-")[1]
        assert d.headers["webhook-id"] == f"gap_{epoch}_{frm}_{to}", d.headers
        assert d.headers["Content-Type"] == "application/json", d.headers
        assert "sluice-id" not in d.headers, d.headers
    plain = [d for d in receiver.ok() if "sluice-control" not in d.headers]
    assert all(d.headers["Content-Type"] == "application/octet-stream" for d in plain)
    missed = sum(json.loads(d.body)["missed"] for d in gaps)
    assert len(plain) + missed == 101, (len(plain), missed)


class ClosingEndpoint:
    """Answers each request on a kept-alive connection with 200 (no Connection: close), then
    closes that connection 0.2 s later: the sink finds it closed while it waits idle in curl's
    cache."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.bodies, self.connections, self.closed = [], 0, 0
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        buf = b""
        with c:
            while b"\r\n\r\n" not in buf:
                d = c.recv(65536)
                if not d:
                    return
                buf += d
            head, body = buf.split(b"\r\n\r\n", 1)
            n = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
            while len(body) < n:
                body += c.recv(65536)
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            with self.lock:
                self.bodies.append(body)
            time.sleep(0.2)
        with self.lock:
            self.closed += 1

    def wait(self, pred, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if pred(self):
                    return True
            time.sleep(0.02)
        return False


def proc_cpu_s(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def test_idle_connection_closed_by_endpoint(sluice_factory, tmp_path):
    """Between requests a kept-alive connection's socket stays polled for reading; when the
    endpoint closes it there, the poll stops (a level-triggered event on a closed socket would
    otherwise wake the loop for ever) and the next request goes out on a new connection."""
    ep = ClosingEndpoint()
    srv = start(sluice_factory, tmp_path,
                {"s": webhook(f"http://127.0.0.1:{ep.port}/in", format="raw")})
    srv.publish("t/a", "one")
    assert ep.wait(lambda e: e.closed == 1)
    # Idle with a closed connection in curl's cache: a spinning loop would burn a CPU-second
    # every second; an idle server uses a few ticks.
    cpu0, t0 = proc_cpu_s(srv.proc.pid), time.monotonic()
    time.sleep(1.0)
    used, spent = proc_cpu_s(srv.proc.pid) - cpu0, time.monotonic() - t0
    assert used < 0.5 * spent, (used, spent)
    srv.publish("t/a", "two")
    assert ep.wait(lambda e: len(e.bodies) == 2), ep.bodies
    assert ep.bodies == [b"one", b"two"] and ep.connections == 2
    ep.sock.close()


def test_2xx_then_hanging_body_counts_as_delivered(sluice_factory, tmp_path, receiver):
    receiver.set("hang_body")
    srv = start(sluice_factory, tmp_path, {"s": webhook(receiver.url(), timeout="30s")})
    srv.publish("t/a", "one")
    assert receiver.wait(lambda r: len(r.all()) == 1)
    receiver.set("ok")
    srv.publish("t/a", "two")
    assert receiver.wait(lambda r: b"two" in r.all()[-1].body, timeout=10)
    bodies = [d.body for d in receiver.all()]
    assert sum(b"one" in b for b in bodies) == 1 and b"one" not in bodies[-1]


@pytest.mark.parametrize("mode", ["hang_headers", "reset", "never_accepts", "down"])
def test_failing_endpoints_are_retried(sluice_factory, tmp_path, receiver, mode):
    if mode in ("hang_headers", "reset"):
        receiver.set(mode)
        url = receiver.url()
    else:
        url = receiver.never_accepting_url() if mode == "never_accepts" else receiver.down_url()
    # The sink's url cannot change while it runs: a bad endpoint first, then a restart on the
    # same data directory pointing at the good one shows nothing was acknowledged.
    port = free_port()
    data = tmp_path / "data"
    topics = {"t/*": {"durability": "lossless"}}
    srv = start(sluice_factory, tmp_path, {
        "s": webhook(url, timeout="300ms", connect_timeout="300ms", start="oldest")},
        topics=topics, data=data, port=port)
    srv.publish("t/a", "x")
    if mode in ("hang_headers", "reset"):
        assert receiver.wait(lambda r: len(r.all()) >= 2, timeout=10)
    else:
        time.sleep(1.0)  # time for a few attempts; what is checked is the restart below
    srv.signal(signal.SIGKILL)
    srv.wait_exit(5)
    receiver.set("ok")
    # The restarted server posts to another path: a retry of the killed one that the receiver
    # takes from its socket only now (after the switch to "ok", under load) is not counted.
    srv2 = start(sluice_factory, tmp_path, {
        "s": webhook(receiver.url("/after"), start="oldest")}, topics=topics, data=data)

    def after(r):
        return [e["data"] for d in r.ok() if d.path == "/after" for e in d.envelopes()
                if "sluice" not in e]
    assert receiver.wait(lambda r: after(r) == ["x"], timeout=10), after(receiver)
    assert srv2.alive()


def test_kill9_mid_delivery_lossless_no_loss(sluice_factory, tmp_path, receiver):
    topics = {"t/*": {"durability": "lossless"}}
    data = tmp_path / "data"
    receiver.set("slow", delay=0.2)
    srv = start(sluice_factory, tmp_path, {
        "s": webhook(receiver.url(), batch_max_messages=20, max_in_flight=4)},
        topics=topics, data=data)
    srv.publish("t/a", "m0")  # creates the topic and the durable cursor sink.s
    lines = [f"m{i}" for i in range(1, 500)]
    srv.publish_batch("t/a", lines)
    assert receiver.wait(lambda r: len(r.ok()) >= 3)
    srv.signal(signal.SIGKILL)
    srv.wait_exit(5)
    first = receiver.delivered_payloads()
    assert len(first) < 500
    receiver.set("ok")
    srv2 = start(sluice_factory, tmp_path, {"s": webhook(receiver.url())},
                 topics=topics, data=data)
    assert receiver.wait(lambda r: "m499" in r.delivered_payloads(), timeout=20)
    every = receiver.delivered_payloads()
    assert set(every) == {f"m{i}" for i in range(500)}
    # Redelivered only from the last acknowledged point, in order.
    second = every[len(first):]
    start_at = int(second[0][1:])
    assert second == [f"m{i}" for i in range(start_at, 500)]
    assert start_at <= len(first)
    assert srv2.alive()


def test_sigterm_with_request_in_flight(sluice_factory, tmp_path, receiver):
    receiver.set("hang_headers")
    srv = start(sluice_factory, tmp_path, {"s": webhook(receiver.url(), timeout="60s")},
                server={"shutdown_drain": "500ms"})
    srv.publish("t/a", "x")
    assert receiver.wait(lambda r: len(r.all()) == 1)
    srv.signal(signal.SIGTERM)
    rc = srv.wait_exit(10)
    assert rc == 0, srv.logs()
    assert "sink drain deadline reached" in srv.logs()


def test_bad_sink_config_is_reported(tmp_path):
    cfg = tmp_path / "bad.ini"
    cfg.write_text('[sink "x y"]\n[sink "ok"]\ntype = webhook\ntopics = a\n'
                   'url = gopher://h/\nformat = xml\n')
    p = subprocess.run([SLUICE_BIN, "--config", str(cfg), "--check-config"],
                       capture_output=True, text=True, timeout=10)
    assert p.returncode == 1
    assert "malformed section [sink \"x y\"]" in p.stderr
    assert "invalid value 'xml' for format" in p.stderr
    assert "invalid url" in p.stderr


def test_missing_secret_file_fails_start(tmp_path):
    port = free_port()
    cfg = tmp_path / "s.ini"
    cfg.write_text(sink_config(port, tmp_path / "d", {
        "s": webhook("http://127.0.0.1:1/", signing_secret_file=str(tmp_path / "nope"))}))
    p = subprocess.run([SLUICE_BIN, "--config", str(cfg)], capture_output=True, text=True,
                       timeout=10)
    assert p.returncode == 1
    assert "cannot read signing_secret_file" in p.stderr + p.stdout


def test_metrics_series_by_sink_name(sluice_factory, tmp_path, receiver):
    receiver.set("reject_id", reject="bad")
    srv = start(sluice_factory, tmp_path, {
        "m1": webhook(receiver.url("/secret-path-x"), dead_letter="dlq/m1")})
    srv.publish_batch("t/a", ["good", "bad", "good2"])
    assert receiver.wait(lambda r: r.delivered_payloads("t/a") == ["good", "good2"])
    m = srv.wait_metric('sluice_sink_dead_letters_total{reason="rejected",sink="m1"}',
                        lambda v: v == 1)
    assert m.v('sluice_sink_delivered_messages_total{sink="m1"}') == 2
    assert m.v('sluice_sink_requests_total{outcome="rejected",sink="m1"}') >= 1
    assert m.v('sluice_sink_in_flight{sink="m1"}') == 0
    assert m.v('sluice_sink_backlog_messages{sink="m1"}') == 0
    assert m.v('sluice_sink_oldest_unacked_seconds{sink="m1"}') == 0
    count = m.v('sluice_sink_request_duration_seconds_count{sink="m1"}')
    assert count >= 3  # the batch was split: several requests
    assert m.v('sluice_sink_request_duration_seconds_bucket{le="+Inf",sink="m1"}') == count
    assert m.v('sluice_sink_request_duration_seconds_bucket{le="30.000",sink="m1"}') <= count
    assert m.v('sluice_sink_breakers{state="closed"}') + \
        m.v('sluice_sink_breakers{state="open"}') <= 1
    text = srv.get("/metrics").body.decode()
    assert "secret-path-x" not in text and "127.0.0.1:%d" % receiver.port not in text


QUOTA = {"t/*": {"durability": "lossless", "segment_bytes": "4KiB", "disk_quota": "32KiB"}}


def fill_until_refused(srv, topic, limit=400):
    """Publishes 1 KiB messages until the log pushes back (429); returns those accepted."""
    sent = []
    for i in range(limit):
        r = srv.post(f"/topics/{topic}", f"p{i}:" + "x" * 1000)
        if r.status == 429:
            return sent
        assert r.status == 202, r.status
        sent.append(f"p{i}:" + "x" * 1000)
    return sent


def test_lossless_pushback_then_resume(sluice_factory, tmp_path, receiver):
    receiver.set("status", status=503)
    # Failing half the time opens the breaker whatever breaker_failures says: short periods.
    srv = start(sluice_factory, tmp_path, {
        "s": webhook(receiver.url(), breaker_failures=1000, breaker_open="100ms",
                     breaker_open_max="200ms")},
        topics=QUOTA, server={"max_publish_wait": "50ms"})
    sent = fill_until_refused(srv, "t/a")
    # The endpoint is down and the sink holds the log: publishers are pushed back.
    assert 0 < len(sent) < 400, len(sent)
    assert len(receiver.ok()) == 0
    receiver.set("ok")
    assert receiver.wait(lambda r: r.delivered_payloads() == sent, timeout=20)
    # Room again once the sink caught up: publishing resumes, nothing was skipped.
    assert srv.wait_metric('sluice_sink_backlog_messages{sink="s"}', lambda v: v == 0)
    srv.publish("t/a", "after")
    assert receiver.wait(lambda r: r.delivered_payloads() == sent + ["after"])
    assert srv.metrics().v('sluice_sink_gap_messages_total{sink="s"}') == 0


def test_skip_on_max_backlog_never_blocks_publishers(sluice_factory, tmp_path, receiver):
    receiver.set("status", status=503)
    srv = start(sluice_factory, tmp_path, {
        "s": webhook(receiver.url(), breaker_failures=1000, on_max_backlog="skip",
                     breaker_open="100ms", breaker_open_max="200ms")},
        # Publishes wait for their write only (never for room): a slow disk is no failure here.
        topics={"t/*": dict(QUOTA["t/*"], max_messages="8")}, server={"max_publish_wait": "10s"})
    sent = [f"p{i}:" + "x" * 1000 for i in range(200)]  # six times the quota
    for p in sent:
        srv.publish("t/a", p)  # never a 429
    receiver.set("ok")
    srv.publish("t/a", "last")
    assert receiver.wait(lambda r: "last" in r.delivered_payloads(), timeout=20)
    got = receiver.delivered_payloads()
    m = srv.wait_metric('sluice_sink_backlog_messages{sink="s"}', lambda v: v == 0)
    missed = m.v('sluice_sink_gap_messages_total{sink="s"}')
    # Losses are counted gaps only: what arrived is in order, and the rest is the gap count.
    assert missed > 0 and len(got) + missed == len(sent) + 1, (len(got), missed)
    assert got == [p for p in sent + ["last"] if p in set(got)]
    gaps = [e for d in receiver.ok() for e in d.envelopes() if e.get("sluice") == "gap"]
    assert sum(g["missed"] for g in gaps) == missed


def test_get_sinks_shows_streams(sluice_factory, tmp_path, receiver):
    receiver.set("status", status=503)
    srv = start(sluice_factory, tmp_path, {
        "down": webhook(receiver.url("/secret-path-y"), breaker_failures=2, breaker_open="10s")})
    srv.publish_batch("t/a", ["a", "b"])
    srv.publish("t/b", "c")

    def doc():
        r = srv.get("/sinks")
        assert r.status == 200
        return json.loads(r.body)

    def stream(d, topic):
        return next(s for s in d["sinks"][0]["streams"] if s["topic"] == topic)

    # A retry of t/a (full jitter: it may come at once) can be in flight when t/b's failure
    # opens the breaker; it fails too, and then the stream waits.
    def settled():
        a = stream(doc(), "t/a")
        return a["breaker"] == "open" and a["in_flight"] == 0

    end = time.monotonic() + 10
    while not settled() and time.monotonic() < end:
        time.sleep(0.05)
    d = doc()
    assert d["sinks"][0]["name"] == "down" and d["sinks"][0]["type"] == "webhook"
    a = stream(d, "t/a")
    assert a["breaker"] == "open"
    assert a["state"] in ("wait_breaker", "backoff")
    assert a["backlog_messages"] == 2 and a["backlog_bytes"] == 2
    assert a["oldest_unacked_seconds"] > 0 and a["in_flight"] == 0
    assert stream(d, "t/b")["backlog_messages"] == 1
    text = srv.get("/sinks").body.decode()
    assert "secret-path-y" not in text and str(receiver.port) not in text
    m = srv.metrics()
    assert m.v('sluice_sink_backlog_bytes{sink="down"}') == 3
    assert m.v('sluice_sink_oldest_unacked_seconds{sink="down"}') > 0


def test_flapping_endpoint_delivers_everything_in_order(sluice_factory, tmp_path, receiver):
    receiver.set("flapping", status=500)  # every other request fails
    # Half the requests failing opens the breaker (>= 50 % of the last 20): short open periods.
    srv = start(sluice_factory, tmp_path, {
        "s": webhook(receiver.url(), batch_max_messages=5, breaker_failures=1000,
                     breaker_open="50ms", breaker_open_max="100ms")})
    lines = [f"m{i}" for i in range(60)]
    for k in range(0, 60, 10):
        srv.publish_batch("t/a", lines[k:k + 10])
    assert receiver.wait(lambda r: len(r.delivered_payloads()) >= 60, timeout=20)
    assert receiver.delivered_payloads() == lines
    failed = [d for d in receiver.all() if d.status == 500]
    assert len(failed) >= 5
    # A retried batch is the same batch: a failed body is the next accepted one.
    for d in failed:
        nxt = next(x for x in receiver.all() if x.t > d.t and x.status == 200)
        assert nxt.body == d.body and nxt.headers["webhook-id"] == d.headers["webhook-id"]
    m = srv.wait_metric('sluice_sink_delivered_messages_total{sink="s"}', lambda v: v == 60)
    assert m.v('sluice_sink_retries_total{sink="s"}') == len(failed)


def test_413_on_a_batch_splits_it(sluice_factory, tmp_path, receiver):
    receiver.set("reject_id", reject="big-5", reject_status=413)
    srv = start(sluice_factory, tmp_path, {
        "s": webhook(receiver.url("/main"), batch_linger="100ms", dead_letter="dlq/s"),
        "d": webhook(receiver.url("/dlq"), topics="dlq/*")})
    lines = [f"ok-{i}" for i in range(5)] + ["big-5"] + [f"ok-{i}" for i in range(6, 10)]
    srv.publish_batch("t/a", lines)
    want = [x for x in lines if x != "big-5"]
    assert receiver.wait(lambda r: r.delivered_payloads("t/a") == want)
    assert receiver.wait(lambda r: len(r.delivered_payloads("dlq/s")) == 1)
    env = json.loads(receiver.delivered_payloads("dlq/s")[0])
    assert env["status"] == 413 and env["message"]["data"] == "big-5"
    # Halved until the one message was alone: more than one refused request, shrinking.
    refused = [len(d.envelopes()) for d in receiver.all() if d.status == 413]
    assert len(refused) >= 2 and refused == sorted(refused, reverse=True) and refused[-1] == 1


def test_302_is_not_followed_and_is_retried(sluice_factory, tmp_path, receiver):
    receiver.set("status", status=302)
    srv = start(sluice_factory, tmp_path, {"s": webhook(receiver.url(), breaker_failures=1000)})
    srv.publish("t/a", "x")
    assert receiver.wait(lambda r: len(r.all()) >= 3)
    assert all(d.path == "/hook" for d in receiver.all())  # never /redirected
    receiver.set("ok")
    assert receiver.wait(lambda r: r.delivered_payloads() == ["x"])
    assert all(d.path == "/hook" for d in receiver.all())
    assert srv.metrics().v('sluice_sink_retries_total{sink="s"}') >= 3


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_as_a_date(sluice_factory, tmp_path, receiver, status):
    # An HTTP date two seconds ahead of each answer (whole seconds: at least one away).
    def when():
        return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 2))
    receiver.set("status", status=status, retry_after=when)
    srv = start(sluice_factory, tmp_path, {
        "s": webhook(receiver.url(), retry_max="10s", breaker_failures=1000)})
    srv.publish("t/a", "x")
    assert receiver.wait(lambda r: len(r.all()) >= 2, timeout=10)
    receiver.set("ok")
    t = [d.t for d in receiver.all()[:2]]
    # Without Retry-After the backoff would be at most 20-200 ms.
    assert t[1] - t[0] >= 0.5, t
    assert receiver.wait(lambda r: r.delivered_payloads() == ["x"])


def test_reused_handles_start_fresh(sluice_factory, tmp_path, receiver):
    # One stream sends every request on one pooled curl handle (each of these answers ends
    # cleanly, so the handle goes back to the pool). Nothing of one answer may reach the next
    # request's outcome: a Retry-After, the start of a body, a 2xx seen in the headers.
    dlq = Receiver()
    try:
        receiver.set("script", script=[
            {"status": 503, "retry_after": 4},   # a, then its retry about 4 s later
            {"status": 200, "body": "y" * 600},  # a delivered, with a body past the 512 kept
            {"status": 500},                     # b: no Retry-After, so a short backoff
            {"status": 200},                     # b delivered
            {"status": 400, "body": "fresh"},    # c: poison, dead-lettered with this answer
            {"status": 200, "delay": 1.5},       # d: a slow 2xx, delivered once
        ])
        srv = start(sluice_factory, tmp_path, {
            "s": webhook(receiver.url(), retry_max="10s", breaker_failures=1000,
                         dead_letter="dlq/s"),
            "d": webhook(dlq.url("/dlq"), topics="dlq/*")})
        for i, p in enumerate(["a", "b", "c", "d", "e"]):
            srv.publish("t/a", p)
            assert receiver.wait(lambda r: len(r.all()) >= [2, 4, 5, 6, 7][i], timeout=20), \
                [(d.body, d.status) for d in receiver.all()]
        assert receiver.wait(lambda r: r.delivered_payloads() == ["a", "b", "d", "e"])
        t = [d.t for d in receiver.all()]
        assert t[1] - t[0] >= 3.0, t  # a's Retry-After was honoured
        assert t[3] - t[2] < 2.0, t   # b's retry did not inherit it (4 s)
        assert dlq.wait(lambda r: len(r.delivered_payloads("dlq/s")) == 1)
        env = json.loads(dlq.delivered_payloads("dlq/s")[0])
        assert env["message"]["data"] == "c" and env["status"] == 400
        assert env["answer"] == "fresh", env["answer"]  # not the end of an earlier answer
        # The slow 2xx was not cut short by the flags of the 2xx before it on the handle.
        assert sum(b'"d"' in d.body for d in receiver.all()) == 1
        srv.signal(signal.SIGTERM)
        assert srv.wait_exit(15) == 0
        # And it was one handle: every request ended cleanly, so none was made anew.
        line = [x for x in srv.logs().splitlines() if "sink stopped" in x and "sink=s " in x]
        assert line and "handles_made=1 " in line[0] + " ", line
    finally:
        dlq.close()


def test_sigterm_mid_backlog_keeps_what_was_acknowledged(sluice_factory, tmp_path, receiver):
    # A stream draining a backlog checkpoints its cursor at most every 100 ms; what it held
    # back is written at shutdown, so a clean restart sends nothing a 2xx already took.
    topics = {"t/*": {"durability": "lossless"}}
    data = tmp_path / "data"
    receiver.set("slow", delay=0.01)
    srv = start(sluice_factory, tmp_path, {"s": webhook(receiver.url(), format="raw")},
                topics=topics, data=data)
    srv.publish("t/a", "m0")
    srv.publish_batch("t/a", [f"m{i}" for i in range(1, 400)])
    assert receiver.wait(lambda r: len(r.ok()) >= 60, timeout=20)
    srv.signal(signal.SIGTERM)
    assert srv.wait_exit(15) == 0, srv.logs()
    first = [d.body.decode() for d in receiver.ok()]
    assert 60 <= len(first) < 400, len(first)  # stopped mid-backlog
    receiver.set("ok")
    start(sluice_factory, tmp_path, {"s": webhook(receiver.url(), format="raw")},
          topics=topics, data=data)
    assert receiver.wait(lambda r: len(r.ok()) >= 400, timeout=30), len(receiver.ok())
    every = [d.body.decode() for d in receiver.ok()]
    assert every[:len(first)] == first
    assert every[len(first):] == [f"m{i}" for i in range(len(first), 400)], \
        every[len(first):len(first) + 5]


def test_backlog_read_back_goes_in_full_batches(sluice_factory, tmp_path, receiver):
    """A stream draining a backlog from the log while it waits for a slot keeps reading ahead
    into its batch: with slots scarce, every request but a stream's first (the batch it held
    while the endpoint was down) and its last carries a full batch (here 64 x 16 KiB = 1 MiB),
    not one log read (256 KiB) or two."""
    topics = {"t/*": {"durability": "lossless", "max_bytes": "64KiB"}}
    receiver.set("status", status=503)
    srv = start(sluice_factory, tmp_path, {
        "s": webhook(receiver.url(), batch_max_messages=100, batch_max_bytes="1MiB",
                     max_in_flight=1, retry_initial="50ms", retry_max="100ms",
                     breaker_failures=1000)},
        topics=topics, server={"memory_limit": "256MiB"})
    n = 200
    for t in ("t/a", "t/b"):
        for start_i in range(0, n, 10):
            srv.publish_batch(t, [f"{t}:{i:04d}:" + "z" * 16370 for i in range(start_i, start_i + 10)])
    receiver.set("slow", delay=0.3)
    assert receiver.wait(lambda r: len(r.delivered_payloads()) >= 2 * n, timeout=60), \
        len(receiver.delivered_payloads())
    for t in ("t/a", "t/b"):
        got = [p for p in receiver.delivered_payloads() if p.startswith(t + ":")]
        assert [int(p.split(":")[1]) for p in got] == list(range(n)), t
        sizes = [len(d.envelopes()) for d in receiver.ok() if d.envelopes()[0]["topic"] == t]
        assert max(sizes) == 64, sizes
        small = [s for s in sizes[1:-1] if s < 64]
        assert not small, f"{t}: batches after the first and before the last: {sizes}"


def test_read_back_message_past_the_byte_cap_is_not_lost(sluice_factory, tmp_path, receiver):
    """A batch read back from the log that reaches batch_max_bytes: the message that did not
    fit is the next batch's first, not lost (it was once passed as a gap on a lossless
    topic)."""
    topics = {"t/*": {"durability": "lossless", "max_bytes": "16KiB"}}
    receiver.set("status", status=503)
    srv = start(sluice_factory, tmp_path, {
        "s": webhook(receiver.url(), batch_max_messages=100, batch_max_bytes="40KiB",
                     retry_initial="50ms", retry_max="100ms", breaker_failures=1000)},
        topics=topics)
    n = 60
    for i in range(0, n, 10):
        srv.publish_batch("t/a", [f"{j:04d}:" + "q" * 16000 for j in range(i, i + 10)])
    receiver.set("ok")
    assert receiver.wait(lambda r: len(r.delivered_payloads()) >= n, timeout=30), \
        len(receiver.delivered_payloads())
    got = [int(p.split(":")[0]) for p in receiver.delivered_payloads()]
    assert got == list(range(n))
    gaps = [e for d in receiver.ok() for e in d.envelopes() if e.get("sluice") == "gap"]
    assert not gaps, gaps
    sizes = [len(d.envelopes()) for d in receiver.ok()]
    assert max(sizes) == 2, sizes  # 2 x 16 KiB fit in 40 KiB, a third does not


def test_proxy_environment_is_not_used(sluice_factory, tmp_path, receiver, monkeypatch):
    """http_proxy and friends in sluice's environment are ignored: a proxy would make the
    private-address check see the proxy's address instead of the endpoint's (and the
    endpoint would be reached from wherever the proxy is)."""
    trap = socket.socket()
    trap.bind(("127.0.0.1", 0))
    trap.listen(16)
    trap.settimeout(0.2)
    proxy = f"http://127.0.0.1:{trap.getsockname()[1]}"
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.setenv(var, proxy)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    srv = start(sluice_factory, tmp_path, {"s": webhook(receiver.url())})
    srv.publish("t/a", "direct")
    assert receiver.wait(lambda r: r.delivered_payloads() == ["direct"], timeout=10), \
        receiver.delivered_payloads()
    with pytest.raises(socket.timeout):
        conn, _ = trap.accept()
        conn.close()
    trap.close()
