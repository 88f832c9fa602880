"""A minimal webhook receiver for the sink chaos scenarios: aiohttp on 127.0.0.1 in a thread,
recording only what it must (the message ids per topic, gap counts, request times), so a long
run costs it little memory. Modes: ok (answer 200 after `delay` s), down (503 at once)."""

import asyncio
import json
import threading
import time

from aiohttp import web


class SinkReceiver:
    def __init__(self, host="127.0.0.1", port=0):
        self.mode, self.delay = "ok", 0.0
        self.lock = threading.Lock()
        self.seqs = {}      # topic -> set of seqs received in 2xx-answered requests
        self.gaps = {}      # topic -> messages reported missed by gap envelopes
        self.requests = {"ok": 0, "down": 0}
        self.times = {}     # path -> request arrival times (monotonic)
        self.inflight = 0
        self.max_inflight = 0
        self.log = []       # (arrival time, path, messages, answered status) per request
        self._host, self._port = host, port
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(10)

    def set(self, mode, delay=None):
        with self.lock:
            self.mode = mode
            if delay is not None:
                self.delay = delay

    def delivered(self, topic):
        with self.lock:
            return set(self.seqs.get(topic, ()))

    async def _handle(self, request):
        body = await request.read()
        with self.lock:
            mode, delay = self.mode, self.delay
            self.times.setdefault(request.path, []).append(time.monotonic())
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            if mode == "down":
                with self.lock:
                    self.requests["down"] += 1
                    self.log.append((time.monotonic(), request.path, -1, 503))
                return web.Response(status=503, text="down")
            if delay:
                await asyncio.sleep(delay)
            got, gaps = [], {}
            for line in body.split(b"\n"):
                if not line:
                    continue
                e = json.loads(line)
                if e.get("sluice") == "gap":
                    gaps[e["topic"]] = gaps.get(e["topic"], 0) + (e.get("missed") or 0)
                elif "id" in e:
                    got.append((e["topic"], int(e["id"].rsplit("-", 1)[1])))
            with self.lock:
                self.requests["ok"] += 1
                self.log.append((time.monotonic(), request.path, len(got), 200))
                for t, s in got:
                    self.seqs.setdefault(t, set()).add(s)
                for t, n in gaps.items():
                    self.gaps[t] = self.gaps.get(t, 0) + n
            return web.Response(status=200, text="ok")
        finally:
            with self.lock:
                self.inflight -= 1

    def _run(self):
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, self._host, self._port, backlog=1024)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
