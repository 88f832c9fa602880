"""Authorization (docs/protocol.md "Authorization"): JWT verification with keys from files,
per-topic publish/subscribe policies over HTTP, SSE, multi-topic SSE and WebSocket, the admin
endpoints, the 401/403 answers with their WWW-Authenticate challenge, and refusals counted by
reason. Tokens are minted with PyJWT, as applications do."""

import hashlib
import hmac
import json
import subprocess
import time

import pytest

from auth_util import (ADMIN_TOKEN, SECRET, b64url, bearer, ec_key, ed_key, jwk_public,
                       pem_public, rsa_key, start_auth, token, unsigned)
from conftest import SLUICE_BIN, parse_metrics
from sluice_client import SSEClient, http, wait_until
from ws_client import WSConn

TOPICS = [("public/*", {"publish": "anyone", "subscribe": "anyone"}),
          ("news", {"subscribe": "anyone"})]
CHAT = {"pub": ["chat/*"], "sub": ["chat/*", "news"]}


@pytest.fixture
def srv(sluice_factory, tmp_path):
    return start_auth(sluice_factory, tmp_path, topics=TOPICS)


def post(srv, path, body=b"x", headers=None):
    return http(srv.port, "POST", path, headers=headers or {}, body=body)


def assert_401(r, code="invalid_token"):
    assert r.status == 401, r
    assert r.json()["error"] == code, r
    chal = r.headers.get("www-authenticate", "")
    assert chal.startswith("Bearer realm=\"sluice\""), r.headers
    if code == "invalid_token":
        assert 'error="invalid_token"' in chal, chal
    else:
        assert "error=" not in chal, chal


def assert_403(r):
    assert r.status == 403, r
    assert r.json()["error"] == "insufficient_scope", r
    assert 'error="insufficient_scope"' in r.headers.get("www-authenticate", ""), r.headers


def admin_metrics(srv):
    r = http(srv.port, "GET", "/metrics", headers=bearer(ADMIN_TOKEN))
    assert r.status == 200, r
    return parse_metrics(r.body.decode())


def rejected(m, reason):
    return m.get(f'sluice_auth_rejected_total{{reason="{reason}"}}', 0)


def test_publish_needs_a_token_that_grants_the_topic(srv):
    assert_401(post(srv, "/topics/chat/1"), "token_required")
    good = token(grants=CHAT)
    assert post(srv, "/topics/chat/1", headers=bearer(good)).status == 202
    # granted other topics only
    assert_403(post(srv, "/topics/chat/1", headers=bearer(token(grants={"pub": ["news"]}))))
    # a token without the sluice claim authenticates but grants nothing
    assert_403(post(srv, "/topics/chat/1", headers=bearer(token())))
    # "public/*" is open, and "news" only to subscribers
    assert post(srv, "/topics/public/a").status == 202
    assert_401(post(srv, "/topics/news"), "token_required")
    m = admin_metrics(srv)
    assert rejected(m, "missing") >= 2
    assert rejected(m, "insufficient_scope") >= 2
    assert m['sluice_publish_rejected_total{reason="unauthorized"}'] >= 4


@pytest.mark.parametrize("name,tok", [
    ("expired", lambda: token(grants=CHAT, exp_in=-60)),
    ("not_yet_valid", lambda: token(grants=CHAT, claims={"nbf": 4102444800})),
    ("bad_signature", lambda: token(grants=CHAT, key=b"another-secret-of-at-least-32-bytes!!")),
    ("bad_alg", lambda: unsigned({"sub": "mallory", "sluice": {"pub": ["*"]}})),
    ("malformed", lambda: "not.a.token"),
    ("too_large", lambda: token(grants={"pub": ["chat/*"] * 900})),
])
def test_bad_tokens_are_refused_and_counted(srv, name, tok):
    t = tok()
    r = post(srv, "/topics/chat/1", headers=bearer(t))
    assert_401(r)
    # a bad token is refused even where none is needed
    assert_401(post(srv, "/topics/public/x", headers=bearer(t)))
    m = admin_metrics(srv)
    assert rejected(m, name) == 2, {k: v for k, v in m.items() if "auth" in k}
    # logged once per refusal, never with the token
    wait_until(lambda: srv.logs().count(f"reason={name}") >= 2, msg="refusals logged")
    assert t not in srv.logs()


