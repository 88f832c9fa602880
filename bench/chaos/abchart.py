#!/usr/bin/python3
"""The A/B chart of the stalled scenario: sluice and nginx + nchan under the same load, one PNG
in three panels sharing the time axis: server RSS (log scale, with sluice's memory_limit),
publishes accepted per second, and the fast readers' p99 latency per sample.

  bench/chaos/abchart.py DIR [OUT.png] [--title TEXT]

DIR holds what `stalled.py --ab` records: stalled-sluice.csv and stalled-nchan.csv (the sampler:
t, rss_mb) and latency-sluice.csv and latency-nchan.csv (the load tool's samples on the same
clock: t, p99_ms, accepted_per_s). OUT defaults to DIR/stalled-ab.png. Debian's gnuplot.
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import has_cairo, run_gnuplot  # noqa: E402

LIMIT_MB = 64
COLORS = {"sluice": "#1565c0", "nchan": "#c62828"}
NAMES = {"sluice": "sluice", "nchan": "nginx + nchan"}


def col(path, name):
    """1-based index of column `name` in a CSV's header, or None."""
    header = Path(path).read_text().splitlines()[0].split(",")
    return header.index(name) + 1 if name in header else None


def plot_ab(d, png, title):
    d = Path(d)
    panels = []
    t_max = 0.0
    for f in d.glob("stalled-*.csv"):
        rows = f.read_text().splitlines()
        ti = col(f, "t")
        if ti is not None and len(rows) > 1:
            t_max = max(t_max, float(rows[-1].split(",")[ti - 1]))
    for key, csv_name, column, ylabel in (
            ("rss", "stalled-{}.csv", "rss_mb", "RSS (MB, log)"),
            ("rate", "latency-{}.csv", "accepted_per_s", "publishes accepted / s"),
            ("p99", "latency-{}.csv", "p99_ms", "fast readers p99 (ms, log)")):
        plots = []
        for kind in ("sluice", "nchan"):
            path = d / csv_name.format(kind)
            if not path.exists():
                continue
            xi, yi = col(path, "t"), col(path, column)
            if xi is None or yi is None:
                continue
            # p99 of 0 (no delivery in the window) cannot be drawn on a log axis: skipped.
            using = f"{xi}:(${yi} > 0 ? ${yi} : 1/0)" if key != "rate" else f"{xi}:{yi}"
            plots.append(f"'{path}' using {using} with lines lw 2 lc rgb '{COLORS[kind]}' "
                         f"title '{NAMES[kind]}'")
        if key == "rss":
            plots.append(f"{LIMIT_MB} with lines dt 2 lw 2 lc rgb '#555555' "
                         f"title 'sluice memory_limit ({LIMIT_MB} MiB)'")
        panels.append((key, ylabel, plots))
    script = [
        "set terminal pngcairo size 1000,900 font 'sans,10' noenhanced" if has_cairo()
        else "set terminal png size 1000,900 noenhanced",
        f"set output '{png}'",
        "set datafile separator ','",
        "set grid",
        "set key top left",
        f"set xrange [0:{t_max or 1}]",
        "set multiplot layout 3,1 title '" + title.replace("'", "") + "'",
    ]
    for i, (key, ylabel, plots) in enumerate(panels):
        script += [
            "set logscale y" if key in ("rss", "p99") else "unset logscale y",
            "set yrange [*:*]\nset offsets 0, 0, 0, 0" if key != "rate" else
            "set yrange [0:*]\nset offsets 0, 0, graph 0.12, 0",
            f"set ylabel '{ylabel}'",
            "set xlabel 'seconds'" if i == len(panels) - 1 else "unset xlabel",
            "plot " + ", ".join(plots) if plots else "",
        ]
    script.append("unset multiplot")
    return run_gnuplot("\n".join(script))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir")
    ap.add_argument("out", nargs="?")
    ap.add_argument("--title", default="A/B, same load: fast readers + waves of stalled "
                    "readers, sluice against nginx + nchan")
    a = ap.parse_args()
    out = a.out or str(Path(a.dir) / "stalled-ab.png")
    return 0 if plot_ab(a.dir, out, a.title) else 1


if __name__ == "__main__":
    sys.exit(main())
