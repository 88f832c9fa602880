#!/usr/bin/python3
"""Chaos scenario 5: a topic nobody reads (FAILURES.md #3, #4: a queue that only grows).

One topic is published at 320 KiB/s (32 KiB messages, 10 a second) for 30 s (15 s with --short)
with no subscriber at all, its ring bounded by max_bytes = 2MiB (memory_limit 64MiB, far above:
the ring's own bound is what must hold).

Pass:
  * every publish is accepted (202);
  * sluice_memory_accounted_bytes never grows by more than the ring's bound + 512 KiB: the
    ring's payload bytes (2 MiB) plus what sluice charges beside payloads (per-message headers
    and frames, the ring's slot array, the topic, the publisher's request buffer and the
    /metrics and /topics answers being built, all well under 512 KiB);
  * RSS never grows by more than the ring's bound + 2 MiB: the same, plus the allocator's slack
    (up to a ring's worth of freed 32 KiB chunks kept in the heap for reuse rather than returned
    to the kernel) and the pages of code paths first used during the run; a ring that did not
    evict would exceed it within the run (4.7 MiB are published in the short profile, 9.4 MiB
    in the full one);
  * /topics shows the ring at its bound: bytes <= max_bytes and within one message of it, the
    number of messages that fit, head = the last id published and tail = head - messages + 1;
    sluice_evictions_total{reason="max_bytes"} = published - retained;
  * accounted bytes are flat once the ring is full: every sample after it first held all the
    messages that fit is within 128 KiB of the others (a publish in flight holds its request
    buffer, up to 64 KiB for a 32 KiB body, and the message being appended before the oldest is
    evicted).

  bench/chaos/noreaders.py [--short]
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loadkit as lk  # noqa: E402
from proc import Server  # noqa: E402
from report import out_dir, verdict  # noqa: E402
from sampling import Sampler  # noqa: E402

MSG = 32 * 1024
RATE = 10
BOUND = 2 * lk.MiB
ACC_OVERHEAD = 512 * 1024
RSS_OVERHEAD = 2 * lk.MiB
FLAT = 128 * 1024
TOPIC = "noreaders/t"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--short", action="store_true", help="15 s instead of 30 s")
    a = ap.parse_args()
    duration = 15 if a.short else 30
    out = out_dir("noreaders")
    print(f"# noreaders: {MSG} B x {RATE}/s for {duration} s, ring max_bytes 2MiB, no readers; "
          f"out {out}", flush=True)
    srv = Server("log_level = warn\n[topic \"*\"]\nmax_bytes = 2MiB\nmax_messages = 1024\n",
                 memory_limit="64MiB")
    lk.caching_metrics(srv)
    pub = lk.KeepAlive(srv.port)
    probe = lk.KeepAlive(srv.port)
    time.sleep(0.5)
    m0 = probe.metrics()
    acc0 = lk.metric(m0, "sluice_memory_accounted_bytes")
    rss0 = srv.rss()

    def extra():
        m = srv.last_metrics
        st, body, _ = probe.request("GET", "/topics")
        t = {x["name"]: x for x in json.loads(body)["topics"]}.get(TOPIC, {})
        return {"accounted_mb": round(lk.metric(m, "sluice_memory_accounted_bytes") / lk.MiB, 4),
                "ring_mb": round(t.get("bytes", 0) / lk.MiB, 4),
                "ring_messages": t.get("messages", 0),
                "rss_growth_mb": round((srv.rss() - rss0) / lk.MiB, 3),
                "accounted_growth_mb": round(
                    (lk.metric(m, "sluice_memory_accounted_bytes") - acc0) / lk.MiB, 4)}

    sampler = Sampler(srv, interval=0.5, extra=extra)
    ok_n = bad = 0
    last_id = None
    body = b"x" * MSG
    t0 = time.monotonic()
    n = int(duration * RATE)
    for i in range(n):
        due = t0 + i / RATE
        d = due - time.monotonic()
        if d > 0:
            time.sleep(d)
        st, rb, _ = pub.request("POST", f"/topics/{TOPIC}", body)
        if st == 202:
            ok_n += 1
            last_id = json.loads(rb)["id"]
        else:
            bad += 1
    time.sleep(1.0)
    rows = sampler.stop()
    sampler.write_csv(out / "noreaders.csv")
    m = probe.metrics()
    st, tb, _ = probe.request("GET", "/topics")
    topic = {x["name"]: x for x in json.loads(tb)["topics"]}.get(TOPIC, {})
    alive = srv.alive()
    pub.close()
    probe.close()
    code = srv.stop()
    srv.cleanup()

    acc_growth = max(r["accounted_growth_mb"] for r in rows) * lk.MiB
    rss_growth = max(r["rss_growth_mb"] for r in rows) * lk.MiB
    fits = BOUND // MSG
    head, tail = topic.get("head") or "-0", topic.get("tail") or "-0"
    head_seq, tail_seq = int(head.rsplit("-", 1)[1]), int(tail.rsplit("-", 1)[1])
    evicted = lk.metric(m, "sluice_evictions_total", reason="max_bytes")
    # Flatness once full: the samples after the ring first held `fits` messages.
    full = [r for r in rows if r["ring_messages"] >= fits]
    flat = (max(r["accounted_mb"] for r in full) - min(r["accounted_mb"] for r in full)
            if len(full) >= 3 else None)
    figures = dict(
        published=ok_n, refused=bad, payload_published_mib=round(ok_n * MSG / lk.MiB, 1),
        accounted_growth_max_kib=round(acc_growth / 1024),
        accounted_allowed_kib=(BOUND + ACC_OVERHEAD) // 1024,
        rss_growth_max_mib=round(rss_growth / lk.MiB, 2),
        rss_allowed_mib=(BOUND + RSS_OVERHEAD) / lk.MiB,
        ring_bytes=topic.get("bytes"), ring_messages=topic.get("messages"),
        ring_head=head_seq, ring_tail=tail_seq, evicted_max_bytes=int(evicted),
        accounted_spread_when_full_kib=round(flat * 1024, 1) if flat is not None else "n/a")
    checks = {
        "server_alive_and_clean_exit": alive and code == 0,
        "every_publish_accepted": ok_n == n and bad == 0,
        "accounted_within_bound_plus_overhead": acc_growth <= BOUND + ACC_OVERHEAD,
        "rss_within_bound_plus_overhead": rss_growth <= BOUND + RSS_OVERHEAD,
        "ring_at_bound": (topic.get("bytes", 0) <= BOUND and
                          topic.get("bytes", 0) > BOUND - MSG and
                          topic.get("messages") == fits),
        "ring_head_tail": (last_id == head and head_seq == ok_n and
                           tail_seq == head_seq - topic.get("messages", -1) + 1),
        "evictions_counted": evicted == ok_n - topic.get("messages", 0),
        "accounted_flat_when_full": flat is not None and flat * lk.MiB <= FLAT,
    }
    failed = [k for k, v in checks.items() if not v]
    if failed:
        figures["failed"] = ",".join(failed)
    figures["out"] = out
    csv = out / "noreaders.csv"
    lk.plot_curves(out / "noreaders.png",
                   f"noreaders: {MSG // 1024} KiB x {RATE}/s, no subscriber, ring max_bytes 2 MiB",
                   [(csv, "t", "rss_growth_mb", "RSS growth since start (MiB)"),
                    (csv, "t", "accounted_growth_mb", "sluice_memory_accounted_bytes growth (MiB)"),
                    (csv, "t", "ring_mb", "ring bytes from /topics (MiB)")],
                   "MiB",
                   hlines=[(BOUND / lk.MiB, "ring bound max_bytes (2 MiB)", "red"),
                           ((BOUND + RSS_OVERHEAD) / lk.MiB, "RSS allowance (bound + 2 MiB)",
                            "orange")])
    ok = not failed
    verdict("noreaders", ok, **figures)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
