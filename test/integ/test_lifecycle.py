"""Connection lifecycle: header and idle timeouts, connection churn without leaks, graceful
shutdown on SIGTERM, health checks under load (FAILURES.md #1, #6)."""

import random
import signal
import threading
import time

from sluice_client import Closed, Publisher, RawConn, SSEClient, wait_until


def closed_total(m):
    return sum(v for k, v in m.items() if k.startswith("sluice_connections_closed_total"))


def test_slowloris_closed_after_header_timeout(sluice_factory):
    srv = sluice_factory(server={"header_timeout": "1s"})
    before = srv.metrics()
    c = RawConn(srv.port)
    req = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 40 + b"\r\n\r\n"
    t0 = time.monotonic()
    closed_at = None
    got = b""
    for i in range(len(req)):
        try:
            c.send(req[i:i + 1])
        except (BrokenPipeError, ConnectionResetError):
            closed_at = time.monotonic()
            break
        try:
            c._fill(time.monotonic() + 1.0)  # wait up to 1 s for the server to say something
            got += c.buf
            c.buf = b""
        except TimeoutError:
            pass
        except Closed:
            closed_at = time.monotonic()
            break
        if time.monotonic() - t0 > 8:
            break
    c.close()
    assert closed_at is not None, "a 1-byte-per-second request was never closed"
    assert closed_at - t0 < 4.0, f"closed only after {closed_at - t0:.1f}s with header_timeout=1s"
    assert b"HTTP/1.1 200" not in got
    srv.wait_metric('sluice_connections_closed_total{reason="header_timeout"}',
                    lambda v: v == before.v(
                        'sluice_connections_closed_total{reason="header_timeout"}') + 1, 3)


def test_connect_and_say_nothing_closed_after_header_timeout(sluice_factory):
    srv = sluice_factory(server={"header_timeout": "1s"})
    c = RawConn(srv.port)
    t0 = time.monotonic()
    assert c.wait_closed(4), "a silent connection outlived header_timeout"
    assert time.monotonic() - t0 < 4
    c.close()


def test_idle_keepalive_closed_after_idle_timeout_but_subscriber_kept(sluice_factory):
    srv = sluice_factory(server={"idle_timeout": "1s", "header_timeout": "5s"},
                         topics={"*": {"heartbeat": "0"}})
    before = srv.metrics()
    sub = srv.sse("/topics/idle")
    sub.read_retry()
    c = RawConn(srv.port)
    c.request("GET", "/healthz")
    assert c.read_response().status == 200
    t0 = time.monotonic()
    assert c.wait_closed(4), "an idle keep-alive connection outlived idle_timeout"
    assert time.monotonic() - t0 >= 0.5
    c.close()
    srv.wait_metric('sluice_connections_closed_total{reason="idle_timeout"}',
                    lambda v: v == before.v(
                        'sluice_connections_closed_total{reason="idle_timeout"}') + 1, 3)
    time.sleep(1.5)
    # the subscriber, silent for 3 s, is not an idle connection
    mid = srv.publish("idle", "still here")
    e = sub.read_event(3)
    assert e["id"] == mid
    sub.close()


CYCLES = 5000


def churn_one(port, i, rng):
    mode = i % 7
    try:
        if mode == 0:  # SSE subscribe, then close
            s = SSEClient(port, "/topics/churn", timeout=5)
            s.read_retry()
            s.close()
        elif mode == 1:  # a plain request on keep-alive, then close
            c = RawConn(port)
            c.request("GET", "/healthz")
            assert c.read_response().status == 200
            c.close()
        elif mode == 2:  # connect and close at once
            c = RawConn(port)
            c.close()
        elif mode == 3:  # half a request, then RST
            c = RawConn(port)
            c.send(b"GET /topics/churn HTTP/1.1\r\nHost: x\r\nAcc")
            c.set_linger_rst()
            c.close()
        elif mode == 4:  # SSE subscriber reset
            s = SSEClient(port, "/topics/churn", timeout=5)
            s.read_retry()
            s.set_linger_rst()
            s.close()
        elif mode == 5:  # publish and leave without reading the answer
            c = RawConn(port)
            c.request("POST", "/topics/churn", body="x" * rng.randint(1, 200))
            c.close()
        else:  # a pipelined pair, read one answer, RST
            c = RawConn(port)
            c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
            c.read_response()
            c.set_linger_rst()
            c.close()
    except (ConnectionResetError, BrokenPipeError, Closed):
        pass  # a reset racing our own close is fine; the server's books are what we test


