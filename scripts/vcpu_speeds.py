"""How fast each vCPU of this machine runs the same pure-Python work, and how long a speed lasts.

Why: on the shared H200 host, bs-32 throughput ratios between engines moved 7-9% between two
sessions while each session's rounds put them at 2-3%. One explanation was vCPUs persistently
slower than others (a busy sibling on the host, another tenant): an engine whose processes sat on a
slow vCPU would be slow for the whole session, which rounds cannot average. This measures that premise.

Measured (H200 lease, 2026-12-03, 20 s a phase, results/examples/h200/engine-starts-2026-12-03/):
vCPU medians differed by up to 1.5-1.7x, but which vCPU was slow did not last: the correlation of
relative speeds between consecutive 5-second windows was 0.10 (together) and 0.06 (hopping), and
each vCPU's own p90/p10 was 1.8x. The host is fast noise, not slow vCPUs; putting every engine on
one core (tried the same day) made every call ~9x slower, since idle vLLM engines on a GPU do not
sleep. Hence more, shorter blocks (one batch a block on a GPU) rather than placement.

Two phases, each `--seconds` long:
- together: one process pinned on every vCPU, all timing the same work at the same moments
  (relative speeds at one time);
- hopping: one process visiting the vCPUs in turn (the machine otherwise idle).

    python scripts/vcpu_speeds.py OUT_DIR [--seconds 30]

Writes OUT_DIR/vcpu_speeds.csv (phase, cpu, t_s, ms) and prints a summary: each vCPU's median, the
spread of medians, and how a vCPU's speed in one 5-second window predicts the next (persistence).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

WORK = 200_000  # loop iterations: ~10-20 ms on a current Xeon core


def _work() -> int:
    total = 0
    for i in range(WORK):
        total += i * i % 7
    return total


def _timed() -> float:
    start = time.perf_counter_ns()
    _work()
    return (time.perf_counter_ns() - start) / 1e6


def _together(cpu: int, t0: float, seconds: float, out) -> None:
    os.sched_setaffinity(0, [cpu])
    time.sleep(max(0.0, t0 - time.time()))  # every process starts at the same moment
    rows = []
    while time.time() - t0 < seconds:
        rows.append(("together", cpu, round(time.time() - t0, 3), _timed()))
        time.sleep(0.05)
    out.put(rows)


def measure(cpus: list[int], seconds: float) -> pd.DataFrame:
    queue, t0 = mp.Queue(), time.time() + 1.0
    procs = [mp.Process(target=_together, args=(cpu, t0, seconds, queue)) for cpu in cpus]
    for p in procs:
        p.start()
    rows = [row for _ in procs for row in queue.get()]
    for p in procs:
        p.join()
    t1 = time.time()
    while time.time() - t1 < seconds:
        for cpu in cpus:
            os.sched_setaffinity(0, [cpu])
            _timed()  # untimed: the first run after a move pays for cold caches
            rows.append(("hopping", cpu, round(time.time() - t1, 3), _timed()))
    return pd.DataFrame(rows, columns=["phase", "cpu", "t_s", "ms"])


def summary(frame: pd.DataFrame) -> str:
    lines = []
    for phase, rows in frame.groupby("phase", sort=False):
        medians = rows.groupby("cpu")["ms"].median()
        rows = rows.assign(window=(rows["t_s"] // 5).astype(int))
        per_window = rows.groupby(["cpu", "window"])["ms"].median().unstack()
        rel = per_window / per_window.median(axis=0)  # each window's speed relative to that window's median vCPU
        pairs = [(rel[w], rel[w + 1]) for w in rel.columns[:-1] if w + 1 in rel.columns]
        persistence = np.nanmean([np.corrcoef(a, b)[0, 1] for a, b in pairs]) if pairs else float("nan")
        lines += [f"{phase}: median ms per vCPU " + " ".join(f"{c}:{m:.1f}" for c, m in medians.items()),
                  f"  slowest/fastest median {medians.max() / medians.min():.3f}; "
                  f"per-vCPU p90/p10 within the phase (median over vCPUs) "
                  f"{(rows.groupby('cpu')['ms'].quantile(0.9) / rows.groupby('cpu')['ms'].quantile(0.1)).median():.3f}",
                  f"  relative speed in one 5 s window vs the next, correlation over vCPUs: {persistence:.2f} "
                  "(near 1: a slow vCPU stays slow; near 0: which one is slow changes)"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    frame = measure(sorted(os.sched_getaffinity(0)), args.seconds)
    frame.to_csv(args.out / "vcpu_speeds.csv", index=False)
    text = summary(frame)
    (args.out / "vcpu_speeds.txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
