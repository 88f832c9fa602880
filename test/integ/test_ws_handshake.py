"""The WebSocket opening handshake (docs/protocol.md "WebSocket (RFC 6455)" / "Opening") and the
origin allow-list ("Browsers and CORS"): every error status, and what a 101 must carry."""

import base64
import os

import pytest

from sluice_client import RawConn
from ws_client import (OP_TEXT, RFC_SAMPLE_ACCEPT, RFC_SAMPLE_KEY, WSConn, accept_for,
                       handshake_headers)


def assert_error(resp, status, code):
    assert resp.status == status, f"want {status} {code}, got {resp.status} {resp.body!r}"
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    body = resp.json()
    assert body.get("error") == code, body
    assert isinstance(body.get("message"), str), body
    assert "sec-websocket-accept" not in resp.headers


def assert_upgraded(c):
    assert c.status == 101, f"handshake refused: {c.response}"
    assert c.ok, f"wrong Sec-WebSocket-Accept {c.headers.get('sec-websocket-accept')!r} " \
                 f"for key {c.key!r}"
    assert c.headers.get("upgrade", "").lower() == "websocket", c.headers
    assert "upgrade" in [t.strip().lower() for t in c.headers.get("connection", "").split(",")]


def test_rfc_sample_key_accept(sluice):
    assert accept_for(RFC_SAMPLE_KEY) == RFC_SAMPLE_ACCEPT  # the client's own arithmetic
    c = WSConn(sluice.port, "/topics/hs", key=RFC_SAMPLE_KEY)
    assert c.status == 101, c.response
    assert c.headers.get("sec-websocket-accept") == RFC_SAMPLE_ACCEPT, c.headers
    assert_upgraded(c)
    # the upgraded connection really speaks WebSocket: a published message arrives as a frame
    sluice.publish("hs", "hello")
    m = c.read_message()
    assert (m.opcode, m.payload) == (OP_TEXT, b"hello")
    c.close()