def test_alg_confusion_hs256_signed_with_the_public_key(sluice_factory, tmp_path):
    priv = rsa_key()
    pem = pem_public(priv)
    (tmp_path / "rsa.pem").write_bytes(pem)
    srv = start_auth(sluice_factory, tmp_path, auth={"public_key_file": str(tmp_path / "rsa.pem"),
                                                      "hmac_secret_file": None})
    rs = token(grants=CHAT, key=priv, alg="RS256")
    assert post(srv, "/topics/chat/1", headers=bearer(rs)).status == 202
    for alg in ("PS256", "RS512"):
        assert post(srv, "/topics/chat/1",
                    headers=bearer(token(grants=CHAT, key=priv, alg=alg))).status == 202
    # PyJWT refuses to do this, so it is done by hand: HS256 keyed with the PEM text
    h = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    p = b64url(json.dumps({"sub": "mallory", "sluice": {"pub": ["*"]}}).encode())
    sig = hmac.new(pem, f"{h}.{p}".encode(), hashlib.sha256).digest()
    forged = f"{h}.{p}.{b64url(sig)}"
    r = post(srv, "/topics/chat/1", headers=bearer(forged))
    assert_401(r)
    assert rejected(admin_metrics(srv), "unknown_key") == 1


def test_jwks_with_kid_es256_and_eddsa(sluice_factory, tmp_path):
    e, d = ec_key(), ed_key()
    (tmp_path / "jwks.json").write_text(json.dumps(
        {"keys": [jwk_public(e, "ec-1"), jwk_public(d, "ed-1")]}))
    srv = start_auth(sluice_factory, tmp_path, auth={"jwks_file": str(tmp_path / "jwks.json"),
                                                      "hmac_secret_file": None})
    for key, alg, kid in ((e, "ES256", "ec-1"), (d, "EdDSA", "ed-1")):
        t = token(grants=CHAT, key=key, alg=alg, kid=kid)
        assert post(srv, "/topics/chat/1", headers=bearer(t)).status == 202, alg
    # a kid the set does not have
    t = token(grants=CHAT, key=e, alg="ES256", kid="ec-2")
    assert_401(post(srv, "/topics/chat/1", headers=bearer(t)))
    # the right kid but the wrong key's signature
    t = token(grants=CHAT, key=ec_key(), alg="ES256", kid="ec-1")
    assert_401(post(srv, "/topics/chat/1", headers=bearer(t)))


def test_issuer_and_audience(sluice_factory, tmp_path):
    srv = start_auth(sluice_factory, tmp_path, auth={"issuer": "https://id.example",
                                                      "audience": "sluice-prod"})
    ok = token(grants=CHAT, claims={"iss": "https://id.example", "aud": ["x", "sluice-prod"]})
    assert post(srv, "/topics/chat/1", headers=bearer(ok)).status == 202
    for claims in ({"iss": "https://evil.example", "aud": "sluice-prod"},
                   {"iss": "https://id.example", "aud": "sluice-dev"},
                   {"iss": "https://id.example"}):
        assert_401(post(srv, "/topics/chat/1", headers=bearer(token(grants=CHAT, claims=claims))))


def test_sse_subscribe_policy_and_token_carriers(sluice_factory, tmp_path):
    srv = start_auth(sluice_factory, tmp_path, topics=TOPICS, auth={"cookie": "sluice_token"})
    t = token(grants=CHAT)
    r = SSEClient(srv.port, "/topics/chat/1")
    assert_401(r.response, "token_required")
    r.close()
    r = SSEClient(srv.port, "/topics/secret", headers=bearer(t))
    assert_403(r.response)
    r.close()
    # news and public/* are open to subscribers
    for path in ("/topics/news", "/topics/public/x"):
        s = SSEClient(srv.port, path)
        assert s.status == 200, s.response
        s.close()
    # header, query parameter and cookie all carry the token
    subs = [SSEClient(srv.port, "/topics/chat/1", headers=bearer(t)),
            SSEClient(srv.port, f"/topics/chat/1?access_token={t}"),
            SSEClient(srv.port, "/topics/chat/1", headers={"Cookie": f"a=b; sluice_token={t}"})]
    for s in subs:
        assert s.status == 200, s.response
    assert post(srv, "/topics/chat/1", b"hello", headers=bearer(t)).status == 202
    for s in subs:
        ev = s.read_event(timeout=5)
        assert ev["data"] == "hello"
        s.close()


