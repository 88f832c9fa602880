"""Every limit crossed, with the status it earns (docs/protocol.md, error table)."""

import ipaddress
import socket

import pytest

from conftest import free_port, parse_metrics
from sluice_client import RawConn, SSEClient, wait_until

LIMITS = {"max_url_bytes": 1024, "max_header_bytes": 2048, "max_message_bytes": 1024,
          "max_body_bytes": 4096, "max_topic_name": 32, "max_topics_per_connection": 2}


@pytest.fixture
def srv(sluice_factory):
    return sluice_factory(limits=LIMITS)


def assert_error(r, status, code):
    assert r.status == status, f"expected {status} {code}, got {r.status} {r.body!r}"
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    assert body.get("error") == code, body
    assert isinstance(body.get("message"), str), body


MALFORMED = [b"GARBAGE\r\n\r\n", b"GET\r\n\r\n", b"GET /healthz HTTQ/1.1\r\n\r\n",
             b"\x00\x01\x02\x03\r\n\r\n", b"GET /healthz HTTP/1.1\r\nNo colon here\r\n\r\n",
             b"POST /topics/x HTTP/1.1\r\nContent-Length: abc\r\n\r\n"]


def test_malformed_request_is_400_and_closes(srv):
    before = srv.metrics()
    for raw in MALFORMED:
        c = RawConn(srv.port)
        c.send(raw)
        r = c.read_response(5)
        assert_error(r, 400, "bad_request")
        assert c.wait_closed(5), f"connection stayed open after 400 for {raw!r}"
        c.close()
    after = srv.metrics()
    assert after.v('sluice_http_responses_total{code="400"}') - \
        before.v('sluice_http_responses_total{code="400"}') == len(MALFORMED)
    assert after.v('sluice_connections_closed_total{reason="protocol"}') - \
        before.v('sluice_connections_closed_total{reason="protocol"}') >= len(MALFORMED)


BAD_TOPICS = ["a//b", "/lead", "trail/", "a%20b", "a*b", "a:b", "a+b", "%C3%A9", "a%5Cb",
              "x" * 33, "a/./b%00", "a@b", "a,b"]


def test_bad_topic_names(srv):
    before = srv.metrics().v('sluice_publish_rejected_total{reason="bad_topic"}')
    for name in BAD_TOPICS:
        assert_error(srv.post(f"/topics/{name}", "x"), 400, "bad_topic")
        sub = SSEClient(srv.port, f"/topics/{name}")
        assert sub.status == 400, (name, sub.status)
        assert sub.response.json()["error"] == "bad_topic"
        sub.close()
        sub = SSEClient(srv.port, f"/sse?topic=ok&topic={name}")
        assert sub.status == 400, (name, sub.status)
        assert sub.response.json()["error"] == "bad_topic"
        sub.close()
    after = srv.metrics().v('sluice_publish_rejected_total{reason="bad_topic"}')
    assert after - before == len(BAD_TOPICS)
    assert not any(n for n in srv.topics() if n not in ("ok",)), \
        f"a bad name created a topic: {list(srv.topics())}"


def test_empty_topic_name(srv):
    sub = SSEClient(srv.port, "/sse?topic=")
    assert sub.status == 400
    assert sub.response.json()["error"] == "bad_topic"
    sub.close()


def test_good_topic_names_at_the_boundary(srv):
    for name in ["x" * 32, "Az09._~-", "a/b/c", "a.b/c-d/e_f~g", "-"]:
        r = srv.post(f"/topics/{name}", "x")
        assert r.status == 202, (name, r)
    assert set(srv.topics()) >= {"x" * 32, "Az09._~-", "a/b/c", "a.b/c-d/e_f~g"}


def test_not_found(srv):
    for path in ["/", "/nope", "/topicsx", "/healthz/x", "/metrics/x", "/sse/x"]:
        assert_error(srv.get(path), 404, "not_found")


