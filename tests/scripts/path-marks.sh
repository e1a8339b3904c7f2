#!/usr/bin/env bash
# Where the daemon's time goes between a prompt's POST and its request in the agent's pipe,
# step by step: builds the daemon with `path-marks` (and `alloc-count`, as the load harness
# does), runs the harness's overhead section (telemetry and the default plugins on) against
# it, and prints for each row the median and p90 of each step (µs from the previous stamped
# step; host/src/path_marks.rs names them, and each line lists them in order) and the median
# count of the allocations the admitting thread made in it. A step with no
# stamp in a turn (the `request` hook's plugins, when none runs there) folds into the next.
# The harness's next run rebuilds its own daemon. Takes about two minutes after the build.
#
# usage: tests/scripts/path-marks.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build -q --release -p acpd --features alloc-count,path-marks
# The harness finds its binary by this name (and `turn-timeline.sh` by its command line).
cp target/release/acpd "$work/acpd"
mkdir "$work/marks"
ACPD_PATH_MARKS="$work/marks" ACPD_BENCH_BIN="$work/acpd" ACPD_LOAD_MODES=plugins \
  ACPD_LOAD_ONLY=overhead cargo bench -q -p acpd-tests --bench load | grep overhead | tee "$work/rows"
# One daemon per row, in the rows' order: the files in the order they were last written.
python3 - "$work/marks" "$work/rows" <<'PY'
import os, statistics, sys
d, rows = sys.argv[1:3]
files = sorted(os.listdir(d), key=lambda f: os.stat(os.path.join(d, f)).st_mtime_ns)
names = [r.split("(p50")[0].replace("overhead @", "").strip() for r in open(rows)]
for name, f in zip(names, files):
    turns = []
    for line in open(os.path.join(d, f)):
        # Every step by name, in order: `<µs>@<allocations so far>`, `-` for one not stamped.
        steps = [x.split("=") for x in line.split()]
        order = [k for k, _ in steps]
        m, a = {}, {}
        for k, v in steps:
            if v != "-":
                t, _, n = v.partition("@")
                m[k] = float(t)
                if n:
                    a[k] = int(n)
        if "admitted" in m:
            turns.append((m, a))
    # The first turns start cold (the daemon's first prompts): left out.
    turns = turns[20:]
    print(f"{name}: {len(turns)} turns, µs from the previous step (median, p90), allocations in it (median)")
    for i, step in enumerate(order[1:], 1):
        gaps, allocs = [], []
        for m, a in turns:
            if step in m:
                prev = max((s for s in order[:i] if s in m), key=lambda s: m[s], default=None)
                gaps.append(m[step] - (m[prev] if prev else 0.0))
                if step in a:
                    allocs.append(a[step] - (a.get(prev, 0) if prev else 0))
        if gaps:
            gaps.sort()
            n = f" {statistics.median(allocs):5.0f}" if allocs else ""
            print(f"  {step:10} {statistics.median(gaps):7.1f} {gaps[int(0.9 * (len(gaps) - 1))]:7.1f}{n}"
                  f"{'' if len(gaps) == len(turns) else f'  ({len(gaps)} turns)'}")
    total = sorted(m["written"] for m, _ in turns)
    allocs = [a["written"] for _, a in turns if "written" in a]
    n = f" {statistics.median(allocs):5.0f}" if allocs else ""
    print(f"  {'total':10} {statistics.median(total):7.1f} {total[int(0.9 * (len(total) - 1))]:7.1f}{n}")
PY
