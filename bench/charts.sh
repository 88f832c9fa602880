#!/usr/bin/env bash
# Redraws the recorded charts under bench/results/ from the CSVs recorded beside them (gnuplot):
#   bench/results/stalled-ab.png   from bench/results/ab/{stalled,latency}-{sluice,nchan}.csv
#                                  (bench/chaos/stalled.py --ab)
#   bench/results/soak.png         from bench/results/soak.csv (bench/chaos/soak.py)
#
#   bash bench/charts.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v gnuplot >/dev/null || {
    echo "gnuplot is missing: apt-get install gnuplot-nox" >&2
    exit 1
}
R=bench/results
PY=/usr/bin/python3
if [ -f $R/ab/stalled-sluice.csv ]; then
    title=$(cat $R/ab/title.txt 2>/dev/null || echo "A/B, same load: sluice against nginx + nchan")
    $PY bench/chaos/abchart.py $R/ab $R/stalled-ab.png --title "$title"
    echo "$R/stalled-ab.png"
fi
if [ -f $R/soak.csv ]; then
    $PY bench/chaos/soak.py --plot $R/soak.csv $R/soak.png
    echo "$R/soak.png"
fi