@pytest.mark.parametrize("method,path,must_allow", [
    ("DELETE", "/topics/x", {"GET", "POST"}),
    ("PUT", "/topics/x", {"GET", "POST"}),
    ("PUT", "/healthz", {"GET"}),
    ("POST", "/metrics", {"GET"}),
    ("POST", "/sse?topic=a", {"GET"}),
    ("DELETE", "/topics", {"GET"}),
])
def test_method_not_allowed_has_allow_header(srv, method, path, must_allow):
    r = srv.request(method, path, body="" if method in ("PUT", "POST") else None)
    assert_error(r, 405, "method_not_allowed")
    allow = {m.strip().upper() for m in r.headers.get("allow", "").split(",") if m.strip()}
    assert must_allow <= allow, f"Allow: {r.headers.get('allow')!r}"
    assert method not in allow


def test_not_acceptable(srv):
    assert_error(srv.get("/topics/na"), 406, "not_acceptable")
    assert_error(srv.get("/topics/na", {"Accept": "application/json"}), 406, "not_acceptable")
    sub = SSEClient(srv.port, "/topics/na")  # with the right Accept it works
    assert sub.status == 200
    sub.close()


def test_message_too_large(srv):
    before = srv.metrics().v('sluice_publish_rejected_total{reason="too_large"}')
    assert srv.post("/topics/big", "x" * 1024).status == 202
    assert_error(srv.post("/topics/big", "x" * 1025), 413, "too_large")
    after = srv.metrics().v('sluice_publish_rejected_total{reason="too_large"}')
    assert after - before == 1
    assert srv.topics()["big"]["messages"] == 1


def test_ndjson_body_too_large(srv):
    ok = "".join(f"{i:07d}\n" for i in range(500))  # 4000 bytes
    r = srv.post("/topics/nd", ok, {"Content-Type": "application/x-ndjson"})
    assert r.status == 202, r
    big = "".join(f"{i:07d}\n" for i in range(625))  # 5000 bytes
    assert_error(srv.post("/topics/nd", big, {"Content-Type": "application/x-ndjson"}), 413,
                 "too_large")
    assert srv.topics()["nd"]["messages"] == 500


def test_chunked_body_too_large(srv):
    c = RawConn(srv.port)
    c.send(b"POST /topics/chunky HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
           b"".join(b"1f4\r\n" + b"z" * 500 + b"\r\n" for _ in range(3)) + b"0\r\n\r\n")
    assert_error(c.read_response(5), 413, "too_large")
    c.close()
    assert "chunky" not in srv.topics() or srv.topics()["chunky"]["messages"] == 0


def test_expect_continue_with_too_large_length_gets_413_without_body(srv):
    c = RawConn(srv.port)
    c.send(b"POST /topics/exp HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
           b"Expect: 100-continue\r\n\r\n")
    r = c.read_response(5)
    assert r.status != 100, "the server invited a body it will refuse"
    assert_error(r, 413, "too_large")
    c.close()


def test_uri_too_long(srv):
    assert_error(srv.get("/topics/x?pad=" + "p" * 2000, {"Accept": "text/event-stream"}), 414,
                 "uri_too_long")
    assert_error(srv.post("/topics/" + "a" * 1100, "x"), 414, "uri_too_long")


def test_headers_too_large(srv):
    assert_error(srv.get("/healthz", {"X-Pad": "p" * 3000}), 431, "headers_too_large")
    many = [(f"X-H{i}", "v" * 20) for i in range(100)]
    assert_error(srv.get("/healthz", many), 431, "headers_too_large")
    assert srv.get("/healthz", {"X-Pad": "p" * 1000}).status == 200


def test_too_many_topics_per_connection(srv):
    sub = SSEClient(srv.port, "/sse?topic=a&topic=b&topic=c")
    assert sub.status == 400, sub.status
    # protocol.md: more topics than max_topics_per_connection is 400 too_many_topics
    assert sub.response.json()["error"] == "too_many_topics", sub.response.json()
    sub.close()
    sub = SSEClient(srv.port, "/sse?topic=a&topic=b")
    assert sub.status == 200
    sub.close()


def test_sse_without_topic_is_bad_query(srv):
    sub = SSEClient(srv.port, "/sse")
    assert sub.status == 400
    assert sub.response.json()["error"] == "bad_query"
    sub.close()