def test_multi_topic_sse_one_refused_topic_refuses_all(srv):
    t = token(grants=CHAT)
    s = SSEClient(srv.port, f"/sse?topic=chat/1&topic=news&access_token={t}")
    assert s.status == 200, s.response
    s.close()
    s = SSEClient(srv.port, f"/sse?topic=chat/1&topic=secret&access_token={t}")
    assert_403(s.response)
    s.close()
    s = SSEClient(srv.port, "/sse?topic=news&topic=chat/1")
    assert_401(s.response, "token_required")
    s.close()


def test_websocket_refused_before_the_upgrade(srv):
    t = token(grants=CHAT)
    c = WSConn(srv.port, "/topics/chat/1")
    assert c.status == 401 and c.response.json()["error"] == "token_required"
    assert "sec-websocket-accept" not in c.headers
    c.close()
    c = WSConn(srv.port, f"/ws?topic=chat/1&topic=secret&access_token={t}")
    assert_403(c.response)
    c.close()
    c = WSConn(srv.port, "/topics/news?mode=pub", extra=[("Authorization", f"Bearer {t}")])
    assert_403(c.response)  # a raw publisher needs to publish to its topic
    c.close()
    c = WSConn(srv.port, f"/topics/chat/1?access_token={t}")
    assert c.status == 101
    assert post(srv, "/topics/chat/1", b"hi", headers=bearer(t)).status == 202
    assert c.read_message().payload == b"hi"
    c.close()


def test_websocket_json_publishes_checked_per_topic(srv):
    t = token(grants=CHAT)
    c = WSConn(srv.port, f"/ws?topic=chat/1&mode=pubsub&ack=1&access_token={t}")
    assert c.status == 101, c.response
    c.send_text(json.dumps({"topic": "chat/2", "data": "ok"}))
    m = c.read_json()
    assert m["sluice"] == "ack" and m["topic"] == "chat/2", m
    c.send_text(json.dumps({"topic": "secret", "data": "no"}))
    m = c.read_json()
    assert m == {"sluice": "error", "error": "insufficient_scope",
                 "message": "the token does not grant publishing here"}, m
    # the connection stays open and usable
    c.send_text(json.dumps({"topic": "chat/1", "data": "again"}))
    msgs = [c.read_json(), c.read_json()]
    assert {"sluice": "ack"}.items() <= next(x for x in msgs if "sluice" in x).items()
    assert any(x.get("data") == "again" for x in msgs), msgs
    c.close()


def test_admin_endpoints(srv):
    assert http(srv.port, "GET", "/healthz").status == 200
    for path in ("/metrics", "/topics"):
        assert_401(http(srv.port, "GET", path), "token_required")
        assert_403(http(srv.port, "GET", path, headers=bearer(token(grants=CHAT))))
        assert http(srv.port, "GET", path, headers=bearer(token(grants={"admin": True}))).status \
            == 200
        assert http(srv.port, "GET", path, headers=bearer(ADMIN_TOKEN)).status == 200
        assert_401(http(srv.port, "GET", path, headers=bearer(ADMIN_TOKEN + "x")))
    assert_401(http(srv.port, "GET", "/topics/chat/1/cursors"), "token_required")
    m = admin_metrics(srv)
    assert rejected(m, "not_admin") == 2
    # a preflight needs no token and allows the Authorization header
    r = http(srv.port, "OPTIONS", "/topics/chat/1")
    assert r.status == 204 and "Authorization" in r.headers["access-control-allow-headers"]


def test_without_auth_nothing_changes(sluice):
    # no [auth]: tokens are not looked at, everything stays open
    r = http(sluice.port, "POST", "/topics/a?access_token=garbage", body=b"x",
             headers={"Authorization": "Bearer garbage"})
    assert r.status == 202
    assert http(sluice.port, "GET", "/metrics").status == 200


