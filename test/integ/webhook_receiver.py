"""A webhook receiver for the sink tests: a real aiohttp server on 127.0.0.1, run in a thread
of its own, whose behaviour is switched while it runs. It records every request it gets and
verifies Standard Webhooks signatures when it knows the secret.

Modes (Receiver.mode):
  ok            200 at once
  slow          200 after `delay` seconds
  status        answer `status` (with `retry_after` as Retry-After when set: seconds, an
                HTTP date, or a function giving one per answer); a 3xx carries
                Location: /redirected, which must not be followed
  flapping      alternately 500 and 200
  reject_id     `reject_status` (400) when the body holds `reject` (a message id or payload),
                else 200; never on paths under /dlq
  hang_headers  never answers (the request times out)
  hang_body     sends 200 headers, then never finishes the body
  reset         accepts the request, then drops the connection
  script        answers from the list `script`, one entry per request, in order: a dict
                with `status` (200), `body` ("answer <status>"), `retry_after` and `delay`
                (seconds before answering); 200 once the list is used up
Other endpoints: down_url() (nothing listens) and never_accepting_url() (a listener whose
backlog is never accepted).
"""

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import threading
import time

from aiohttp import web


class Delivery:
    def __init__(self, path, headers, body, status, t):
        self.path = path
        self.headers = headers
        self.body = body
        self.status = status  # what we answered (None: no answer)
        self.t = t

    def envelopes(self):
        """The body's envelopes (ndjson or json)."""
        text = self.body.decode()
        if text.startswith("["):
            return json.loads(text)
        return [json.loads(line) for line in text.splitlines() if line]


class Receiver:
    def __init__(self, secrets=()):
        self.mode = "ok"
        self.delay = 0.0
        self.status = 200
        self.retry_after = None
        self.reject = None
        self.reject_status = 400  # reject_id: the status of the refused message
        self.script = []
        self.secrets = [base64.b64decode(s[6:] if s.startswith("whsec_") else s)
                        for s in secrets]
        self.deliveries = []
        self.bad_signatures = 0
        self._flap = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._holders = []
        self.port = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._started.wait(10)
        self._idle_socks = []

    # -- control ---------------------------------------------------------------------------
    def url(self, path="/hook"):
        return f"http://127.0.0.1:{self.port}{path}"

    def set(self, mode, **kw):
        with self._lock:
            self.mode = mode
            for k, v in kw.items():
                setattr(self, k, v)

    def ok(self):
        """Deliveries we answered with 2xx, in arrival order."""
        with self._lock:
            return [d for d in self.deliveries if d.status is not None and 200 <= d.status < 300]

    def all(self):
        with self._lock:
            return list(self.deliveries)

    def wait(self, pred, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred(self):
                return True
            time.sleep(0.05)
        return pred(self)

    def delivered_payloads(self, topic=None):
        """Every message payload in 2xx-answered bodies, in order (gap envelopes skipped)."""
        out = []
        for d in self.ok():
            for e in d.envelopes():
                if "sluice" in e:
                    continue
                if topic is None or e["topic"] == topic:
                    out.append(e["data"])
        return out

    def down_url(self, path="/hook"):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        return f"http://127.0.0.1:{port}{path}"

    def never_accepting_url(self, path="/hook"):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        self._idle_socks.append(s)
        return f"http://127.0.0.1:{s.getsockname()[1]}{path}"

    def close(self):
        for s in self._idle_socks:
            s.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    # -- server ----------------------------------------------------------------------------
    def _verify(self, request, body):
        if not self.secrets:
            return
        mid = request.headers.get("webhook-id", "")
        ts = request.headers.get("webhook-timestamp", "")
        sigs = request.headers.get("webhook-signature", "").split()
        signed = f"{mid}.{ts}.".encode() + body
        for key in self.secrets:
            want = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
            if want not in sigs:
                self.bad_signatures += 1
                return

    async def _handle(self, request):
        body = await request.read()
        with self._lock:
            mode = self.mode
            delay, status, ra, reject = self.delay, self.status, self.retry_after, self.reject
            reject_status = self.reject_status
            if mode == "flapping":
                self._flap += 1
                status = 500 if self._flap % 2 else 200
            step = (self.script.pop(0) if self.script else {}) if mode == "script" else {}
            self._verify(request, body)
        answer = None
        if mode in ("ok", "slow"):
            answer = 200
        elif mode in ("status", "flapping"):
            answer = status
        elif mode == "script":
            answer = step.get("status", 200)
            ra, delay = step.get("retry_after"), step.get("delay", 0)
        elif mode == "reject_id":
            # Dead letters (posted under /dlq) carry the rejected payload: accept those.
            hit = reject is not None and reject.encode() in body
            answer = reject_status if hit and not request.path.startswith("/dlq") else 200
        d = Delivery(request.raw_path.split("?")[0], dict(request.headers), body, answer,
                     time.monotonic())
        with self._lock:
            self.deliveries.append(d)
        if mode in ("slow", "script") and delay:
            await asyncio.sleep(delay)
        if mode == "hang_headers":
            await asyncio.sleep(3600)
        if mode == "reset":
            request.transport.abort()
            d.status = None
            raise asyncio.CancelledError()
        if mode == "hang_body":
            resp = web.StreamResponse(status=200)
            resp.content_length = 100
            await resp.prepare(request)
            await resp.write(b"x")
            await asyncio.sleep(3600)
            return resp
        headers = {}
        if ra is not None and answer is not None and answer >= 300:
            headers["Retry-After"] = str(ra() if callable(ra) else ra)
        if answer is not None and 300 <= answer < 400:
            headers["Location"] = "/redirected"  # must not be followed
        text = step.get("body", "answer %d" % answer)
        return web.Response(status=answer, text=text, headers=headers)

    def _run(self):
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()
