#!/usr/bin/python3
"""Chaos scenario: 10,000 failing endpoints (FAILURES.md, issue 13). The "pusher" service kept a
circuit breaker per endpoint in a registry with a soft cap that never evicted open breakers.
Here every topic e/N is delivered by its own sink to its own origin http://127.X.Y.Z:PORT/
(distinct loopback addresses, nothing listening: connections are refused), with the
breaker registry capped at 1,000 (breaker_registry_max). One more origin answers 503 and
records when it is tried: the "parked" stream, first to take a breaker.

Phases: the endpoints refuse (full 60 s, --short 20 s), then a receiver listens on PORT for
every address and answers 200 until every topic is delivered, then the breakers' idle TTL
(5 s) passes. --short uses 3,000 endpoints and a cap of 300 (the ratio of the full run), so
the scenario stays under a minute on 2 cores.

Pass:
  * the registry never holds more than its cap in any scrape (sum of sluice_sink_breakers);
  * streams that found it full of busy breakers waited (sluice_sink_breaker_registry_full_total
    grows) rather than evicting a busy breaker;
  * RSS is flat while everything fails: its largest value in the last third of the phase is
    within 8 MiB of its largest in the first third;
  * the parked stream's breaker is never evicted: after it opened, its attempts stay spaced
    by at least breaker_open (2 s, minus 10 %) and its origin is tried a bounded number of
    times;
  * once the endpoints answer, every topic is delivered, and after the TTL the registry is
    empty;
  * the server exits cleanly on SIGTERM.

  bench/chaos/endpoints.py [--short]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loadkit as lk  # noqa: E402
from proc import Server, free_port  # noqa: E402
from report import out_dir, verdict  # noqa: E402
from sinkrecv import SinkReceiver  # noqa: E402

BREAKER_OPEN_S = 2.0
TTL_S = 5


def addr(i):
    # 127.1.0.1 ... : distinct loopback addresses, never 127.0.0.1 (the parked one's).
    i += 1
    return f"127.{1 + i // 65536}.{(i // 256) % 256}.{i % 256}"


def breakers(m):
    return sum(lk.metric(m, "sluice_sink_breakers", state=s) for s in ("closed", "open",
                                                                       "half_open"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--short", action="store_true")
    a = ap.parse_args()
    n, cap, fail_s = (3000, 300, 20) if a.short else (10000, 1000, 60)
    out = out_dir("endpoints")
    port = free_port()
    parked = SinkReceiver()
    parked.set("down")
    common = ("type = webhook\nallow_private = true\nbatch_max_messages = 1\nbatch_linger = 0\n"
              "connect_timeout = 1s\ntimeout = 2s\nretry_initial = 200ms\nretry_max = 1s\n"
              f"breaker_failures = 2\nbreaker_open = {int(BREAKER_OPEN_S * 1000)}ms\n"
              "breaker_open_max = 4s\n")
    parts = ["log_level = error\n",
             f"[sinks]\nbreaker_registry_max = {cap}\nbreaker_idle_ttl = {TTL_S}s\n"
             "max_in_flight = 256\n",
             f"[sink \"parked\"]\ntopics = parked\nurl = http://127.0.0.1:{parked.port}/p\n"
             + common]
    for i in range(n):
        parts.append(f"[sink \"e{i}\"]\ntopics = e/{i}\nurl = http://{addr(i)}:{port}/\n" + common)
    t_cfg = time.monotonic()
    srv = Server("".join(parts), memory_limit="256MiB")
    started_s = time.monotonic() - t_cfg
    print(f"# endpoints: {n} refusing origins, registry cap {cap}, started in {started_s:.1f} s; "
          f"out {out}", flush=True)
    # /metrics has ~28 lines per sink (16 MiB at 10,000 sinks): a generous read timeout, and
    # a scrape every 2 s in the full profile.
    probe = lk.KeepAlive(srv.port, timeout=60)
    every = 0.5 if a.short else 2.0
    pub = lk.KeepAlive(srv.port)
    rows, t0 = [], time.monotonic()
    phase = ["fail"]
    max_seen = [0]

    def sample():
        m = probe.metrics()
        b = breakers(m)
        max_seen[0] = max(max_seen[0], b)
        rows.append({"t": round(time.monotonic() - t0, 1), "phase": phase[0],
                     "rss_mb": round(srv.rss() / lk.MiB, 2), "breakers": int(b),
                     "open": int(lk.metric(m, "sluice_sink_breakers", state="open")),
                     "registry_full": int(lk.metric(m, "sluice_sink_breaker_registry_full_total")),
                     "evictions_lru": int(lk.metric(m, "sluice_sink_breaker_evictions_total",
                                                    reason="lru")),
                     "evictions_ttl": int(lk.metric(m, "sluice_sink_breaker_evictions_total",
                                                    reason="ttl"))})
        return rows[-1]

    st, _, _ = pub.request("POST", "/topics/parked", b"p")
    time.sleep(0.3)
    for i in range(n):
        pub.request("POST", f"/topics/e/{i}", f"m{i}".encode())
    published_at = time.monotonic()
    while time.monotonic() < published_at + fail_s:
        sample()
        time.sleep(every)
    fails = [r for r in rows if r["phase"] == "fail"]
    parked_times = list(parked.times.get("/p", []))
    # The endpoints answer: every address, one port.
    phase[0] = "back"
    rcv = SinkReceiver(host="0.0.0.0", port=port)
    parked.set("ok")
    deadline = time.monotonic() + (60 if a.short else 300)
    delivered = 0
    while time.monotonic() < deadline:
        sample()
        with rcv.lock:
            delivered = len(rcv.seqs)
        if delivered == n:
            break
        time.sleep(every)
    back_s = time.monotonic() - t0
    phase[0] = "ttl"
    ttl_end = time.monotonic() + TTL_S + 3
    while time.monotonic() < ttl_end:
        if sample()["breakers"] == 0:
            break
        time.sleep(0.5)
    final = sample()
    alive = srv.alive()
    probe.close()
    pub.close()
    code = srv.stop()
    srv.cleanup()
    lk.write_rows(out / "endpoints.csv", rows)

    third = max(1, len(fails) // 3)
    rss_first = max(r["rss_mb"] for r in fails[:third])
    rss_last = max(r["rss_mb"] for r in fails[-third:])
    gaps = [b - a for a, b in zip(parked_times, parked_times[1:])]
    spaced = gaps[2:]  # after breaker_failures (2) attempts the breaker is open
    figures = dict(
        endpoints=n, cap=cap, startup_s=round(started_s, 1), max_breakers_seen=max_seen[0],
        registry_full_waits=fails[-1]["registry_full"] if fails else 0,
        rss_fail_first_third_mib=rss_first, rss_fail_last_third_mib=rss_last,
        parked_attempts=len(parked_times),
        parked_min_spacing_s=round(min(spaced), 2) if spaced else "n/a",
        delivered_topics=delivered, drained_at_s=round(back_s, 1),
        breakers_after_ttl=final["breakers"], evictions_lru=final["evictions_lru"],
        evictions_ttl=final["evictions_ttl"])
    checks = {
        "clean_exit": alive and code == 0,
        "registry_never_above_cap": max_seen[0] <= cap,
        "waited_for_a_slot": bool(fails) and fails[-1]["registry_full"] > 0,
        "rss_flat_while_failing": rss_last - rss_first <= 8,
        "parked_probes_spaced": bool(spaced) and min(spaced) >= BREAKER_OPEN_S * 0.9 and
        len(parked_times) <= 2 + fail_s / (BREAKER_OPEN_S * 0.9) + 1,
        "every_topic_delivered": delivered == n,
        "registry_empty_after_ttl": final["breakers"] == 0,
    }
    failed = [k for k, v in checks.items() if not v]
    if failed:
        figures["failed"] = ",".join(failed)
    figures["out"] = out
    ok = not failed
    verdict("endpoints", ok, **figures)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