def test_connection_churn_leaves_no_leaks(sluice_factory):
    srv = sluice_factory(topics={"*": {"max_messages": 100}})
    srv.publish("churn", "warm")
    time.sleep(0.3)
    base_fds = srv.fd_count()
    before = srv.metrics()

    errors = []

    def worker(k):
        rng = random.Random(k)
        try:
            for i in range(k, CYCLES, 4):
                churn_one(srv.port, i, rng)
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads), "churn workers hung"
    assert not errors, errors[:5]

    # the scrape itself is the one open connection
    m = srv.wait_metric("sluice_connections", lambda v: v == 1, timeout=15)
    assert m.v('sluice_subscribers{transport="sse"}') == 0
    assert m.v("sluice_connections_accepted_total") - \
        before.v("sluice_connections_accepted_total") >= CYCLES
    # every accepted connection is either open (this scrape) or counted closed exactly once
    assert m.v("sluice_connections_accepted_total") - closed_total(m) == \
        m.v("sluice_connections"), "gauge and counters disagree"
    wait_until(lambda: srv.fd_count() == base_fds, 10,
               msg=f"fd count back to {base_fds} (now {srv.fd_count()})")
    assert srv.topics()["churn"]["readers"] == 0


def test_sigterm_subscribers_get_retry_and_shutdown(sluice_factory):
    srv = sluice_factory(server={"shutdown_drain": "3s", "sse_retry": "1234ms"})
    subs = [srv.sse("/topics/st"), srv.sse("/topics/st2"), srv.sse("/sse?topic=st&topic=st2")]
    for s in subs:
        assert s.read_retry() == "1234"
    for i in range(3):
        srv.publish("st", f"m{i}")
    t0 = time.monotonic()
    srv.signal(signal.SIGTERM)
    for s in subs:
        blocks = s.read_all_until_closed(timeout=5)
        items = []
        for b in blocks:
            for name, value in b["fields"]:
                items.append((name, value))
            for c in b["comments"]:
                items.append(("comment", c))
        retry_idx = [i for i, (n, v) in enumerate(items) if n == "retry" and v == "1234"]
        shut_idx = [i for i, (n, v) in enumerate(items) if n == "comment" and v == "shutdown"]
        assert shut_idx, f"no ': shutdown' comment before close: {blocks}"
        assert retry_idx and retry_idx[0] < shut_idx[0], f"no retry: before shutdown: {blocks}"
        assert not [n for n, _ in items[shut_idx[0]:] if n == "data"], "data after shutdown"
        delivered = [b["data"] for b in blocks if b["data"] is not None]
        want = [] if s.path == "/topics/st2" else ["m0", "m1", "m2"]
        assert delivered == want, "messages owed were not sent before shutdown"
    rc = srv.wait_exit(5)
    elapsed = time.monotonic() - t0
    assert rc == 0, f"exit code {rc} after SIGTERM"
    assert elapsed < 3.0 + 1.0, f"took {elapsed:.1f}s with readers that read everything"
    for s in subs:
        s.close()


def test_sigterm_with_stalled_subscriber_exits_within_drain(sluice_factory):
    srv = sluice_factory(server={"shutdown_drain": "2s", "write_stall_timeout": "60s"},
                         topics={"*": {"max_messages": 100}})
    stalled = srv.sse("/topics/ss", rcvbuf=4096)
    stalled.read_retry()
    ok = srv.sse("/topics/ss2")
    ok.read_retry()
    pub = Publisher(srv.port)
    for i in range(400):
        pub.publish("ss", "s" * 16000)
    pub.close()
    idle_http = RawConn(srv.port)  # an idle keep-alive client must not hold shutdown either
    idle_http.request("GET", "/healthz")
    assert idle_http.read_response().status == 200
    t0 = time.monotonic()
    srv.signal(signal.SIGTERM)
    blocks = ok.read_all_until_closed(timeout=5)
    assert any("shutdown" in b["comments"] for b in blocks)
    rc = srv.wait_exit(2 + 2)
    elapsed = time.monotonic() - t0
    assert rc == 0, f"exit code {rc} (None = still running {elapsed:.1f}s after SIGTERM)"
    assert elapsed < 4.0
    assert idle_http.wait_closed(1)
    stalled.close()
    ok.close()


def test_healthz_fast_with_200_stalled_readers(sluice_factory):
    srv = sluice_factory(server={"write_stall_timeout": "60s"},
                         topics={"*": {"max_messages": 100}})
    stalled = []
    for _ in range(200):
        s = srv.sse("/topics/busy", rcvbuf=4096)
        s.read_retry()
        stalled.append(s)
    m = srv.metrics()
    assert m.v('sluice_subscribers{transport="sse"}') == 200
    pub = Publisher(srv.port)
    for i in range(50):
        pub.publish("busy", "b" * 4000)
    pub.close()
    worst = 0.0
    for _ in range(20):
        t = time.monotonic()
        r = srv.get("/healthz", timeout=2)
        worst = max(worst, time.monotonic() - t)
        assert r.status == 200
    assert worst < 1.0, f"/healthz took {worst:.2f}s with 200 stalled readers"
    t = time.monotonic()
    srv.publish("other", "not blocked")
    assert time.monotonic() - t < 1.0
    assert srv.topics()["busy"]["readers"] == 200
    for s in stalled:
        s.close()
    srv.wait_metric('sluice_subscribers{transport="sse"}', lambda v: v == 0, 10)