def keepalive_ok(port, source=None, host="127.0.0.1"):
    c = RawConn(port, host=host, source=source)
    c.request("GET", "/healthz")
    r = c.read_response(5)
    assert r.status == 200, r
    return c


def test_max_connections(sluice_factory):
    srv = sluice_factory(server={"header_timeout": "10s", "idle_timeout": "30s"},
                         limits={"max_connections": 5})
    held = [keepalive_ok(srv.port) for _ in range(5)]
    extra = RawConn(srv.port)
    extra.request("GET", "/healthz")
    r = extra.read_response(5)
    assert_error(r, 503, "over_capacity")
    assert "retry-after" in r.headers
    assert extra.wait_closed(5), "a rejected connection must be closed after the 503"
    extra.close()
    for c in held:  # the held connections still work
        c.request("GET", "/healthz")
        assert c.read_response(5).status == 200
        c.close()
    wait_until(lambda: srv.get("/healthz").status == 200, 5)
    m = srv.metrics()
    assert m.v('sluice_connections_rejected_total{reason="max_connections"}') >= 1


def test_max_connections_per_ip(sluice_factory):
    srv = sluice_factory(server={"header_timeout": "10s", "idle_timeout": "30s"},
                         limits={"max_connections_per_ip": 3})
    held = [keepalive_ok(srv.port) for _ in range(3)]
    extra = RawConn(srv.port)
    extra.request("GET", "/healthz")
    r = extra.read_response(5)
    assert_error(r, 503, "over_capacity")
    assert "retry-after" in r.headers
    assert extra.wait_closed(5)
    extra.close()
    # another address is not affected
    other = keepalive_ok(srv.port, source="127.0.0.2")
    other.request("GET", "/metrics")
    m = other.read_response(5)
    assert m.status == 200
    assert 'sluice_connections_rejected_total{reason="per_ip"}' in m.body.decode()
    from conftest import parse_metrics
    assert parse_metrics(m.body.decode())[
        'sluice_connections_rejected_total{reason="per_ip"}'] >= 1
    other.close()
    for c in held:
        c.close()
    wait_until(lambda: srv.get("/healthz").status == 200, 5)


def ipv6_loopback_works():
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.bind(("::1", 0))
        s.close()
        return True
    except OSError:
        return False


def other_local_ipv6():
    """A local IPv6 address that is not ::1 nor link-local (from /proc/net/if_inet6), or None."""
    try:
        lines = open("/proc/net/if_inet6").read().split()
    except OSError:
        return None
    for i in range(0, len(lines) - 5, 6):
        raw, scope = lines[i], lines[i + 3]
        if scope != "00":  # global scope only
            continue
        addr = ipaddress.IPv6Address(bytes.fromhex(raw))
        if not addr.is_loopback and not addr.is_link_local:
            return str(addr)
    return None


def refused_per_ip(port, host):
    c = RawConn(port, host=host)
    c.request("GET", "/healthz")
    r = c.read_response(5)
    c.close()
    return r.status == 503 and r.json()["error"] == "over_capacity"


def test_max_connections_per_ip_over_ipv6(sluice_factory):
    """A dual-stack listener ([::]): IPv6 peers are limited per address, IPv4 peers (seen as
    ::ffff:a.b.c.d) per IPv4 address, and neither counts against the other."""
    if not ipv6_loopback_works():
        pytest.skip("no IPv6 loopback")
    port = free_port()
    srv = sluice_factory(server={"listen": f"[::]:{port}", "header_timeout": "10s",
                                 "idle_timeout": "30s"},
                         limits={"max_connections_per_ip": 2}, port=port)
    held6 = [keepalive_ok(srv.port, host="::1") for _ in range(2)]
    assert refused_per_ip(srv.port, "::1"), "a third connection from ::1 must be refused"
    held4 = [keepalive_ok(srv.port) for _ in range(2)]  # 127.0.0.1 has its own count
    assert refused_per_ip(srv.port, "127.0.0.1")
    for c in held4[1:]:
        c.close()
    wait_until(lambda: not refused_per_ip(srv.port, "127.0.0.1"), 5)
    held4[0].request("GET", "/metrics")
    m = held4[0].read_response(5)
    assert parse_metrics(m.body.decode())[
        'sluice_connections_rejected_total{reason="per_ip"}'] >= 2
    for c in held6 + held4[:1]:
        c.close()
    wait_until(lambda: not refused_per_ip(srv.port, "::1"), 5)


