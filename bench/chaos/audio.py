#!/usr/bin/python3
"""Chaos scenario: the audio-upload incident (FAILURES.md, issue 13). A "pusher" forwarded
realtime audio to a webhook through unbounded queues (OOM), then through a 20-item queue that
dropped irreplaceable audio. Here: 30 publishers x 16 KiB/s into lossless topics audio/pN, a
webhook sink with 4 requests in flight to a receiver taking 2 s per request; healthy, then the
receiver down (503), then back; memory_limit 64MiB. Beside it, 10 publishers into lossy topics
live/pN through a second sink, the same receiver.

Profiles: full 60 s healthy, 120 s down, 120 s back; --short 6 s, 14 s, 34 s (under 60 s).
The rings are bounded (max_bytes = 256KiB a topic) so they are full within the healthy phase.

Pass:
  * RSS stays within memory_limit + 32 MiB, and is flat: its largest value in the last third
    of the down phase is within 8 MiB of its largest in the first third (the backlog goes to
    disk, not memory);
  * every accepted id of every lossless topic is delivered (duplicates allowed: at least once);
  * the lossless backlog drains within 10 % of the theoretical time (plus retry_max and
    breaker_open_max, 1 s, the longest a stream may still be waiting when the receiver returns,
    and the 0.5 s sampling): every message published before the recovery is delivered within
    2 s + ceil((Q - 1) / 4) x 2 s, Q = sum over topics of 1 + ceil(backlog / 64): the batch a
    stream holds is retried as it was (stable webhook-id), then the backlog goes at 64 chunks
    (batch_max_bytes) a request, 4 requests of 2 s at a time; the first request after the
    outage is the breaker's half-open probe, which goes alone;
  * on the lossy topics every id is delivered or counted in a gap envelope, and the receiver's
    gap count equals sluice_sink_gap_messages_total;
  * the server exits cleanly on SIGTERM.

  bench/chaos/audio.py [--short]
"""

import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loadkit as lk  # noqa: E402
from proc import Server  # noqa: E402
from report import out_dir, verdict  # noqa: E402
from sinkrecv import SinkReceiver  # noqa: E402

LOSSLESS_PUBS, LOSSY_PUBS = 30, 10
MSG = 16384
RATE = 1  # one 16 KiB chunk a second per publisher: 16 KiB/s
BATCH = 100
BATCH_BYTES = 1 << 20  # batch_max_bytes (the default): 64 chunks a request
IN_FLIGHT = 4
REQ_S = 2.0
LIMIT_MIB = 64