def test_check_config(tmp_path):
    (tmp_path / "secret").write_bytes(SECRET)
    (tmp_path / "short").write_bytes(b"short")
    def check(text):
        p = tmp_path / "c.ini"
        p.write_text(text)
        return subprocess.run([SLUICE_BIN, "--config", str(p), "--check-config"],
                              capture_output=True, text=True, timeout=10)
    r = check("[server]\nlisten = 0.0.0.0:8080\n")
    assert r.returncode == 0 and "without an [auth] section" in r.stderr, r.stderr
    r = check("[server]\nlisten = 127.0.0.1:8080\n")
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    r = check(f"[server]\nlisten = 0.0.0.0:8080\n[auth]\nhmac_secret_file = {tmp_path}/secret\n")
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    r = check(f"[auth]\nhmac_secret_file = {tmp_path}/short\n")
    assert r.returncode == 1 and "shorter than 32 bytes" in r.stderr, r.stderr
    r = check(f"[auth]\njwks_file = {tmp_path}/missing.json\n")
    assert r.returncode == 1 and "missing.json" in r.stderr, r.stderr
    r = check("[auth]\nleeway = 5s\n")
    assert r.returncode == 1 and "needs hmac_secret_file" in r.stderr, r.stderr
    r = check('[topic "x"]\npublish = token\n')
    assert r.returncode == 1 and "needs an [auth] section" in r.stderr, r.stderr
    r = check(f'[auth]\nhmac_secret_file = {tmp_path}/secret\n[topic "x"]\nsubscribe = maybe\n')
    assert r.returncode == 1 and "anyone, token" in r.stderr, r.stderr


# ---- durable cursors are owned ------------------------------------------------------------

LL = [("ll/*", {"durability": "lossless"})]
LLG = {"pub": ["ll/*"], "sub": ["ll/*"]}


def test_cursor_ownership(sluice_factory, tmp_path):
    srv = start_auth(sluice_factory, tmp_path, topics=LL,
                     auth={"max_cursors_per_subject": "2"})
    alice, bob = token(grants=LLG, sub="alice"), token(grants=LLG, sub="bob")
    boss = token(grants={"admin": True, **LLG}, sub="boss")
    s = SSEClient(srv.port, f"/topics/ll/a?durable=c1&access_token={alice}")
    assert s.status == 200, s.response
    r = post(srv, "/topics/ll/a", b"m1", headers=bearer(alice))
    assert r.status == 202
    mid = r.json()["id"]
    assert s.read_event()["id"] == mid
    s.close()
    # another subject can neither read it, nor acknowledge or delete it
    b = SSEClient(srv.port, f"/topics/ll/a?durable=c1&access_token={bob}")
    assert_403(b.response)
    b.close()
    assert_403(post(srv, "/topics/ll/a/cursors/c1", mid.encode(), headers=bearer(bob)))
    assert_403(http(srv.port, "DELETE", "/topics/ll/a/cursors/c1", headers=bearer(bob)))
    assert_401(post(srv, "/topics/ll/a/cursors/c1", mid.encode()), "token_required")
    # listing is the admin's
    assert_403(http(srv.port, "GET", "/topics/ll/a/cursors", headers=bearer(alice)))
    lst = http(srv.port, "GET", "/topics/ll/a/cursors", headers=bearer(boss)).json()["cursors"]
    assert lst[0]["name"] == "c1"
    assert lst[0]["owner"] == hashlib.sha256(b"alice").hexdigest()
    # the owner acknowledges; an admin may too
    assert post(srv, "/topics/ll/a/cursors/c1", mid.encode(), headers=bearer(alice)).status == 204
    assert post(srv, "/topics/ll/a/cursors/c1", mid.encode(),
                headers=bearer(ADMIN_TOKEN)).status == 204
    # the limit per subject: alice has c1; c2 is the second, c3 one too many; bob is not affected
    s2 = SSEClient(srv.port, f"/topics/ll/a?durable=c2&access_token={alice}")
    assert s2.status == 200
    s2.close()
    s3 = SSEClient(srv.port, f"/topics/ll/b?durable=c3&access_token={alice}")
    assert s3.status == 409 and s3.response.json()["error"] == "too_many_cursors"
    s3.close()
    sb = SSEClient(srv.port, f"/topics/ll/b?durable=c3&access_token={bob}")
    assert sb.status == 200
    sb.close()
    m = admin_metrics(srv)
    assert m['sluice_cursors_rejected_total{reason="per_subject"}'] == 1
    # ownership survives a restart
    srv.signal(15)
    assert srv.wait_exit(15) == 0
    srv2 = start_auth(sluice_factory, tmp_path, topics=LL)
    b = SSEClient(srv2.port, f"/topics/ll/a?durable=c1&access_token={bob}")
    assert_403(b.response)
    b.close()
    a = SSEClient(srv2.port, f"/topics/ll/a?durable=c1&access_token={alice}")
    assert a.status == 200
    a.close()
    assert http(srv2.port, "DELETE", "/topics/ll/a/cursors/c1",
                headers=bearer(alice)).status == 204