@pytest.mark.parametrize("prefix,grouped", [(0, True), (128, False)])
def test_ipv6_prefix_groups_addresses(sluice_factory, prefix, grouped):
    """ipv6_prefix decides which IPv6 peers share one per-IP count. The host has two IPv6
    addresses in different /64s (::1 and a global one), so a prefix of 0 puts them together and
    128 (or the default 64) keeps them apart; the /64 arithmetic itself is unit-tested."""
    other = other_local_ipv6()
    if not ipv6_loopback_works() or other is None:
        pytest.skip("needs ::1 and another local IPv6 address")
    port = free_port()
    srv = sluice_factory(server={"listen": f"[::]:{port}", "header_timeout": "10s",
                                 "idle_timeout": "30s"},
                         limits={"max_connections_per_ip": 2, "ipv6_prefix": prefix}, port=port)
    held = [keepalive_ok(srv.port, host="::1") for _ in range(2)]
    assert refused_per_ip(srv.port, other) == grouped, \
        f"ipv6_prefix={prefix}: {other} {'shares' if grouped else 'does not share'} ::1's count"
    assert not refused_per_ip(srv.port, "127.0.0.1"), "IPv4 peers never share IPv6 counts"
    for c in held:
        c.close()
    wait_until(lambda: not refused_per_ip(srv.port, other), 5)


def test_memory_budget_refuses_what_cannot_fit(sluice_factory):
    srv = sluice_factory(server={"memory_limit": "1MiB"},
                         limits={"max_message_bytes": "2MiB", "max_body_bytes": "4MiB"})
    before = srv.metrics()
    r = srv.post("/topics/huge", "h" * (1536 * 1024))
    assert_error(r, 503, "over_capacity")
    assert "retry-after" in r.headers
    after = srv.metrics()
    assert after.v('sluice_publish_rejected_total{reason="budget"}') - \
        before.v('sluice_publish_rejected_total{reason="budget"}') == 1
    assert after.v("sluice_memory_limit_bytes") == 1024 * 1024
    assert after.v("sluice_memory_accounted_bytes") <= 1024 * 1024
    assert srv.publish("small", "fits")  # the server is fine afterwards


def test_memory_budget_evicts_oldest_across_topics(sluice_factory):
    srv = sluice_factory(server={"memory_limit": "1MiB"})
    before = srv.metrics()
    n = 40
    for i in range(n):
        r = srv.post(f"/topics/b{i:02d}", "m" * (64 * 1024))
        assert r.status == 202, f"publish {i} refused although older messages were evictable: {r}"
    m = srv.metrics()
    assert m.v('sluice_evictions_total{reason="budget"}') > \
        before.v('sluice_evictions_total{reason="budget"}')
    assert m.v("sluice_memory_accounted_bytes") <= 1024 * 1024
    topics = srv.topics()
    retained = [topics[f"b{i:02d}"]["messages"] if f"b{i:02d}" in topics else 0
                for i in range(n)]
    assert retained[-1] == 1, "the newest message must be retained"
    assert retained[0] == 0, "the oldest message must have been evicted"
    k = retained.index(1)
    assert retained[k:] == [1] * (n - k), f"eviction was not oldest-first: {retained}"
    # the evicted topic really is empty for a reader
    sub = SSEClient(srv.port, "/topics/b00?from=oldest")
    sub.read_retry()
    assert sub.no_event_within(0.3)
    sub.close()


