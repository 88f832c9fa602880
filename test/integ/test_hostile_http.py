"""Hostile clients (docs/protocol.md "Errors", "Publishing", "Browsers and CORS"): requests
that other parsers on the path could read differently, forged control events, cross-site
requests, and resume points the server cannot have issued. Each test crosses the line and
checks that nothing was executed and the server kept its framing."""

import json

import pytest

from sluice_client import RawConn, SSEClient, parse_id, wait_until
from ws_client import CONTROL_PREFIX, OP_TEXT, WSConn

LIMITS = {"max_header_bytes": 2048}


@pytest.fixture
def srv(sluice_factory):
    return sluice_factory(limits=LIMITS)


def assert_error(r, status, code):
    assert r.status == status, f"expected {status} {code}, got {r.status} {r.body!r}"
    assert r.json()["error"] == code, r.body


def head_of(srv, topic):
    """The head id of a topic, or None when it has no message or does not exist."""
    t = srv.topics().get(topic)
    return t["head"] if t else None


# ---- HTTP framing --------------------------------------------------------------------------

def test_obs_folded_transfer_encoding_is_refused(srv):
    c = RawConn(srv.port)
    c.send(b"POST /topics/fold HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n"
           b"5\r\nhello\r\n0\r\n\r\n")
    r = c.read_response()
    assert_error(r, 400, "bad_request")
    assert c.wait_closed(), "a refused request closes its connection"
    # A fold anywhere in the head is refused, also with a tab and after a real value.
    c = RawConn(srv.port)
    c.send(b"POST /topics/fold HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
           b"X-A: a\r\n\tb\r\n\r\nz")
    assert_error(c.read_response(), 400, "bad_request")
    assert head_of(srv, "fold") is None, "a folded request was published"


def test_header_whitespace_counts_against_max_header_bytes(srv):
    for pad in [b"X-Pad:" + b" " * 200_000 + b"v\r\n",   # leading whitespace of a value
                b"X-Pad: v" + b" " * 200_000 + b"\r\n",  # trailing whitespace
                b"X-Pad:" + b"\t" * 200_000 + b"\r\n"]:  # a value of whitespace only
        c = RawConn(srv.port)
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + pad + b"\r\n")
        assert_error(c.read_response(), 431, "headers_too_large")
        c.close()
    # Just under the limit is fine: the limit counts bytes, it does not forbid whitespace.
    c = RawConn(srv.port)
    c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad:" + b" " * 1500 + b"v\r\n\r\n")
    assert c.read_response().status == 200
    c.close()


