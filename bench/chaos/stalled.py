#!/usr/bin/python3
"""Chaos scenario 1: stalled readers (FAILURES.md #1, #3, #6).

50 fast subscribers (sluice-load --mix: half SSE, half WebSocket) and waves of 200 stalled ones
(SO_RCVBUF 1 KiB, never read a byte; half SSE, half WebSocket) on one topic, a publisher at 2,000 msg/s x 1 KiB, sluice with memory_limit =
64MiB and write_stall_timeout = 20s. A new wave of stalled readers arrives every 60 s (24 s in
the short profile of 65 s); when it does, the clients of the previous waves go away (reset), as
closed tabs would. Stalled connections are thus created and closed all run long, and the last
wave is timed so that the run ends with the fast readers alone.

Before the stalled run, the same load without stalled readers gives the baseline latency.

Pass (sluice):
  * RSS slope over the second half < 1 MB/min; RSS never above memory_limit + 32 MiB; the mean
    RSS of the last third at most 15 MB above the first third's, and fewer than 10 consecutive
    rising samples in the second half (RSS sampled every 2 s; the first pages touched at start
    are not growth);
  * the fast readers lose nothing, see no gap, every publish is accepted and the publisher is
    never held up; their p99 latency is under 2x the baseline's;
  * every stalled reader is handled by its policy: each one falls behind the ring (counted in
    sluice_gaps_total) and is closed by the write-stall timeout
    (sluice_connections_closed_total{reason="write_stall"} equals the number opened);
  * after the last wave the gauge is back to the fast readers + the publisher, and whenever the
    kernel's count held still the gauge agreed with it (no ghost persists across two samples);
  * the server is alive at the end and exits 0 on SIGTERM.

--ab runs the same load (same waves) against nginx + nchan and draws both RSS curves with
sluice's memory_limit in one chart. nchan's figures are reported, not judged.

  bench/chaos/stalled.py [--short] [--ab] [--minutes M]

--minutes M is the soak: M minutes of the same load (e.g. 60), judged by the same checks.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loadkit as lk  # noqa: E402
from abchart import plot_ab  # noqa: E402
from proc import NchanServer, Server  # noqa: E402
from report import out_dir, verdict  # noqa: E402
from sampling import Sampler, slope_mb_per_min  # noqa: E402

FAST, STALLED, RATE, SIZE = 50, 200, 2000, 1024
LIMIT, LIMIT_MB = "64MiB", 64
STALL_S = 20
NCHAN_RSS_CAP = 8 * 2**30  # stop the nchan run before it takes the machine down


def sluice_config():
    return (f"write_stall_timeout = {STALL_S}s\nlog_level = warn\n"
            "[limits]\nmax_connections_per_ip = 1000000\n"
            '[topic "*"]\nmax_messages = 1024\n')


def mixed_supported():
    return "--mix" in lk.load_usage()


def run(kind, duration, waves, out, label):
    """One run of the load against a fresh server. kind: "sluice" or "nchan"; waves: times (s
    after the load tool started) at which STALLED stalled readers are opened. Returns figures."""
    if kind == "sluice":
        srv = Server(sluice_config(), memory_limit=LIMIT)
        sse, ws, pub = "/topics/st", "/topics/st", "/topics/st"
    else:
        srv = NchanServer()
        sse, ws, pub = "/sub/st", "/ws/st", "/pub/st"
    opened = []  # one StalledReaders per wave

    def held():
        return sum(len(w.socks) for w in opened)

    sampler = Sampler(srv, interval=2.0, extra=lambda: {"stalled_open_client_side": held()})
    args = ["stalled", "--port", srv.port, "-f", FAST, "-t", 0, "-r", RATE, "--size", SIZE,
            "-d", duration, "--sub-path", sse, "--pub-path", pub,
            "--server-pid", ",".join(map(str, srv.pids)), "--sample-ms", 2000,
            "--csv", out / f"load-{label}.csv"]
    mixed = mixed_supported()
    if mixed:
        args += ["--mix", "--ws-sub-path", ws]
    t0 = time.monotonic()
    t_off = t0 - sampler._t0
    load = lk.start_load(args, out / f"load-{label}.txt")
    pending = sorted(waves)
    capped = False
    while load.poll() is None:
        now = time.monotonic() - t0
        while pending and now >= pending[0]:
            pending.pop(0)
            # The previous waves' clients go away now (with a reset, as a closed tab's would):
            # sluice has long closed its side (write stall), nchan has not.
            for w in opened:
                w.close_all()
            w = lk.StalledReaders(srv.port)
            w.open(STALLED, sse, ws)
            opened.append(w)
        if kind == "nchan" and srv.rss() > NCHAN_RSS_CAP:
            capped = True
            load.terminate()
        time.sleep(0.1)
    rc, kv, text = lk.finish_load(load)
    t_load_end = time.monotonic() - t0
    rows = sampler.stop()
    sampler.write_csv(out / f"stalled-{label}.csv")
    # The fast readers' latency per sample, on the sampler's clock (the load tool's clock starts
    # when it starts publishing, about 1 s after it started).
    lat = []
    try:
        lines = (out / f"load-{label}.csv").read_text().splitlines()
        head = lines[0].split(",")
        for ln in lines[1:]:
            v = dict(zip(head, ln.split(",")))
            lat.append({"t": round(float(v["t_s"]) + t_off + 1.0, 2), "p99_ms": v.get("p99_ms"),
                        "max_ms": v.get("max_ms"), "accepted_per_s": v.get("accepted_per_s", ""),
                        "deliveries_per_s": v.get("deliveries_per_s", "")})
    except (OSError, IndexError, KeyError, ValueError):
        pass
    lk.write_rows(out / f"latency-{label}.csv", lat,
                  ["t", "p99_ms", "max_ms", "accepted_per_s", "deliveries_per_s"])
    res = {"kind": kind, "label": label, "rows": rows, "kv": kv, "load_rc": rc, "capped": capped,
           "mixed": mixed, "opened": {k: sum(w.opened[k] for w in opened) for k in ("sse", "ws")},
           "open_failed": sum(w.failed for w in opened),
           "t_load_end": t_load_end, "waves": list(waves), "sampler_errors": sampler.errors,
           "mismatches": list(sampler.mismatches)}
    res["alive"] = srv.alive()
    if kind == "sluice" and res["alive"]:
        res["metrics"] = srv.metrics()
    for w in opened:
        w.close_all()
    res["exit_code"] = srv.stop()
    if rc != 0 and not capped:
        print(f"sluice-load exited {rc}:\n{text}", file=sys.stderr)
    srv.cleanup()
    return res


def judge_sluice(res, base):
    kv, rows, m = res["kv"], res["rows"], res.get("metrics", {})
    f = {}
    ok = True

    def check(cond, name):
        nonlocal ok
        if not cond:
            ok = False
            f.setdefault("failed", [])
            f["failed"].append(name)

    rss_max = max([r["rss_mb"] for r in rows] + [kv.get("rss_max", 0) / 2**20])
    slope = slope_mb_per_min(rows)
    first, last = lk.thirds(rows)
    rise = lk.longest_rise([r for r in rows if r["t"] >= rows[-1]["t"] / 2])
    f.update(rss_max_mb=round(rss_max, 1), rss_slope_mb_per_min=round(slope, 3),
             rss_last_minus_first_third_mb=round(last - first, 2),
             longest_rss_rise_second_half=rise)
    check(res["alive"] and res["exit_code"] == 0, "server_alive_and_clean_exit")
    check(res["load_rc"] == 0 and kv.get("published", 0) > 0 and
          kv.get("fast_subscribed") == FAST, "load_tool_ran_every_fast_reader_subscribed")
    check(rss_max <= LIMIT_MB + 32, "rss_within_limit_plus_32MiB")
    check(slope < 1.0, "rss_slope_under_1MB_per_min")
    check(last - first <= 15, "rss_last_third_within_15MB_of_first")
    check(rise < 10, "fewer_than_10_consecutive_rises")

    p99, bp99 = kv.get("fast_p99_ms", 0), base["kv"].get("fast_p99_ms", 0)
    f.update(published=kv.get("published", 0), pub_ok=kv.get("pub_ok", 0),
             pub_blocked=kv.get("pub_blocked", 0), fast_delivered=kv.get("fast_delivered", 0),
             fast_missing=kv.get("fast_missing", -1), fast_gaps=kv.get("fast_gaps", -1),
             fast_p50_ms=kv.get("fast_p50_ms", 0), fast_p99_ms=p99, baseline_p99_ms=bp99,
             p99_ratio=round(p99 / bp99, 2) if bp99 else "n/a")
    check(kv.get("pub_ok", -1) == kv.get("published", -2) and kv.get("pub_err", 1) == 0 and
          kv.get("pub_blocked", 1) == 0, "every_publish_accepted_without_blocking")
    check(kv.get("fast_missing", 1) == 0 and kv.get("fast_gaps", 1) == 0 and
          kv.get("fast_delivered", 0) == kv.get("fast_expected", -1), "fast_readers_lose_nothing")
    check(base["kv"].get("fast_missing", 1) == 0 and bp99 > 0, "baseline_clean")
    check(bp99 > 0 and p99 < 2 * bp99, "fast_p99_under_2x_baseline")

    n_stalled = res["opened"]["sse"] + res["opened"]["ws"]
    closed_ws = lk.metric(m, "sluice_connections_closed_total", reason="write_stall")
    gaps = sum(v for k, v in m.items() if k.startswith("sluice_gaps_total"))
    f.update(stalled_opened=n_stalled, stalled_sse=res["opened"]["sse"],
             stalled_ws=res["opened"]["ws"], closed_write_stall=int(closed_ws),
             gaps_total=int(gaps), gap_messages=int(lk.metric(m, "sluice_gap_messages_total")))
    check(n_stalled == STALLED * len(res["waves"]) and res["open_failed"] == 0,
          "every_stalled_reader_opened")
    check(closed_ws == n_stalled, "every_stalled_reader_closed_by_write_stall")
    check(gaps >= n_stalled, "every_stalled_reader_counted_behind_the_ring")

    # The end state: the last wave closed, the fast readers and the publisher still connected.
    settle = max(res["waves"]) + STALL_S + 8
    tail = [r for r in rows if settle <= r["t"] <= res["t_load_end"] - 3 and r["gauge"] >= 0]
    expected = FAST + 1
    gauges = sorted({r["gauge"] for r in tail})
    kernel = sorted({r["kernel_established"] for r in tail})
    f.update(gauge_after_last_wave=",".join(map(str, gauges)) or "none",
             kernel_after_last_wave=",".join(map(str, kernel)) or "none",
             gauge_expected=expected)
    check(len(tail) >= 2 and gauges == [expected], "gauge_back_to_fast_readers")
    # A ghost is a mismatch that persists: two consecutive samples.
    ts = [r["t"] for r in rows]
    mism = [t for t, g, k in res["mismatches"]]
    persistent = sum(1 for a, b in zip(mism, mism[1:])
                     if ts.index(b) == ts.index(a) + 1)
    f.update(gauge_kernel_mismatches=len(mism), persistent_mismatches=persistent)
    check(persistent == 0, "gauge_matches_kernel")
    fws = kv.get("fast_ws", 0)
    f["transports"] = (f"fast:{FAST - fws}sse+{fws}ws,stalled:{res['opened']['sse']}sse+"
                       f"{res['opened']['ws']}ws")
    return ok, f


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--short", action="store_true", help="about 60 s of load (CI)")
    ap.add_argument("--ab", action="store_true", help="also run the load against nginx + nchan")
    ap.add_argument("--minutes", type=float, help="soak: this many minutes of load")
    a = ap.parse_args()
    if a.minutes:
        duration, base_s, every = a.minutes * 60, 60, 60
    elif a.short:
        duration, base_s, every = 65, 15, 24
    else:
        duration, base_s, every = 600, 60, 60
    # Waves from 1.5 s (the publisher starts 1 s after the fast readers), every `every` s (more
    # than STALL_S, so that sluice has closed a wave before its clients reset it), the last one
    # closed (STALL_S + a margin) before the run ends so that the end state can be checked.
    waves, t = [], 1.5
    while t + STALL_S + 15 <= duration:
        waves.append(t)
        t += every
    out = out_dir("stalled")
    name = "stalled" + ("-soak" if a.minutes else "")
    print(f"# {name}: {FAST} fast + waves of {STALLED} stalled at {waves} s, {RATE} msg/s x "
          f"{SIZE} B, {duration:.0f} s; baseline {base_s} s; out {out}", flush=True)
    if not mixed_supported():
        print("# note: this sluice-load has no --mix: fast readers are SSE only "
              "(stalled readers are half SSE, half WebSocket)", flush=True)

    base = run("sluice", base_s, [], out, "baseline")
    res = run("sluice", duration, waves, out, "sluice")
    ok, figures = judge_sluice(res, base)
    csv = out / "stalled-sluice.csv"
    lk.plot_curves(out / "stalled.png",
                   f"stalled: {FAST} fast + waves of {STALLED} stalled readers, {RATE} msg/s x "
                   f"1 KiB, write_stall_timeout {STALL_S}s",
                   [(csv, "t", "rss_mb", "sluice RSS (MB, left)"),
                    (csv, "t", "gauge", "sluice_connections gauge (right)", "y2", "lw 4"),
                    (csv, "t", "kernel_established", "kernel ESTABLISHED on the port (right)",
                     "y2", "lw 2 dt 3"),
                    (csv, "t", "stalled_open_client_side",
                     "stalled readers held open by their clients, never reading (right)", "y2",
                     "lw 1"),
                    (out / "latency-sluice.csv", "t", "p99_ms",
                     "fast readers: p99 latency per 2 s (ms, left)", "y1", "lw 1"),
                    (out / "latency-baseline.csv", "t", "p99_ms",
                     "the same without stalled readers (baseline run, ms, left)", "y1",
                     "lw 1 dt 2")],
                   "RSS (MB)  /  latency (ms)",
                   hlines=[(LIMIT_MB, "memory_limit (64 MiB)", "red")],
                   y2label="connections")
    if a.ab:
        nres = run("nchan", duration, waves, out, "nchan")
        nrows = nres["rows"]
        nk = nres["kv"]
        figures.update(
            nchan_rss_max_mb=round(max(r["rss_mb"] for r in nrows), 1),
            nchan_rss_slope_mb_per_min=round(slope_mb_per_min(nrows), 1),
            nchan_published=nk.get("published", "n/a"), nchan_pub_ok=nk.get("pub_ok", "n/a"),
            nchan_pub_blocked=nk.get("pub_blocked", "n/a"),
            nchan_fast_missing=nk.get("fast_missing", "n/a"),
            nchan_fast_p99_ms=nk.get("fast_p99_ms", "n/a"), nchan_capped=int(nres["capped"]))
        plot_ab(out, out / "stalled-ab.png",
                f"A/B, same load: {FAST} fast + waves of {STALLED} stalled readers, {RATE} msg/s "
                f"x 1 KiB; fast p99 sluice {figures.get('fast_p99_ms')} ms, nchan "
                f"{figures.get('nchan_fast_p99_ms')} ms")
    failed = figures.pop("failed", [])
    if failed:
        figures["failed"] = ",".join(failed)
    figures["out"] = out
    verdict(name, ok, **figures)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