def test_max_topics(sluice_factory):
    srv = sluice_factory(limits={"max_topics": 3})
    before = srv.metrics()
    for t in ("t1", "t2", "t3"):
        srv.publish(t, "x")
    r = srv.post("/topics/t4", "x")
    assert_error(r, 503, "over_capacity")
    assert "retry-after" in r.headers
    sub = SSEClient(srv.port, "/topics/t5")
    assert sub.status == 503
    assert "retry-after" in sub.headers
    sub.close()
    assert srv.publish("t1", "still fine")
    after = srv.metrics()
    assert after.v('sluice_publish_rejected_total{reason="max_topics"}') - \
        before.v('sluice_publish_rejected_total{reason="max_topics"}') >= 1
    assert after.v("sluice_topics") == 3
    assert set(srv.topics()) == {"t1", "t2", "t3"}


def test_memory_budget_refuses_only_when_nothing_is_evictable(sluice_factory):
    """Messages pinned by stalled readers' in-flight writes cannot be evicted: once they fill
    the budget, publishing is refused (503) instead of growing; when the readers go away the
    memory comes back. A fast reader under the same load never causes a refusal.

    Sizes: S = 1 MB messages, budget 2.5 S of which 1.1 S is the pool for request bodies. One
    publish needs S outside the pool, which fits once older messages are evicted; with a
    stalled reader pinning a message, S + S no longer fits."""
    srv = sluice_factory(server={"memory_limit": "2560KiB", "write_stall_timeout": "60s"},
                         limits={"max_message_bytes": "1MiB", "max_body_bytes": "2MiB",
                                 "max_pending_bytes": "1100KiB"})
    big = "p" * 1_000_000

    # A: a fast reader; every publish evicts older messages and succeeds
    fast = SSEClient(srv.port, "/topics/pinfast")
    fast.read_retry()
    for i in range(12):
        r = srv.post("/topics/pinfast", big)
        assert r.status == 202, f"publish {i} refused with only a fast reader: {r}"
        assert fast.read_event(10)["data"] == big
    fast.close()

    # B: two stalled readers on two topics pin what their writes hold
    before = srv.metrics()
    stalled = []
    for t in ("pin1", "pin2"):
        s = SSEClient(srv.port, f"/topics/{t}", rcvbuf=4096)
        s.read_retry()
        stalled.append(s)
    statuses = []
    for i in range(24):
        r = srv.post(f"/topics/pin{1 + i % 2}", big)
        statuses.append(r.status)
        if r.status != 202:
            break
    assert statuses[-1] == 503, f"memory pinned by stalled readers never refused: {statuses}"
    # the first publish finds nothing pinned, so it must fit
    assert set(statuses[:-1]) == {202} and len(statuses) >= 2, \
        f"refused although nothing was pinned yet: {statuses}"
    assert_error(r, 503, "over_capacity")
    assert "retry-after" in r.headers
    m = srv.metrics()
    assert m.v("sluice_memory_accounted_bytes") <= 2560 * 1024
    assert m.v('sluice_publish_rejected_total{reason="budget"}') > \
        before.v('sluice_publish_rejected_total{reason="budget"}')
    assert srv.get("/healthz").status == 200
    for s in stalled:
        s.set_linger_rst()
        s.close()
    wait_until(lambda: srv.post("/topics/pin1", big).status == 202, 5,
               msg="publishing works again once the stalled readers are gone")


# -- durable cursors (docs/protocol.md "Durable readers") ---------------------------------------

LOSSLESS_TOPICS = [("ll-*", {"durability": "lossless"})]


def durable_sse(srv, topic, name):
    """Opens a durable SSE subscription; returns the client (status not checked)."""
    return SSEClient(srv.port, f"/topics/{topic}?durable={name}")


def cursor_names(srv, topic):
    r = srv.get(f"/topics/{topic}/cursors")
    assert r.status == 200, r
    return sorted(c["name"] for c in r.json()["cursors"])


def assert_too_many_cursors(status, response, headers):
    assert status == 409, f"expected 409 too_many_cursors, got {status} {response}"
    assert response.json()["error"] == "too_many_cursors", response.json()
    assert "retry-after" not in headers, "waiting alone frees no cursor: no Retry-After"