# ---- expiry of live connections, WebSocket refresh --------------------------------------------


def test_sse_subscriber_closed_at_exp_with_an_expired_event(sluice_factory, tmp_path):
    srv = start_auth(sluice_factory, tmp_path, auth={"leeway": "0s"})
    t = token(grants=CHAT, exp_in=2)
    s = SSEClient(srv.port, f"/topics/chat/1?access_token={t}")
    assert s.status == 200, s.response
    exp = jwt_exp(t)
    ev = s.read_event(timeout=15)
    assert ev["event"] == "sluice.expired", ev
    assert json.loads(ev["data"]) == {"reason": "token_expired", "exp": exp}
    assert s.wait_closed(10)
    assert time.time() >= exp
    s.close()
    assert admin_metrics(srv)["sluice_auth_expired_total"] == 1
    wait_until(lambda: admin_metrics(srv).get(
        'sluice_connections_closed_total{reason="token_expired"}') == 1, timeout=10,
        msg="the connection counted as closed for token_expired")
    # a token that expired is refused at the door
    wait_until(lambda: time.time() > exp + 1, timeout=5)
    s = SSEClient(srv.port, f"/topics/chat/1?access_token={t}")
    assert_401(s.response)
    s.close()


def test_websocket_closed_at_exp_with_4401(sluice_factory, tmp_path):
    srv = start_auth(sluice_factory, tmp_path, auth={"leeway": "0s"})
    t = token(grants=CHAT, exp_in=2)
    c = WSConn(srv.port, f"/topics/chat/1?access_token={t}")
    assert c.status == 101
    code, reason, _ = c.expect_close(timeout=15)
    assert code == 4401 and reason == b"token expired", (code, reason)
    c.close()


def test_websocket_token_refresh(sluice_factory, tmp_path):
    srv = start_auth(sluice_factory, tmp_path, topics=TOPICS, auth={"leeway": "0s"})
    t = token(grants=CHAT, exp_in=3)
    c = WSConn(srv.port, f"/ws?topic=chat/1&topic=news&access_token={t}")
    assert c.status == 101
    # refused refreshes leave the old token in force
    bad = [(token(grants=CHAT, sub="mallory"), "insufficient_scope"),
           (token(grants={"sub": ["news"]}), "insufficient_scope"),
           (token(grants=CHAT, exp_in=-10), "invalid_token"),
           ("garbage", "invalid_token")]
    for tok, err in bad:
        c.send_text(json.dumps({"sluice": "token", "token": tok}, separators=(",", ":")))
        m = c.read_json()
        assert m["sluice"] == "error" and m["error"] == err, (m, err)
    c.send_text('{"sluice":"token"}')
    assert c.read_json()["error"] == "bad_envelope"
    fresh = token(grants=CHAT, exp_in=300)
    c.send_text(json.dumps({"sluice": "token", "token": fresh}, separators=(",", ":")))
    m = c.read_json()
    assert m == {"sluice": "token", "exp": jwt_exp(fresh)}, m
    # past the first token's exp the connection still receives
    old = jwt_exp(t)
    wait_until(lambda: time.time() > old + 1.5, timeout=10)
    assert post(srv, "/topics/chat/1", b"still here", headers=bearer(fresh)).status == 202
    assert c.read_json(timeout=5)["data"] == "still here"
    m = admin_metrics(srv)
    assert m["sluice_auth_refreshed_total"] == 1 and m["sluice_auth_expired_total"] == 0
    c.close()


