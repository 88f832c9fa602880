"""What a chaos scenario leaves behind: its output directory, charts of its CSV columns drawn
with gnuplot (skipped, with a note, when gnuplot is missing), and the one VERDICT line it is
judged by.

Run with Debian's interpreter (/usr/bin/python3); only the standard library is used.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from proc import REPO


def plot(csv_path, png_path, title, series, ylabel="MB", limit_mb=None, y2=None):
    """Draws columns of a CSV (by name) against t with gnuplot. `series` is a list of
    (column, label); `limit_mb` adds a horizontal memory_limit line; `y2` is an optional list of
    (column, label) on the right axis. Returns False (and says why) if gnuplot is missing."""
    if shutil.which("gnuplot") is None:
        print("plot skipped: gnuplot is not installed", file=sys.stderr)
        return False
    header = Path(csv_path).read_text().splitlines()[0].split(",")
    col = {name: i + 1 for i, name in enumerate(header)}
    plots = [f"'{csv_path}' using 1:{col[c]} with lines lw 2 title '{label}'"
             for c, label in series if c in col]
    if limit_mb is not None:
        plots.append(f"{limit_mb} with lines dt 2 lw 2 lc rgb 'red' title 'memory_limit'")
    for c, label in (y2 or []):
        if c in col:
            plots.append(f"'{csv_path}' using 1:{col[c]} axes x1y2 with lines title '{label}'")
    script = "\n".join([
        "set terminal pngcairo size 1000,560 font 'sans,11'" if has_cairo() else
        "set terminal png size 1000,560",
        f"set output '{png_path}'",
        "set datafile separator ','",
        "set key top left",
        f"set title '{title}'",
        "set xlabel 'seconds'",
        f"set ylabel '{ylabel}'",
        "set grid",
        "set yrange [0:*]",
        "set y2tics" if y2 else "",
        "set y2range [0:*]" if y2 else "",
        "plot " + ", ".join(plots),
    ])
    return run_gnuplot(script)


def run_gnuplot(script):
    """Runs a gnuplot script; returns False (and says why) if gnuplot failed."""
    r = subprocess.run(["gnuplot"], input=script, text=True, capture_output=True)
    if r.returncode != 0:
        print("gnuplot failed: " + r.stderr, file=sys.stderr)
        return False
    return True


def has_cairo():
    r = subprocess.run(["gnuplot", "-e", "set terminal"], capture_output=True, text=True)
    return "pngcairo" in (r.stdout + r.stderr)


def verdict(name, ok, **figures):
    """Prints the one line a scenario is judged by: `VERDICT <name> PASS|FAIL k=v …`."""
    kv = " ".join(f"{k}={v}" for k, v in figures.items())
    print(f"VERDICT {name} {'PASS' if ok else 'FAIL'} {kv}", flush=True)
    return ok


def out_dir(name):
    """bench/out/chaos-<timestamp>/<name>/ (or $CHAOS_OUT/<name>)."""
    base = Path(os.environ.get("CHAOS_OUT") or
                REPO / "bench" / "out" / ("chaos-" + time.strftime("%Y%m%d-%H%M%S")))
    d = base / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def plot_connections(csv_path, png_path, title, extra_y2=()):
    """The standard chaos figure: server RSS (MB, left axis) and, on the right axis, the
    connection gauge (wide pale line), the kernel's ESTABLISHED count for the port (thin dashed
    line on top of it: where they differ, the two lines separate), CLOSE_WAIT sockets, and any
    `extra_y2` (column, label) series. Labels are printed literally (no gnuplot markup)."""
    if shutil.which("gnuplot") is None:
        print("plot skipped: gnuplot is not installed", file=sys.stderr)
        return False
    header = Path(csv_path).read_text().splitlines()[0].split(",")
    col = {name: i + 1 for i, name in enumerate(header)}
    src = f"'{csv_path}' using 1:"
    plots = [src + f"{col['rss_mb']} axes x1y1 with lines lw 2 lc rgb '#7b1fa2' "
             "title 'server RSS, MB (left axis)'",
             src + f"{col['gauge']} axes x1y2 with lines lw 7 lc rgb '#a5d6a7' "
             "title 'sluice_connections gauge (right axis)'",
             src + f"{col['kernel_established']} axes x1y2 with lines lw 1.5 dt 2 "
             "lc rgb '#1b5e20' title 'kernel: ESTABLISHED on the port (right axis)'",
             src + f"{col['close_wait']} axes x1y2 with lines lw 2 lc rgb '#e65100' "
             "title 'kernel: CLOSE_WAIT on the port (right axis)'"]
    colors = ["#1565c0", "#6d4c41", "#c62828", "#00838f"]
    for i, (c, label) in enumerate(extra_y2):
        if c in col:
            plots.append(src + f"{col[c]} axes x1y2 with lines lw 1.5 "
                         f"lc rgb '{colors[i % len(colors)]}' title '{label} (right axis)'")
    script = "\n".join([
        "set terminal pngcairo size 1100,650 font 'sans,11' noenhanced" if has_cairo() else
        "set terminal png size 1100,650 noenhanced",
        f"set output '{png_path}'",
        "set datafile separator ','",
        "set key below",
        f"set title '{title}'",
        "set xlabel 'seconds'",
        "set ylabel 'MB'",
        "set y2label 'connections / sockets'",
        "set grid",
        "set yrange [0:*]",
        "set y2range [0:*]",
        "set ytics nomirror",
        "set y2tics",
        "plot " + ", ".join(plots),
    ])
    return run_gnuplot(script)