def test_no_subprotocol_or_extension_negotiated(sluice):
    c = WSConn(sluice.port, "/topics/hs2", extra=[
        ("Sec-WebSocket-Protocol", "chat, superchat"),
        ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")])
    assert_upgraded(c)
    assert "sec-websocket-protocol" not in c.headers, c.headers
    assert "sec-websocket-extensions" not in c.headers, c.headers
    # and frames are not compressed: a published payload arrives verbatim with RSV1 clear
    sluice.publish("hs2", "plain " * 50)
    f = c.read_frame()
    assert f.opcode == OP_TEXT and f.rsv == 0 and f.payload == b"plain " * 50
    c.close()


@pytest.mark.parametrize("path", ["/topics/hs3", "/ws?topic=hs3", "/ws?topic=hs3&topic=x"])
def test_handshake_tolerates_token_lists_and_case(sluice, path):
    for conn_hdr, up in [("keep-alive, Upgrade", "websocket"), ("upgrade", "WebSocket"),
                         ("Upgrade,keep-alive", "websocket")]:
        c = WSConn(sluice.port, path, connection=conn_hdr, upgrade=up)
        assert_upgraded(c)
        c.close()


def test_post_with_upgrade_is_not_a_handshake(sluice):
    for path in ["/topics/hsp", "/ws?topic=hsp"]:
        c = RawConn(sluice.port)
        c.request("POST", path, handshake_headers(), body="x")
        r = c.read_response()
        assert r.status != 101, f"POST {path} was upgraded"
        assert "sec-websocket-accept" not in r.headers
        c.close()


def test_http10_is_not_a_handshake(sluice):
    c = WSConn(sluice.port, "/topics/hs10", http_version="HTTP/1.0")
    assert c.status != 101 and 400 <= c.status < 500, c.response
    c.close()


@pytest.mark.parametrize("key", [
    None,                                              # missing
    "",                                                # empty
    "abc",                                             # not 16 bytes
    base64.b64encode(os.urandom(15)).decode(),         # 15 bytes
    base64.b64encode(os.urandom(17)).decode(),         # 17 bytes
    "!!!!!!!!!!!!!!!!!!!!!!==",                        # right length, not base64
])
def test_bad_key_is_400_bad_handshake(sluice, key):
    hdrs = handshake_headers()
    hdrs = [(k, v) for k, v in hdrs if k != "Sec-WebSocket-Key"]
    if key is not None:
        hdrs.append(("Sec-WebSocket-Key", key))
    c = WSConn(sluice.port, "/topics/hsk", headers=hdrs)
    assert_error(c.response, 400, "bad_handshake")
    c.close()


@pytest.mark.parametrize("version", ["8", "12", "14"])
def test_other_version_is_426_with_version_header(sluice, version):
    c = WSConn(sluice.port, "/topics/hsv", version=version)
    assert_error(c.response, 426, "upgrade_required")
    assert c.headers.get("sec-websocket-version", "").strip() == "13", c.headers
    c.close()


@pytest.mark.parametrize("connection", [None, "close", "keep-alive", "Upgradex"])
def test_missing_or_wrong_connection_is_400(sluice, connection):
    c = WSConn(sluice.port, "/topics/hsc", connection=connection)
    assert_error(c.response, 400, "bad_handshake")
    c.close()


def test_wrong_upgrade_token_is_400(sluice):
    c = WSConn(sluice.port, "/topics/hsu", upgrade="h2c")
    assert_error(c.response, 400, "bad_handshake")
    c.close()


def test_ws_without_upgrade_is_426(sluice):
    for path in ["/ws", "/ws?topic=a", "/ws?topic=a&topic=b"]:
        r = sluice.get(path)
        assert_error(r, 426, "upgrade_required")
        r = sluice.get(path, {"Accept": "text/event-stream"})
        assert_error(r, 426, "upgrade_required")


def test_request_errors_match_sse(sluice_factory):
    srv = sluice_factory(limits={"max_topics_per_connection": 2})
    cases = [("/topics/a//b", 400, "bad_topic"),
             ("/topics/ok?since=zzz", 400, "bad_id"),
             ("/ws?topic=a&topic=b&topic=c", 400, "too_many_topics"),
             ("/ws", 400, "bad_query"),
             ("/ws?topic=bad//name", 400, "bad_topic")]
    for path, status, code in cases:
        c = WSConn(srv.port, path)
        assert_error(c.response, status, code)
        c.close()
    c = WSConn(srv.port, "/ws?topic=a&topic=b")
    assert_upgraded(c)
    c.close()


ORIGINS = {"origins": "https://good.example, https://also.example"}


def test_origin_allow_list(sluice_factory):
    srv = sluice_factory(server=ORIGINS)
    for origin in ["https://evil.example", "https://good.example.evil.example",
                   "http://good.example", "null"]:
        c = WSConn(srv.port, "/topics/orig", origin=origin)
        assert_error(c.response, 403, "forbidden_origin")
        c.close()
    for origin in ["https://good.example", "https://also.example", None]:
        c = WSConn(srv.port, "/topics/orig", origin=origin)
        assert_upgraded(c)
        c.close()
    c = WSConn(srv.port, "/ws?topic=orig&topic=o2", origin="https://evil.example")
    assert_error(c.response, 403, "forbidden_origin")
    c.close()


def test_any_origin_when_no_list(sluice):
    c = WSConn(sluice.port, "/topics/anyorig", origin="https://whoever.example")
    assert_upgraded(c)
    c.close()


def test_cors_headers_follow_origins(sluice_factory):
    open_srv = sluice_factory()
    r = open_srv.get("/healthz", {"Origin": "https://whoever.example"})
    assert r.status == 200 and r.headers.get("access-control-allow-origin") == "*", r.headers

    srv = sluice_factory(server=ORIGINS)
    r = srv.get("/healthz", {"Origin": "https://also.example"})
    assert r.headers.get("access-control-allow-origin") == "https://also.example", r.headers
    assert "origin" in [v.strip().lower() for v in r.headers.get("vary", "").split(",")], \
        r.headers
    r = srv.get("/healthz", {"Origin": "https://evil.example"})
    assert r.status == 200
    assert "access-control-allow-origin" not in r.headers, r.headers
    r = srv.post("/topics/cors", "x", {"Origin": "https://good.example"})
    assert r.status == 202
    assert r.headers.get("access-control-allow-origin") == "https://good.example"

    r = srv.request("OPTIONS", "/topics/cors", {"Origin": "https://good.example",
                                                "Access-Control-Request-Method": "POST"})
    assert r.status == 204, r
    methods = {m.strip().upper() for m in
               r.headers.get("access-control-allow-methods", "").split(",")}
    assert {"GET", "POST", "OPTIONS"} <= methods, r.headers
    hdrs = {h.strip().lower() for h in
            r.headers.get("access-control-allow-headers", "").split(",")}
    assert {"content-type", "last-event-id"} <= hdrs, r.headers
    assert r.headers.get("access-control-max-age") == "600", r.headers