def jwt_exp(t):
    import jwt
    return jwt.decode(t, options={"verify_signature": False})["exp"]


# ---- SIGHUP key rotation ---------------------------------------------------------------------


def test_sighup_rotates_keys_and_keeps_connections(sluice_factory, tmp_path):
    import signal as sig
    srv = start_auth(sluice_factory, tmp_path)
    old = token(grants=CHAT)
    sse = SSEClient(srv.port, f"/topics/chat/1?access_token={old}")
    assert sse.status == 200
    ws = WSConn(srv.port, f"/topics/chat/1?access_token={old}")
    assert ws.status == 101
    new_secret = b"a-brand-new-secret-after-rotation-0123456789"
    (tmp_path / "secret").write_bytes(new_secret + b"\n")
    srv.signal(sig.SIGHUP)
    wait_until(lambda: "keys reloaded" in srv.logs(), timeout=10, msg="reload logged")
    srv.killed_by_us = None
    assert_401(post(srv, "/topics/chat/1", headers=bearer(old)))
    new = token(grants=CHAT, key=new_secret)
    assert post(srv, "/topics/chat/1", b"after", headers=bearer(new)).status == 202
    # live connections were kept and still receive
    assert sse.read_event(timeout=5)["data"] == "after"
    assert ws.read_message(timeout=5).payload == b"after"
    # a bad file is refused with a log line, and the keys in force stay
    (tmp_path / "secret").write_bytes(b"too short\n")
    srv.signal(sig.SIGHUP)
    wait_until(lambda: "key reload refused" in srv.logs(), timeout=10, msg="refusal logged")
    srv.killed_by_us = None
    assert "shorter than 32 bytes" in srv.logs()
    assert post(srv, "/topics/chat/1", b"still", headers=bearer(new)).status == 202
    assert sse.read_event(timeout=5)["data"] == "still"
    m = admin_metrics(srv)
    assert m["sluice_auth_key_reloads_total"] == 1
    assert m["sluice_auth_key_reload_failures_total"] == 1
    assert srv.alive()
    sse.close()
    ws.close()


# ---- rate limits ---------------------------------------------------------------------------


def until_limited(fn, limit=20):
    """Calls fn() until it answers 429; returns (successes before it, the 429 response)."""
    ok = 0
    for _ in range(limit):
        r = fn()
        if r.status == 429:
            return ok, r
        assert r.status == 202, r
        ok += 1
    raise AssertionError(f"no 429 after {limit} publishes")


def test_publish_rate_per_subject_and_per_ip(sluice_factory, tmp_path):
    srv = start_auth(sluice_factory, tmp_path, topics=TOPICS,
                     limits={"publish_rate": "1", "publish_burst": "3",
                             "publish_bytes_rate": "64KiB", "publish_bytes_burst": "64KiB",
                             "max_message_bytes": "64KiB"})
    alice, bob = token(grants=CHAT, sub="alice"), token(grants=CHAT, sub="bob")
    ok, r = until_limited(lambda: post(srv, "/topics/chat/1", headers=bearer(alice)))
    assert 3 <= ok <= 5, ok  # the burst, plus what refilled at 1/s meanwhile
    assert r.json()["error"] == "rate_limited"
    assert 1 <= int(r.headers["retry-after"]) <= 2, r.headers
    # another subject has its own bucket
    assert post(srv, "/topics/chat/1", headers=bearer(bob)).status == 202
    # without a token, publishes count against the address
    ok, r = until_limited(lambda: post(srv, "/topics/public/x"))
    assert 3 <= ok <= 5, ok
    # bytes: 40 KiB twice in a 64 KiB bucket (bob has used 1 byte)
    carol = token(grants=CHAT, sub="carol")
    assert post(srv, "/topics/chat/2", b"x" * 40960, headers=bearer(carol)).status == 202
    r = post(srv, "/topics/chat/2", b"x" * 40960, headers=bearer(carol))
    assert r.status == 429, r
    # over WebSocket: an error message, and the connection stays
    dave = token(grants=CHAT, sub="dave")
    c = WSConn(srv.port, f"/topics/chat/3?mode=pub&ack=1&access_token={dave}")
    assert c.status == 101
    errors = acks = 0
    for i in range(8):
        c.send_text(f"m{i}")
        m = c.read_json()
        if m["sluice"] == "ack":
            acks += 1
        else:
            assert m["error"] == "rate_limited", m
            errors += 1
    assert acks >= 3 and errors >= 1, (acks, errors)
    m = admin_metrics(srv)
    assert m['sluice_rate_limited_total{key="subject",what="publish"}'] >= 3
    assert m['sluice_rate_limited_total{key="ip",what="publish"}'] == 1
    assert m['sluice_publish_rejected_total{reason="rate_limited"}'] >= 4
    c.close()