def test_max_cursors_per_topic_and_total(sluice_factory):
    from ws_client import WSConn
    srv = sluice_factory(limits={"max_cursors_per_topic": 2, "max_cursors": 3},
                         topics=LOSSLESS_TOPICS)
    before = srv.metrics()
    a = durable_sse(srv, "ll-a", "c1")
    assert a.status == 200, a.response
    w = WSConn(srv.port, "/topics/ll-a?durable=c2")
    assert w.status == 101 and w.ok, w.response
    # the topic is at its limit: a third name is refused over SSE and over WebSocket
    s = durable_sse(srv, "ll-a", "c3")
    assert_too_many_cursors(s.status, s.response, s.headers)
    s.close()
    x = WSConn(srv.port, "/topics/ll-a?durable=c3")
    assert_too_many_cursors(x.status, x.response, x.headers)
    x.close()
    # an existing name is never refused, connected or not
    a.close()
    again = durable_sse(srv, "ll-a", "c1")
    assert again.status == 200, again.response
    again.close()
    second = WSConn(srv.port, "/topics/ll-a?durable=c2")
    assert second.status == 101 and second.ok, second.response
    second.close()
    w.close()
    assert cursor_names(srv, "ll-a") == ["c1", "c2"]
    # another topic has its own per-topic limit, but the server-wide one is reached at 3
    b = durable_sse(srv, "ll-b", "x")
    assert b.status == 200, b.response
    b.close()
    s = durable_sse(srv, "ll-c", "y")
    assert_too_many_cursors(s.status, s.response, s.headers)
    s.close()
    assert cursor_names(srv, "ll-c") == []
    # plain subscriptions are not affected by either limit
    plain = SSEClient(srv.port, "/topics/ll-a")
    assert plain.status == 200
    plain.close()
    m = srv.metrics()
    assert m.v("sluice_durable_cursors") == 3
    assert m.v('sluice_cursors_rejected_total{reason="per_topic"}') - \
        before.v('sluice_cursors_rejected_total{reason="per_topic"}') == 2
    assert m.v('sluice_cursors_rejected_total{reason="total"}') - \
        before.v('sluice_cursors_rejected_total{reason="total"}') == 1
    assert m.v('sluice_http_responses_total{code="409"}') - \
        before.v('sluice_http_responses_total{code="409"}') == 3
    # deleting a cursor makes room again
    assert srv.request("DELETE", "/topics/ll-a/cursors/c2").status == 204
    s = durable_sse(srv, "ll-a", "c3")
    assert s.status == 200, s.response
    s.close()
    assert cursor_names(srv, "ll-a") == ["c1", "c3"]
    assert srv.metrics().v("sluice_durable_cursors") == 3


def test_recovered_cursors_count_but_are_never_dropped(sluice_factory):
    from lossless_util import restart, start
    srv = start(sluice_factory, topics=LOSSLESS_TOPICS, limits={"max_cursors_per_topic": 3})
    assert srv.publish("ll-r", "m")  # a log with a segment (an empty one is another test's)
    for name in ("r1", "r2", "r3"):
        s = durable_sse(srv, "ll-r", name)
        assert s.status == 200, s.response
        s.close()
    wait_until(lambda: srv.metrics().v("sluice_durable_cursors") == 3, 5)
    # the limit is lowered below what is on disk: every cursor comes back
    srv = restart(sluice_factory, srv, limits={"max_cursors_per_topic": 1, "max_cursors": 2})
    assert cursor_names(srv, "ll-r") == ["r1", "r2", "r3"]
    assert srv.metrics().v("sluice_durable_cursors") == 3
    s = durable_sse(srv, "ll-r", "r2")  # existing: resumes
    assert s.status == 200, s.response
    s.close()
    s = durable_sse(srv, "ll-r", "r4")  # new: over both limits
    assert_too_many_cursors(s.status, s.response, s.headers)
    s.close()
    assert srv.metrics().v('sluice_cursors_rejected_total{reason="per_topic"}') == 1
    assert cursor_names(srv, "ll-r") == ["r1", "r2", "r3"]
