"""How each config's speed relative to a reference config moved between two runs.

`qbench compare A B --relative-to fp16_baseline`: for every other config and batch size in both runs,
(config / reference in B) over (config / reference in A), each run's pair compared round by round
(uncertainty.relative_interval). A whole session's shift (a faster host, another lease) hits every
config of a run alike and cancels, so this needs a far smaller allowance than two runs' absolute
speeds do: it sees "gptq_4bit got 8% slower against fp16_baseline since A", where the absolute
comparison allows 20% between sessions. A slowdown of every config alike is invisible here by design;
the absolute comparison and the perf gates are for that.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from qbench_plugin.report.compare import (LONG_COLUMNS, NOISE_TESTED, ROUNDS, SAMPLES, CompareError, load_run,
                                          verdict_of)
from qbench_plugin.stats.uncertainty import Timed, relative_interval, run_noise_for, widen


def _row(frame: pd.DataFrame, config: str, batch_size: int) -> pd.Series | None:
    rows = frame[(frame["config"] == config) & (frame["batch_size"] == batch_size)]
    return None if rows.empty else rows.iloc[0]


def _timed(row: pd.Series | None, batch_size: int) -> Timed | None:
    if row is None or not row[SAMPLES]:
        return None
    return Timed.of(row[SAMPLES], batch_size, row[ROUNDS] or None)


def compare_relative(a_path: str | Path, b_path: str | Path, reference: str,
                     noise: float | None = None) -> tuple[str, str, pd.DataFrame]:
    """Long form as compare_frames gives it, one row per (config vs reference, batch size, speed
    metric): a and b are the config's metric over the reference's in each run."""
    label_a, a = load_run(a_path)
    label_b, b = load_run(b_path)
    for label, frame in ((a_path, a), (b_path, b)):
        if reference not in set(frame["config"]):
            raise CompareError(f"{label}: no latency cases of {reference}; configs in this run: "
                               f"{', '.join(sorted(set(frame['config'])))}")
    if noise is None:
        noise = max(run_noise_for(f.attrs.get("device"), relative=True) for f in (a, b))
    rows = []
    for config in sorted((set(a["config"]) & set(b["config"])) - {reference}):
        sizes = set(a.loc[a["config"] == config, "batch_size"]) & set(b.loc[b["config"] == config, "batch_size"])
        for batch_size in sorted(sizes):
            mine_a, ref_a = _row(a, config, batch_size), _row(a, reference, batch_size)
            mine_b, ref_b = _row(b, config, batch_size), _row(b, reference, batch_size)
            if ref_a is None or ref_b is None:
                continue
            timed_b = (_timed(mine_b, batch_size), _timed(ref_b, batch_size))
            timed_a = (_timed(mine_a, batch_size), _timed(ref_a, batch_size))
            for metric in NOISE_TESTED:
                va, vb = float(mine_a[metric]) / float(ref_a[metric]), float(mine_b[metric]) / float(ref_b[metric])
                if not (math.isfinite(va) and math.isfinite(vb)):
                    continue
                found = None
                if all(t is not None for t in (*timed_b, *timed_a)):
                    found = widen(relative_interval(timed_b, timed_a, metric), noise)
                interval = found[1:] if found else None
                rows.append({"case": f"{config} / {reference}-bs{batch_size}", "config": f"{config} / {reference}",
                             "batch_size": batch_size, "metric": metric, "engine_a": None, "engine_b": None,
                             "a": va, "b": vb, "delta": vb - va, "delta_pct": vb / va - 1 if va else math.nan,
                             "ci_low": interval[0] if interval else math.nan,
                             "ci_high": interval[1] if interval else math.nan,
                             "verdict": verdict_of(metric, va, vb, interval, found[0] if found else None)})
    if not rows:
        raise CompareError(f"no config other than {reference} with a batch size in both runs")
    out = pd.DataFrame(rows, columns=LONG_COLUMNS)
    out.attrs.update(run_noise=noise, relative=True)
    return label_a, label_b, out