def test_connection_rate_per_ip(sluice_factory, tmp_path):
    srv = start_auth(sluice_factory, tmp_path,
                     limits={"connection_rate": "1", "connection_burst": "4"})
    # start_auth's health check used one connection already
    statuses = [http(srv.port, "GET", "/healthz").status for _ in range(8)]
    assert statuses.count(200) >= 3, statuses
    assert 429 in statuses, statuses
    first = statuses.index(429)
    refused = [r for r in (http(srv.port, "GET", "/healthz") for _ in range(10))
               if r.status == 429]
    assert refused, "no 429 in 10 more connections at 1/s"
    r = refused[0]
    assert r.json()["error"] == "rate_limited" and int(r.headers["retry-after"]) >= 1
    wait_until(lambda: http(srv.port, "GET", "/healthz").status == 200, timeout=10,
               msg="the bucket refills")
    assert first >= 2


def test_cookie_token_not_taken_from_cross_site_writes(sluice_factory, tmp_path):
    srv = start_auth(sluice_factory, tmp_path, auth={"cookie": "tk"},
                     server={"origins": "https://app.example"})
    t = token(grants=CHAT)
    ck = {"Cookie": f"tk={t}"}
    # no Origin: not a browser's request, the cookie is a token like any other
    assert post(srv, "/topics/chat/1", headers=ck).status == 202
    # the listed origin may publish on its cookie
    assert post(srv, "/topics/chat/1", headers={**ck, "Origin": "https://app.example"}).status \
        == 202
    # with an allow-list a foreign origin is refused for the origin itself; the cookie rule
    # matters where `origins` is empty: any origin may be served, but not on a cookie
    (tmp_path / "b").mkdir()
    open_srv = start_auth(sluice_factory, tmp_path / "b", auth={"cookie": "tk"})
    evil = {**ck, "Origin": "https://evil.example"}
    assert_401(post(open_srv, "/topics/chat/1", headers=evil), "token_required")
    c = WSConn(open_srv.port, "/topics/chat/1", extra=list(evil.items()))
    assert c.status == 401, c.response
    c.close()
    # reads stay possible: CORS keeps the answer from a foreign page
    s = SSEClient(open_srv.port, "/topics/chat/1", headers=evil)
    assert s.status == 200, s.response
    s.close()
    # a header token from any origin is the page's own choice
    assert post(open_srv, "/topics/chat/1",
                headers={**bearer(t), "Origin": "https://evil.example"}).status == 202
    assert "cookie token ignored" in open_srv.logs()


@pytest.mark.parametrize("with_auth", [False, True])
def test_writes_to_admin_listings_are_405_not_a_crash(sluice_factory, tmp_path, with_auth):
    # /metrics and /topics are admin paths shorter than "/topics/": a POST or DELETE on them
    # must not be taken for a cursor acknowledgement.
    srv = start_auth(sluice_factory, tmp_path) if with_auth else sluice_factory()
    hdr = bearer(ADMIN_TOKEN) if with_auth else {}
    for method, path in (("DELETE", "/topics"), ("POST", "/topics"), ("POST", "/metrics"),
                         ("DELETE", "/metrics"), ("DELETE", "/topics/")):
        r = http(srv.port, method, path, headers=hdr, body=b"" if method == "POST" else None)
        assert r.status == 405, (method, path, r)
    assert srv.alive()
    assert http(srv.port, "GET", "/healthz").status == 200
