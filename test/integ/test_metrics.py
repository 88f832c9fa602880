"""GET /metrics: the series exist, have the right types, and move as the scenarios say."""

import re

from conftest import parse_metrics
from sluice_client import RawConn, SSEClient, wait_until

REQUIRED = {
    "sluice_connections": "gauge",
    'sluice_subscribers{transport="sse"}': "gauge",
    "sluice_connections_accepted_total": "counter",
    'sluice_connections_rejected_total{reason="max_connections"}': "counter",
    'sluice_connections_rejected_total{reason="per_ip"}': "counter",
    'sluice_connections_rejected_total{reason="budget"}': "counter",
    "sluice_topics": "gauge",
    "sluice_messages_published_total": "counter",
    "sluice_deliveries_total": "counter",
    "sluice_gap_messages_total": "counter",
    "sluice_memory_accounted_bytes": "gauge",
    "sluice_memory_limit_bytes": "gauge",
    "process_resident_memory_bytes": "gauge",
    "process_open_fds": "gauge",
}
for r in ["peer", "write_stall", "header_timeout", "idle_timeout", "overflow", "shutdown",
          "error", "protocol"]:
    REQUIRED[f'sluice_connections_closed_total{{reason="{r}"}}'] = "counter"
for r in ["budget", "too_large", "bad_topic", "max_topics", "bad_event"]:
    REQUIRED[f'sluice_publish_rejected_total{{reason="{r}"}}'] = "counter"
for r in ["evicted", "lag_hard", "lag_soft", "lag_age"]:
    REQUIRED[f'sluice_gaps_total{{reason="{r}"}}'] = "counter"
    REQUIRED[f'sluice_overflow_disconnects_total{{reason="{r}"}}'] = "counter"
for r in ["max_messages", "max_bytes", "max_age", "budget"]:
    REQUIRED[f'sluice_evictions_total{{reason="{r}"}}'] = "counter"


def test_required_series_present_with_types(sluice):
    sluice.get("/healthz")
    r = sluice.get("/metrics")
    assert r.status == 200
    assert r.headers.get("content-type", "").startswith("text/plain")
    text = r.body.decode()
    m = parse_metrics(text)
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    missing = [k for k in REQUIRED if k not in m]
    assert not missing, f"missing series: {missing}"
    for key, typ in REQUIRED.items():
        family = key.split("{")[0]
        assert types.get(family) == typ, f"# TYPE {family} is {types.get(family)}, want {typ}"
    assert m['sluice_http_responses_total{code="200"}'] >= 1
    assert m["sluice_memory_limit_bytes"] == 64 * 1024 * 1024


def test_counters_move_with_traffic(sluice):
    subs = [SSEClient(sluice.port, "/topics/mc") for _ in range(2)]
    for s in subs:
        s.read_retry()
    before = sluice.metrics()
    for i in range(5):
        sluice.publish("mc", f"m{i}")
    sluice.publish_batch("mc", ["x", "y", "z"])
    for s in subs:
        assert len(s.read_events(8)) == 8
    assert sluice.get("/nope").status == 404
    assert sluice.post("/topics/a//b", "x").status == 400
    after = sluice.metrics()

    def d(k):
        return after.v(k) - before.v(k)
    assert d("sluice_messages_published_total") == 8
    assert d("sluice_deliveries_total") == 16
    assert d('sluice_http_responses_total{code="202"}') == 6
    assert d('sluice_http_responses_total{code="404"}') == 1
    assert d('sluice_http_responses_total{code="400"}') == 1
    assert after.v('sluice_subscribers{transport="sse"}') == 2
    assert after.v("sluice_topics") == len(sluice.topics())
    for s in subs:
        s.close()
    wait_until(lambda: sluice.metrics().v('sluice_subscribers{transport="sse"}') == 0, 5,
               msg="subscriber gauge back to 0")


def test_connection_gauge_follows_open_connections(sluice_factory):
    srv = sluice_factory(server={"header_timeout": "10s"})
    base = srv.metrics()
    assert base.v("sluice_connections") == 1, "the scrape itself is the only connection"
    conns = [RawConn(srv.port) for _ in range(3)]
    wait_until(lambda: srv.metrics().v("sluice_connections") == 4, 3, msg="gauge counts 3 more")
    for c in conns:
        c.close()
    m = srv.wait_metric("sluice_connections", lambda v: v == 1, 3)
    assert m.v("sluice_connections_accepted_total") - \
        base.v("sluice_connections_accepted_total") >= 4
    assert m.v('sluice_connections_closed_total{reason="peer"}') - \
        base.v('sluice_connections_closed_total{reason="peer"}') >= 3


def test_connection_gauge_falls_when_the_socket_closes(sluice_factory):
    """The gauge falls when the socket closes, not at the end of the loop turn: a scrape handled
    in the same turn as closes sees as many connections as the process holds sockets."""
    import os
    import signal
    srv = sluice_factory(server={"header_timeout": "10s"})
    scraper = RawConn(srv.port)
    closing = [RawConn(srv.port) for _ in range(5)]

    def scrape():
        scraper.request("GET", "/metrics")
        r = scraper.read_response()
        assert r.status == 200
        m = parse_metrics(r.body.decode())
        return m["sluice_connections"], m["process_open_fds"]

    wait_until(lambda: scrape()[0] == 6, 3, msg="the scraper and five idle connections")
    gauge, fds = scrape()
    other_fds = fds - gauge
    # Stopped, the server sees the five FINs and the scrape in one loop turn.
    os.kill(srv.pid, signal.SIGSTOP)
    try:
        for c in closing:
            c.close()
        scraper.request("GET", "/metrics")
    finally:
        os.kill(srv.pid, signal.SIGCONT)
    r = scraper.read_response()
    assert r.status == 200
    m = parse_metrics(r.body.decode())
    assert m["process_open_fds"] - m["sluice_connections"] == other_fds, \
        f"gauge {m['sluice_connections']} against {m['process_open_fds'] - other_fds} sockets"
    wait_until(lambda: scrape() == (1, other_fds + 1), 3, msg="the five closes are counted")


def test_process_metrics_match_proc(sluice):
    m = sluice.metrics()
    fds = sluice.fd_count()
    assert abs(m.v("process_open_fds") - fds) <= 3, (m.v("process_open_fds"), fds)
    rss = sluice.rss_bytes()
    assert 0.5 * rss <= m.v("process_resident_memory_bytes") <= 2 * rss, \
        (m.v("process_resident_memory_bytes"), rss)


def test_memory_accounted_moves_with_retention(sluice):
    before = sluice.metrics().v("sluice_memory_accounted_bytes")
    for _ in range(10):
        sluice.publish("memacct", "z" * 100_000)
    after = sluice.metrics().v("sluice_memory_accounted_bytes")
    assert after - before >= 10 * 100_000, (before, after)
    assert after <= 64 * 1024 * 1024