def publisher(port, topic, stop, stats):
    c = lk.KeepAlive(port)
    body = b"a" * MSG
    t0, i = time.monotonic(), 0
    while not stop.is_set():
        d = t0 + i / RATE - time.monotonic()
        if d > 0:
            time.sleep(d)
        i += 1
        try:
            st, _, _ = c.request("POST", f"/topics/{topic}", body)
        except OSError:
            st = 0
        with stats["lock"]:
            if st == 202:
                stats["ok"][topic] = stats["ok"].get(topic, 0) + 1
            else:
                stats["refused"] += 1
    c.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--short", action="store_true")
    a = ap.parse_args()
    healthy, down, back = (6, 14, 34) if a.short else (60, 120, 120)
    out = out_dir("audio")
    rcv = SinkReceiver()
    rcv.set("ok", delay=REQ_S)
    conf = (
        "log_level = warn\n"
        "[topic \"audio/*\"]\ndurability = lossless\ndisk_quota = 2GiB\nmax_bytes = 256KiB\n"
        "[topic \"live/*\"]\nmax_messages = 8\n"
        "[sinks]\nmax_in_flight = 64\n"
        f"[sink \"audio\"]\ntype = webhook\ntopics = audio/*\nstart = oldest\n"
        f"url = http://127.0.0.1:{rcv.port}/audio\nallow_private = true\n"
        f"max_in_flight = {IN_FLIGHT}\nbatch_max_messages = {BATCH}\nbatch_linger = 0\n"
        "timeout = 10s\nretry_initial = 200ms\nretry_max = 1s\n"
        "breaker_open = 500ms\nbreaker_open_max = 1s\n"
        f"[sink \"live\"]\ntype = webhook\ntopics = live/*\n"
        f"url = http://127.0.0.1:{rcv.port}/live\nallow_private = true\n"
        f"max_in_flight = {IN_FLIGHT}\nbatch_max_messages = {BATCH}\nbatch_linger = 0\n"
        "timeout = 10s\nretry_initial = 200ms\nretry_max = 1s\n"
        "breaker_open = 500ms\nbreaker_open_max = 1s\n")
    srv = Server(conf, memory_limit=f"{LIMIT_MIB}MiB")
    print(f"# audio: {LOSSLESS_PUBS} x {MSG * RATE // 1024} KiB/s lossless + {LOSSY_PUBS} lossy, "
          f"{IN_FLIGHT} in flight, {REQ_S} s per request; {healthy}/{down}/{back} s; out {out}",
          flush=True)
    probe = lk.KeepAlive(srv.port)
    stats = {"lock": threading.Lock(), "ok": {}, "refused": 0}
    stop = threading.Event()
    topics = [f"audio/p{i}" for i in range(LOSSLESS_PUBS)]
    lossy = [f"live/p{i}" for i in range(LOSSY_PUBS)]
    threads = [threading.Thread(target=publisher, args=(srv.port, t, stop, stats), daemon=True)
               for t in topics + lossy]
    for t in threads:
        t.start()
    rows, t0 = [], time.monotonic()
    phase = ["healthy"]

    def sample():
        m = probe.metrics()
        rows.append({"t": round(time.monotonic() - t0, 1), "phase": phase[0],
                     "rss_mb": round(srv.rss() / lk.MiB, 2),
                     "accounted_mb": round(lk.metric(m, "sluice_memory_accounted_bytes") / lk.MiB,
                                           2),
                     "backlog": int(lk.metric(m, "sluice_sink_backlog_messages", sink="audio")),
                     "in_flight": int(lk.metric(m, "sluice_sink_in_flight", sink="audio"))})
        return rows[-1]

    def run_for(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            sample()
            time.sleep(0.5)

    run_for(healthy)
    phase[0] = "down"
    rcv.set("down")
    run_for(down)
    phase[0] = "back"
    rcv.set("ok")
    recovered = time.monotonic()
    backlog0 = sample()["backlog"]
    with stats["lock"]:
        owed = {t: stats["ok"].get(t, 0) for t in topics}
    per_req = min(BATCH, BATCH_BYTES // MSG)
    # Each stream first retries the batch it holds, as it was (its webhook-id and body are
    # stable across retries): one request, then what is left at full batches.
    q = sum(1 + -(-(owed[t] - len(rcv.delivered(t))) // per_req) for t in topics)
    # The endpoint's breaker opened while it was down: when it half-opens, one probe goes
    # alone (a 2 s request), and the other streams follow once it succeeded.
    theory = REQ_S + -(-(q - 1) // IN_FLIGHT) * REQ_S
    drained_at = None
    end = recovered + back
    while time.monotonic() < end:
        sample()
        if drained_at is None and all(
                len(rcv.delivered(t) & set(range(1, owed[t] + 1))) == owed[t] for t in topics):
            drained_at = time.monotonic() - recovered
        time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(10)
    # Let the last published messages arrive.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (sample()["backlog"] > 0 or any(
            len(rcv.delivered(t)) < stats["ok"].get(t, 0) for t in topics)):
        if drained_at is None and all(
                len(rcv.delivered(t) & set(range(1, owed[t] + 1))) == owed[t] for t in topics):
            drained_at = time.monotonic() - recovered
        time.sleep(0.5)
    m = probe.metrics()
    lk.write_rows(out / "audio.csv", rows)
    with rcv.lock:
        lk.write_rows(out / "requests.csv",
                      [{"t": round(t - t0, 3), "path": p, "messages": n, "status": st}
                       for t, p, n, st in rcv.log])
    missing = {}
    for t in topics:
        n = stats["ok"].get(t, 0)
        miss = n - len(rcv.delivered(t) & set(range(1, n + 1)))
        if miss:
            missing[t] = miss
    lossy_bad = 0
    lossy_missed = 0
    for t in lossy:
        n = stats["ok"].get(t, 0)
        got = len(rcv.delivered(t) & set(range(1, n + 1)))
        lossy_missed += rcv.gaps.get(t, 0)
        if got + rcv.gaps.get(t, 0) != n:
            lossy_bad += 1
    gap_metric = int(lk.metric(m, "sluice_sink_gap_messages_total", sink="live"))
    alive = srv.alive()
    probe.close()
    code = srv.stop()
    srv.cleanup()

    rss_max = max(r["rss_mb"] for r in rows)
    downs = [r for r in rows if r["phase"] == "down"]
    third = max(1, len(downs) // 3)
    rss_first = max(r["rss_mb"] for r in downs[:third])
    rss_last = max(r["rss_mb"] for r in downs[-third:])
    slack = 1.0 + 0.5
    figures = dict(
        published=sum(stats["ok"].values()), refused=stats["refused"],
        rss_max_mib=rss_max, rss_allowed_mib=LIMIT_MIB + 32,
        rss_down_first_third_mib=rss_first, rss_down_last_third_mib=rss_last,
        backlog_at_recovery=backlog0, drain_theory_s=round(theory, 1),
        requests_owed=q,
        drain_s=round(drained_at, 1) if drained_at is not None else "never",
        lossless_missing=sum(missing.values()), lossy_topics_bad=lossy_bad,
        lossy_gap_messages=lossy_missed, lossy_gap_metric=gap_metric,
        receiver_max_in_flight=rcv.max_inflight)
    checks = {
        "clean_exit": alive and code == 0,
        "rss_within_limit_plus_32mib": rss_max <= LIMIT_MIB + 32,
        "rss_flat_while_down": rss_last - rss_first <= 8,
        "every_lossless_id_delivered": not missing,
        "drained_within_10pct": drained_at is not None and drained_at <= theory * 1.1 + slack,
        "lossy_losses_only_counted_gaps": lossy_bad == 0 and lossy_missed == gap_metric,
    }
    failed = [k for k, v in checks.items() if not v]
    if failed:
        figures["failed"] = ",".join(failed)
    figures["out"] = out
    ok = not failed
    verdict("audio", ok, **figures)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