def test_post_with_upgrade_is_refused_and_closed(srv):
    c = RawConn(srv.port)
    c.send(b"POST /topics/upg HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nContent-Length: 3\r\n\r\nabc"
           b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_error(c.read_response(), 400, "bad_upgrade")
    assert c.wait_closed(), "nothing after the refused request is read"
    assert head_of(srv, "upg") is None, "the upgrade request was executed"
    c = RawConn(srv.port)
    c.send(b"CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n")
    r = c.read_response()
    assert r.status == 400, r
    assert c.wait_closed()


def test_get_with_other_upgrade_is_answered_then_closed(srv):
    """curl --http2 asks for h2c this way: the request is answered as HTTP/1.1, and the
    connection closed rather than read on in a protocol nobody agreed."""
    c = RawConn(srv.port)
    c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n"
           b"Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n"
           b"\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    r = c.read_response()
    assert r.status == 200 and r.body == b"ok\n", r
    assert r.headers.get("connection", "").lower() == "close", r.headers
    assert c.wait_closed()
    assert c.buf == b"", f"a second answer followed: {c.buf!r}"


def test_conflicting_lengths_are_refused(srv):
    for head in [b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                 b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                 b"Content-Length: 5\r\nContent-Length: 5\r\n",
                 b"Content-Length: 5\r\nContent-Length: 6\r\n",
                 b"Content-Length: 5, 5\r\n",
                 b"Transfer-Encoding: chunked, identity\r\n"]:
        c = RawConn(srv.port)
        c.send(b"POST /topics/len HTTP/1.1\r\nHost: x\r\n" + head +
               b"\r\n5\r\nhello\r\n0\r\n\r\n")
        r = c.read_response()
        assert r.status == 400, (head, r)
        assert c.wait_closed(), head
    assert head_of(srv, "len") is None


# ---- forged control events -----------------------------------------------------------------

FORGED = ["sluice.reset", "sluice.gap", "sluice.overflow", "Sluice.Gap", "SLUICE.x", "sluice."]


def test_publisher_cannot_forge_control_events_over_http(sluice):
    sse = sluice.sse("/topics/forge")
    sse.read_retry()
    before = sluice.metrics().v('sluice_publish_rejected_total{reason="reserved_event"}')
    for ev in FORGED:
        assert_error(sluice.post(f"/topics/forge?event={ev}", "x"), 400, "reserved_event")
        assert_error(sluice.post(f"/topics/forge?event={ev}", "a\nb\n",
                                 {"Content-Type": "application/x-ndjson"}), 400, "reserved_event")
    m = sluice.metrics()
    assert m.v('sluice_publish_rejected_total{reason="reserved_event"}') - before == \
        2 * len(FORGED), m
    assert head_of(sluice, "forge") is None, "a forged event was published"
    # Names that only look alike stay usable, and the reader sees only them.
    for ev in ["sluice", "sluicex.gap", "app.sluice.gap"]:
        sluice.publish("forge", "ok", event=ev)
    got = [sse.read_event() for _ in range(3)]
    assert [e.get("event") for e in got] == ["sluice", "sluicex.gap", "app.sluice.gap"], got
    assert sse.no_event_within(0.2)
    sse.close()


def test_event_names_that_break_sse_framing_are_refused(sluice):
    before = sluice.metrics().v('sluice_publish_rejected_total{reason="bad_event"}')
    bad = ["a%0Adata:%20x", "a%0Db", "a%0D%0Aid:%201", "%00", "a%20b", "caf%C3%A9", ""]
    for ev in bad:
        assert_error(sluice.post(f"/topics/frame?event={ev}", "x"), 400, "bad_event")
    m = sluice.metrics()
    assert m.v('sluice_publish_rejected_total{reason="bad_event"}') - before == len(bad)
    assert head_of(sluice, "frame") is None


def ws_control(m):
    assert m.opcode == OP_TEXT and m.payload.startswith(CONTROL_PREFIX), m
    return m.json()


def test_publisher_cannot_forge_control_events_over_websocket(sluice):
    sse = sluice.sse("/topics/wsforge")
    sse.read_retry()
    c = WSConn(sluice.port, "/ws?topic=wsforge&mode=pub&ack=1")
    assert c.ok, c.response
    before = sluice.metrics().v('sluice_publish_rejected_total{reason="reserved_event"}')
    for ev in FORGED:
        c.send_text(json.dumps({"event": ev, "data": "x"}))
        err = ws_control(c.read_message())
        assert err["sluice"] == "error" and err["error"] == "reserved_event", (ev, err)
    # Escapes decode before the check: a JSON-escaped line feed is no way around it.
    c.send_text('{"event":"a\\nevent: sluice.reset","data":"x"}')
    err = ws_control(c.read_message())
    assert err["error"] == "bad_event", err
    m = sluice.metrics()
    assert m.v('sluice_publish_rejected_total{reason="reserved_event"}') - before == len(FORGED)
    # A ?event= on the WebSocket URL sets nothing; the connection stays usable.
    c2 = WSConn(sluice.port, "/topics/wsforge?mode=pub&ack=1&event=sluice.reset")
    assert c2.ok, c2.response
    c2.send_text("raw")
    assert ws_control(c2.read_message())["sluice"] == "ack"
    e = sse.read_event()
    assert e.get("event") is None and e["data"] == "raw", e
    c.send_text(json.dumps({"event": "fine", "data": "y"}))
    assert ws_control(c.read_message())["sluice"] == "ack"
    e = sse.read_event()
    assert (e.get("event"), e["data"]) == ("fine", "y"), e
    c.close()
    c2.close()
    sse.close()


# ---- cross-site requests -------------------------------------------------------------------

ORIGINS = {"origins": "https://good.example"}
LOSSLESS_TOPICS = [("ll-*", {"durability": "lossless"})]
EVIL = {"Origin": "https://evil.example"}


def checkpoint(srv, topic, name):
    r = srv.get(f"/topics/{topic}/cursors")
    assert r.status == 200, r
    return {c["name"]: c["checkpoint"] for c in r.json()["cursors"]}.get(name)


def test_cross_site_writes_are_refused_before_anything_is_done(sluice_factory):
    srv = sluice_factory(server=ORIGINS, topics=LOSSLESS_TOPICS)
    ids = [srv.publish("ll-x", f"m{i}") for i in range(3)]
    sub = srv.sse("/topics/ll-x?durable=cur&from=oldest")
    assert sub.status == 200
    sub.read_retry()
    assert [sub.read_event()["id"] for _ in range(3)] == ids
    sub.close()
    before_ck = checkpoint(srv, "ll-x", "cur")
    m0 = srv.metrics()

    assert_error(srv.post("/topics/ll-x", "forged", EVIL), 403, "origin_not_allowed")
    assert_error(srv.post("/topics/ll-x?event=e", "a\nb\n",
                          dict(EVIL, **{"Content-Type": "application/x-ndjson"})),
                 403, "origin_not_allowed")
    assert_error(srv.post("/topics/brand-new", "x", EVIL), 403, "origin_not_allowed")
    assert_error(srv.post("/topics/ll-x/cursors/cur", ids[2], EVIL), 403, "origin_not_allowed")
    assert_error(srv.request("DELETE", "/topics/ll-x/cursors/cur", EVIL), 403,
                 "origin_not_allowed")
    # A subscription creates topics and durable cursors: refused as well.
    r = srv.get("/topics/other-new?durable=x", dict(EVIL, Accept="text/event-stream"))
    assert_error(r, 403, "origin_not_allowed")
    r = srv.get("/sse?topic=other-new2", dict(EVIL, Accept="text/event-stream"))
    assert_error(r, 403, "origin_not_allowed")

    assert srv.topics()["ll-x"]["head"] == ids[2], "a cross-site publish was executed"
    assert "brand-new" not in srv.topics() and "other-new" not in srv.topics()
    assert checkpoint(srv, "ll-x", "cur") == before_ck, "a cross-site ack moved the cursor"
    m = srv.metrics()
    assert m.v("sluice_origin_rejected_total") - m0.v("sluice_origin_rejected_total") == 7
    assert (m.v('sluice_publish_rejected_total{reason="origin_not_allowed"}') -
            m0.v('sluice_publish_rejected_total{reason="origin_not_allowed"}')) == 3

    # Listed origins and clients without Origin (curl, servers) are served.
    good = {"Origin": "https://good.example"}
    r = srv.post("/topics/ll-x", "fine", good)
    assert r.status == 202 and r.headers.get("access-control-allow-origin") == \
        "https://good.example", r
    assert srv.post("/topics/ll-x", "no origin").status == 202
    assert srv.post("/topics/ll-x/cursors/cur", ids[2], good).status == 204
    assert checkpoint(srv, "ll-x", "cur") != before_ck
    assert srv.request("DELETE", "/topics/ll-x/cursors/cur").status == 204
    # Reads that change nothing are answered, without CORS headers for the stranger.
    for path in ["/healthz", "/metrics", "/topics", "/topics/ll-x/cursors"]:
        r = srv.get(path, EVIL)
        assert r.status == 200, (path, r)
        assert "access-control-allow-origin" not in r.headers, (path, r.headers)


def test_any_origin_is_not_extended_to_admin_endpoints(sluice_factory):
    srv = sluice_factory(topics=LOSSLESS_TOPICS)   # origins empty: any origin
    srv.publish("ll-a", "x")
    sub = srv.sse("/topics/ll-a?durable=c&from=oldest")
    sub.read_retry()
    sub.read_event()
    sub.close()
    page = {"Origin": "https://whoever.example"}
    for method, path, body in [("GET", "/metrics", None), ("GET", "/topics", None),
                               ("GET", "/topics/ll-a/cursors", None),
                               ("POST", "/topics/ll-a/cursors/c", srv.topics()["ll-a"]["head"]),
                               ("OPTIONS", "/metrics", None),
                               ("OPTIONS", "/topics/ll-a/cursors/c", None),
                               ("DELETE", "/topics/ll-a/cursors/c", None)]:
        r = srv.request(method, path, page, body)
        assert r.status in (200, 204), (method, path, r)
        assert "access-control-allow-origin" not in r.headers, (method, path, r.headers)
    # Publishing and subscribing keep CORS for any origin.
    r = srv.post("/topics/ll-a", "y", page)
    assert r.status == 202 and r.headers.get("access-control-allow-origin") == "*", r.headers
    r = srv.request("OPTIONS", "/topics/ll-a", page)
    assert r.headers.get("access-control-allow-origin") == "*", r.headers
    sub = srv.sse("/topics/ll-a", headers=page)
    assert sub.status == 200
    assert sub.headers.get("access-control-allow-origin") == "*", sub.headers
    sub.close()
    assert srv.get("/healthz", page).headers.get("access-control-allow-origin") == "*"


# ---- resume points the server cannot have issued -------------------------------------------

@pytest.mark.parametrize("how", ["header", "since"])
def test_resume_from_an_id_beyond_the_head_resets(sluice, how):
    ids = [sluice.publish("ahead", f"m{i}") for i in range(3)]
    epoch, head = parse_id(ids[-1])
    future = f"{epoch}-{head + 100}"
    if how == "header":
        sub = sluice.sse("/topics/ahead", headers={"Last-Event-ID": future})
    else:
        sub = sluice.sse(f"/topics/ahead?since={future}")
    assert sub.status == 200
    sub.read_retry()
    reset = sub.read_event()
    assert reset["event"] == "sluice.reset", f"a future id was silently accepted: {reset}"
    assert json.loads(reset["data"]) == {"topic": "ahead", "epoch": epoch, "reason": "ahead"}
    assert [e["data"] for e in sub.read_events(3)] == ["m0", "m1", "m2"], \
        "the stream restarts from the oldest retained message"
    # The head itself is a normal resume point: nothing owed, no marker.
    sub2 = sluice.sse("/topics/ahead", headers={"Last-Event-ID": ids[-1]})
    sub2.read_retry()
    sluice.publish("ahead", "m3")
    e = sub2.read_event()
    assert (e["event"], e["data"]) == (None, "m3"), e
    sub.close()
    sub2.close()


def test_websocket_resume_beyond_the_head_resets(sluice):
    ids = [sluice.publish("wsahead", f"m{i}") for i in range(2)]
    epoch, head = parse_id(ids[-1])
    c = WSConn(sluice.port, f"/topics/wsahead?since={epoch}-{head + 1}")
    assert c.ok, c.response
    m = ws_control(c.read_message())
    assert m == {"sluice": "reset", "topic": "wsahead", "epoch": epoch, "reason": "ahead"}, m
    assert [c.read_message().text() for _ in range(2)] == ["m0", "m1"]
    c.close()


def test_multi_topic_resume_beyond_the_stream_resets(sluice):
    a = sluice.publish("mahead/a", "a0")
    sub = sluice.sse("/sse?topic=mahead/a&topic=mahead/b")
    sub.read_retry()
    sluice.publish("mahead/b", "b0")
    last = sub.read_event()["id"]          # "<stream epoch>-<gseq>:mahead/b"
    sub.close()
    stream_epoch, rest = last.split("-", 1)
    gseq = int(rest.split(":")[0])
    sub = sluice.sse("/sse?topic=mahead/a&topic=mahead/b",
                     headers={"Last-Event-ID": f"{stream_epoch}-{gseq + 1000}:mahead/a"})
    sub.read_retry()
    resets = [sub.read_event(), sub.read_event()]
    assert {r["event"] for r in resets} == {"sluice.reset"}, resets
    assert {json.loads(r["data"])["reason"] for r in resets} == {"ahead"}
    assert sorted(e["data"] for e in sub.read_events(2)) == ["a0", "b0"]
    assert parse_id(a)[1] == 1
    sub.close()


# ---- /topics with long names and many topics -----------------------------------------------

def test_topics_listing_with_long_names_and_many_topics(sluice_factory):
    srv = sluice_factory(limits={"max_topic_name": 1024, "max_topics": 1000},
                         topics=LOSSLESS_TOPICS)
    names = []
    for i in range(150):
        # A lossless topic's name is a directory name (at most 255 bytes on most file
        # systems), so the longest names go to lossy topics.
        stem = f"ll-{i}-" if i % 2 else f"t-{i}-"
        name = (stem + "x/~._-" * 200)[:70 if i % 2 else 1024 - i % 3].rstrip("/")
        names.append(name)
        r = srv.post(f"/topics/{name}?event=e", "p" * (i % 7))
        assert r.status == 202, (i, r)
    # Idle subscribers make the reader counts nonzero on some topics.
    subs = [srv.sse(f"/topics/{names[i]}") for i in range(0, 20, 3)]
    r = srv.get("/topics")
    assert r.status == 200
    listed = {t["name"]: t for t in json.loads(r.body)["topics"]}
    assert set(names) <= set(listed), "a topic is missing from the listing"
    for i, name in enumerate(names):
        t = listed[name]
        assert t["messages"] == 1 and t["bytes"] == i % 7, t
        assert t.get("lossless", False) == bool(i % 2), t
    assert listed[names[3]]["readers"] == 1
    for s in subs:
        s.close()
