"""HTTP/1.1 mechanics: keep-alive, pipelining, chunked bodies, Expect: 100-continue,
Connection: close, HTTP/1.0."""

import json
import socket
import time

from sluice_client import RawConn, SSEClient, parse_id


def test_keep_alive_several_requests(sluice):
    c = RawConn(sluice.port)
    c.request("GET", "/healthz")
    assert c.read_response().status == 200
    c.request("POST", "/topics/ka", body="one")
    r1 = c.read_response()
    assert r1.status == 202
    c.request("POST", "/topics/ka?event=e", body="two")
    r2 = c.read_response()
    assert r2.status == 202
    assert parse_id(r2.json()["id"])[1] == parse_id(r1.json()["id"])[1] + 1
    c.request("GET", "/topics")
    r = c.read_response()
    assert r.status == 200
    assert any(t["name"] == "ka" and t["messages"] == 2 for t in r.json()["topics"])
    c.request("GET", "/metrics")
    assert c.read_response().status == 200
    c.request("GET", "/nope")
    assert c.read_response().status == 404  # an error answer does not end a keep-alive
    c.request("GET", "/healthz")
    assert c.read_response().status == 200
    assert not c.eof
    c.close()


def test_pipelining_three_requests_in_one_write(sluice):
    c = RawConn(sluice.port)
    c.send(b"POST /topics/pipe HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n1"
           b"POST /topics/pipe HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n22"
           b"GET /topics HTTP/1.1\r\nHost: x\r\n\r\n")
    r1, r2, r3 = c.read_response(), c.read_response(), c.read_response()
    assert (r1.status, r2.status, r3.status) == (202, 202, 200)
    id1, id2 = r1.json()["id"], r2.json()["id"]
    assert parse_id(id2)[1] == parse_id(id1)[1] + 1
    t = {x["name"]: x for x in r3.json()["topics"]}["pipe"]
    assert t["head"] == id2 and t["messages"] == 2 and t["bytes"] == 3
    c.close()


def test_pipelined_requests_split_at_odd_boundaries(sluice):
    reqs = (b"POST /topics/odd HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /topics/odd HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nworld")
    c = RawConn(sluice.port)
    for i in range(0, len(reqs), 7):
        c.send(reqs[i:i + 7])
        time.sleep(0.002)
    assert [c.read_response().status for _ in range(3)] == [202, 200, 202]
    c.close()
    sub = SSEClient(sluice.port, "/topics/odd?from=oldest")
    assert [e["data"] for e in sub.read_events(2)] == ["hello", "world"]
    sub.close()


def test_chunked_publish(sluice):
    c = RawConn(sluice.port)
    c.send(b"POST /topics/chunk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"3\r\nhel\r\n6\r\nlo\nwor\r\n2;ext=1\r\nld\r\n0\r\n\r\n")
    r = c.read_response()
    assert r.status == 202, r
    c.close()
    sub = SSEClient(sluice.port, "/topics/chunk?from=oldest")
    e = sub.read_event()
    assert e["id"] == r.json()["id"]
    assert e["data"] == "hello\nworld"
    sub.close()


def test_chunked_ndjson_publish(sluice):
    c = RawConn(sluice.port)
    c.send(b"POST /topics/chunknd HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
           b"Content-Type: application/x-ndjson\r\n\r\n" +
           b"2\r\na\n\r\n" + b"3\r\nb\nc\r\n" + b"0\r\n\r\n")
    r = c.read_response()
    assert r.status == 202, r
    assert len(r.json()["ids"]) == 3
    c.close()


def test_expect_100_continue(sluice):
    c = RawConn(sluice.port)
    c.send(b"POST /topics/cont HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
           b"Expect: 100-continue\r\n\r\n")
    head = c.read_until(b"\r\n\r\n", timeout=3)
    assert head.startswith(b"HTTP/1.1 100 Continue\r\n"), head
    c.send(b"hello")
    r = c.read_response()
    assert r.status == 202, r
    # keep-alive continues normally afterwards, and no second 100 on a request without Expect
    c.request("POST", "/topics/cont", body="again")
    r2 = c.read_response()
    assert r2.status == 202
    c.close()
    t = sluice.topics()["cont"]
    assert t["messages"] == 2 and t["bytes"] == 10


def test_connection_close_honoured(sluice):
    c = RawConn(sluice.port)
    c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    r = c.read_response()
    assert r.status == 200
    assert r.headers.get("connection", "").lower() == "close"
    assert c.wait_closed(3), "the server kept the connection open after Connection: close"
    c.close()


def test_connection_close_on_publish_then_later_requests_ignored(sluice):
    c = RawConn(sluice.port)
    c.send(b"POST /topics/cc HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 1\r\n"
           b"\r\nA"
           b"POST /topics/cc HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nB")
    r = c.read_response()
    assert r.status == 202
    assert c.wait_closed(3)
    c.close()
    t = sluice.topics()["cc"]
    assert t["messages"] == 1, "a request after Connection: close must not be processed"


def test_http10_closes_by_default(sluice):
    c = RawConn(sluice.port)
    c.send(b"GET /healthz HTTP/1.0\r\n\r\n")
    r = c.read_response()
    assert r.status == 200
    assert c.wait_closed(3)
    c.close()


def test_healthz_and_topics_json(sluice):
    r = sluice.get("/healthz")
    assert r.status == 200
    assert r.body.strip() == b"ok"
    r = sluice.get("/topics")
    assert r.status == 200
    assert r.headers.get("content-type", "").startswith("application/json")
    assert json.loads(r.body) == {"topics": []}


def test_half_close_after_request_still_answered(sluice):
    c = RawConn(sluice.port)
    c.send(b"POST /topics/half HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
    c.sock.shutdown(socket.SHUT_WR)
    r = c.read_response()
    assert r.status == 202
    assert c.wait_closed(3)
    c.close()
