"""Two runs side by side: per-case deltas of latency, throughput, memory and accuracy.

Used by `qbench compare A B` and by `--qbench-compare-run PATH` (saved run = A, this run = B). A run is
read from its directory, its qbench.json or its benchmark.json (pytest-benchmark's file; qbench's
own record rides in it under "qbench", and the per-case extra_info is the fallback), so any of the
files a run leaves can be compared. Each delta is marked better or worse by the metric's direction
(metrics.py `higher_is_better`). Where both runs kept every timed batch latency, a latency or
throughput delta is first tested against noise, as the perf gates do: the bootstrap 95% interval of
B/A must exclude 1, else the delta is "within noise" (the H200's runs on two leases of the same
machine type differed by up to 1.5x at one batch size, in both directions).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from qbench_plugin.stats.probe import HostCheck, probe_seconds
from qbench_plugin.stats.uncertainty import Timed, ratio_interval, run_noise_for, widen
from qbench_plugin.record.metrics import BY_NAME

COMPARE_METRICS = ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "throughput_samples_per_s",
                   "memory_rss_mib", "memory_rss_peak_mib", "gpu_memory_peak_mib", "accuracy")
SHORT = {"latency_p50_ms": "p50 ms", "latency_p95_ms": "p95 ms", "latency_p99_ms": "p99 ms",
         "throughput_samples_per_s": "texts/s", "memory_rss_mib": "RSS MiB", "memory_rss_peak_mib": "RSS peak MiB",
         "gpu_memory_peak_mib": "GPU peak MiB", "accuracy": "accuracy"}
SAMPLES = "latency_samples_ns"
ROUNDS = "latency_sample_rounds"  # the round of each sample; absent in runs made before rounds
NOISE_TESTED = ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "throughput_samples_per_s")
NOISE = "within noise"
# Memory has no samples to test against noise, and the same engine's memory moves from run to run
# (allocator, page cache, the tokenizer's buffers): a change inside this share of A is no change. Host
# RSS of the same vLLM engines moved up to 5.8% between the sessions of two H200 A/A pairs (GPU memory
# at most 1.9%), so 2% there called 24 of 36 A/A memory deltas better or worse.
MEMORY_TOLERANCE = {"memory_rss_mib": 0.06, "memory_rss_peak_mib": 0.06, "gpu_memory_peak_mib": 0.02}
TOLERATED = "within tolerance"
# ci_low/ci_high: bootstrap 95% interval of B/A where both runs kept their samples; engine_a/engine_b: the
# engine each run's config ran on (a config of one name may pin no engine and follow --qbench-engine)
LONG_COLUMNS = ["case", "config", "batch_size", "metric", "engine_a", "engine_b", "a", "b", "delta", "delta_pct",
                "ci_low", "ci_high", "verdict"]


class CompareError(ValueError):
    """A path that does not hold a qbench run; the message names it."""


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CompareError(f"{path}: not found") from None
    except json.JSONDecodeError as exc:
        raise CompareError(f"{path}: not valid JSON (line {exc.lineno}): a half-written or damaged file") from None


def load_run(path: str | Path) -> tuple[str, pd.DataFrame]:
    """(label, one row per (config, batch size) with COMPARE_METRICS) from a run dir or either JSON file."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / "qbench.json", path / "benchmark.json"]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise CompareError(f"{path}: no qbench.json or benchmark.json in this directory")
        path = found[0]
    data = _read(path)
    if isinstance(data, dict) and "cases" in data and "configs" in data:
        label, frame = str(data.get("run_id") or path), _with_samples(frame_from_qbench(data), _sibling_benchmarks(path))
        record = data
    elif isinstance(data, dict) and isinstance(data.get("qbench"), dict) and data["qbench"].get("cases"):
        label, frame = str(data["qbench"].get("run_id") or path), _with_samples(frame_from_qbench(data["qbench"]), data)
        record = data["qbench"]
    elif isinstance(data, dict) and "benchmarks" in data:
        label, frame, record = str(path), frame_from_benchmarks(data), data.get("qbench") or {}
    else:
        raise CompareError(f"{path}: neither a qbench.json nor a pytest-benchmark JSON")
    measurement = record.get("measurement") or {}
    frame.attrs["device"] = measurement.get("device")  # None: recorded before rounds
    frame.attrs["host_probe"] = probe_seconds(measurement.get("host_probe"))  # None: recorded before the probe
    return label, frame


def _sibling_benchmarks(path: Path) -> Mapping[str, Any] | None:
    """The benchmark.json next to a qbench.json, if there is a readable one (samples only; never required)."""
    try:
        return _read(path.parent / "benchmark.json")
    except CompareError:
        return None


def _with_samples(frame: pd.DataFrame, benchmarks: Mapping[str, Any] | None) -> pd.DataFrame:
    """Samples from the run's pytest-benchmark JSON for a qbench record written before it kept them."""
    if frame[SAMPLES].map(len).any() or not benchmarks:
        return frame
    try:
        bench = frame_from_benchmarks(benchmarks)
    except CompareError:
        return frame
    keys = list(zip(frame["config"], frame["batch_size"]))
    found = {column: dict(zip(zip(bench["config"], bench["batch_size"]), bench[column])) for column in (SAMPLES, ROUNDS)}
    return frame.assign(**{column: [by_case.get(key, []) for key in keys] for column, by_case in found.items()})


def _rows_frame(rows: list[dict[str, Any]], source: str) -> pd.DataFrame:
    if not rows:
        raise CompareError(f"{source}: no qbench latency cases")
    frame = pd.DataFrame(rows)
    for name in COMPARE_METRICS:
        if name not in frame:
            frame[name] = float("nan")
    kept = {column: [list(v) if isinstance(v, list) else [] for v in frame.get(column, [None] * len(frame))]
            for column in (SAMPLES, ROUNDS)}
    engines = frame["engine"] if "engine" in frame else None
    frame = frame[["config", "batch_size", *COMPARE_METRICS]].assign(**kept, engine=engines)
    frame[list(COMPARE_METRICS)] = frame[list(COMPARE_METRICS)].apply(pd.to_numeric, errors="coerce")
    return frame.drop_duplicates(["config", "batch_size"], keep="last").reset_index(drop=True)


def frame_from_qbench(run: Mapping[str, Any]) -> pd.DataFrame:
    configs = run.get("configs") or {}
    rows = []
    for case in run.get("cases") or []:
        record = configs.get(case["config"]) or {}
        row = {"config": case["config"], "batch_size": int(case["batch_size"]), SAMPLES: case.get("samples_ns"),
               ROUNDS: case.get("sample_rounds"), "engine": record.get("engine")}
        row.update(case.get("metrics") or {})
        row.update(record.get("metrics") or {})
        rows.append(row)
    return _rows_frame(rows, str(run.get("run_id")))


def frame_from_benchmarks(data: Mapping[str, Any]) -> pd.DataFrame:
    rows = []
    for bench in data.get("benchmarks") or []:
        extra = bench.get("extra_info") or {}
        if extra.get("kind") == "latency":
            rows.append({**extra, "config": extra["config"], "batch_size": int(extra["batch_size"])})
    return _rows_frame(rows, "benchmark JSON")


def verdict_of(metric: str, a: float, b: float, interval: tuple[float, float] | None = None,
             ratio: float | None = None) -> str:
    """ratio: B/A as the interval sees it (on the hosts' scale when normalized), which decides the
    direction when it differs from the raw values'."""
    if a == b:
        return "same"
    if interval is not None and interval[0] <= 1 <= interval[1]:
        return NOISE
    if metric in MEMORY_TOLERANCE and abs(b - a) <= MEMORY_TOLERANCE[metric] * abs(a):
        return TOLERATED
    grew = ratio > 1 if ratio is not None else b > a
    return "better" if grew == BY_NAME[metric].higher_is_better else "worse"


def _interval(metric: str, batch_size: int, a_ns: Any, b_ns: Any, a_rounds: Any = None,
              b_rounds: Any = None, run_noise: float = 0.0, paired: bool = False,
              hosts: tuple[list[float], list[float]] | None = None) -> tuple[float, float, float] | None:
    """B/A and its 95% interval for a latency or throughput metric, resampling each run's rounds on
    its own (both runs' between-round spread), on each run's host scale when both ran the host probe
    (hosts: B's, A's), widened by the run-to-run noise; None when either run kept too few rounds."""
    if metric not in NOISE_TESTED or not isinstance(a_ns, list) or not isinstance(b_ns, list):
        return None
    return widen(ratio_interval(Timed.of(b_ns, batch_size, _labels(b_rounds)),
                                Timed.of(a_ns, batch_size, _labels(a_rounds)), metric, paired=paired,
                                hosts=hosts), run_noise)


def _labels(rounds: Any) -> list[int] | None:
    return list(rounds) if isinstance(rounds, list) and rounds else None


def run_noise(a: pd.DataFrame, b: pd.DataFrame, given: float | None = None, normalized: bool = False) -> float:
    """The run-to-run allowance of a comparison: given, else the larger of the two runs' devices' (what
    is left of an A/A pair's shift after the host probe when normalized)."""
    if given is not None:
        return given
    return max(run_noise_for(a.attrs.get("device"), normalized), run_noise_for(b.attrs.get("device"), normalized))


def host_probes(a: pd.DataFrame, b: pd.DataFrame) -> tuple[list[float], list[float]] | None:
    """(B's, A's) per-round host-probe seconds when both runs have them, on one device kind."""
    pa, pb = a.attrs.get("host_probe"), b.attrs.get("host_probe")
    if not pa or not pb or (a.attrs.get("device") == "cpu") != (b.attrs.get("device") == "cpu"):
        return None  # a GPU probe has a launch component a CPU one lacks
    return pb, pa


def compare_frames(a: pd.DataFrame, b: pd.DataFrame, noise: float | None = None, paired: bool = False,
                   normalize: bool = False) -> pd.DataFrame:
    """Long form, one row per (case, metric): a, b, b - a, (b - a) / a and the verdict for b.

    paired: a and b are two configs of one run, timed in the same interleaved rounds; their speed is
    compared round by round and no run-to-run allowance applies. normalize (`--host-scale`): two
    runs that both ran the host probe (probe.py) are compared on their hosts' scale, with the smaller
    allowance of A/A pairs so scaled; the a and b columns stay as measured. Either way the probes'
    ratio is kept (attrs "host") to explain the comparison."""
    probes = host_probes(a, b) if not paired else None
    hosts = probes if normalize else None
    noise = 0.0 if paired else run_noise(a, b, noise, normalized=hosts is not None)
    merged = a.merge(b, on=["config", "batch_size"], how="outer", suffixes=("_a", "_b"), indicator=True)
    merged = merged.sort_values(["config", "batch_size"], kind="stable")
    rows = []
    for _, row in merged.iterrows():
        case = f"{row['config']}-bs{int(row['batch_size'])}"
        for metric in COMPARE_METRICS:
            va, vb = row[metric + "_a"], row[metric + "_b"]
            has_a, has_b = pd.notna(va), pd.notna(vb)
            if not has_a and not has_b:
                continue
            interval = None
            if row["_merge"] == "left_only":
                verdict = "only in A"
            elif row["_merge"] == "right_only":
                verdict = "only in B"
            elif not (has_a and has_b):
                verdict = "measured in A only" if has_a else "measured in B only"
            else:
                found = _interval(metric, int(row["batch_size"]), row[SAMPLES + "_a"], row[SAMPLES + "_b"],
                                  row[ROUNDS + "_a"], row[ROUNDS + "_b"], noise, paired, hosts)
                interval = found[1:] if found else None
                verdict = verdict_of(metric, float(va), float(vb), interval, found[0] if found else None)
            delta = float(vb) - float(va) if has_a and has_b else math.nan
            pct = delta / float(va) if has_a and has_b and float(va) != 0 else math.nan
            rows.append({"case": case, "config": row["config"], "batch_size": int(row["batch_size"]),
                         "metric": metric, "engine_a": _text(row.get("engine_a")), "engine_b": _text(row.get("engine_b")),
                         "a": float(va) if has_a else math.nan,
                         "b": float(vb) if has_b else math.nan, "delta": delta, "delta_pct": pct,
                         "ci_low": interval[0] if interval else math.nan,
                         "ci_high": interval[1] if interval else math.nan, "verdict": verdict})
    out = pd.DataFrame(rows, columns=LONG_COLUMNS)
    out.attrs["run_noise"] = noise
    out.attrs["host"] = HostCheck.of(*probes) if probes else None
    out.attrs["host_scaled"] = hosts is not None
    return out


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def engine_changes(long: pd.DataFrame) -> str | None:
    """'cpu_default ran on vllm in A and on hf in B; ...' for configs of one name measured on two engines:
    their deltas compare engines, not runs."""
    both = long.dropna(subset=["engine_a", "engine_b"])
    changed = both[both["engine_a"] != both["engine_b"]].drop_duplicates("config")
    if changed.empty:
        return None
    return "; ".join(f"{r.config} ran on {r.engine_a} in A and on {r.engine_b} in B" for r in changed.itertuples()) + \
        " (its deltas compare two engines, not two runs of one)"


def compare_paths(a: str | Path, b: str | Path, noise: float | None = None,
                  normalize: bool = False) -> tuple[str, str, pd.DataFrame]:
    label_a, frame_a = load_run(a)
    label_b, frame_b = load_run(b)
    return label_a, label_b, compare_frames(frame_a, frame_b, noise, normalize=normalize)


def compare_configs(path: str | Path, config_a: str, config_b: str) -> tuple[str, str, pd.DataFrame]:
    """Config B against config A inside one run, batch size by batch size, paired by round: the
    interleaved design's sharpest comparison (drift in a round hits both)."""
    label, frame = load_run(path)
    missing = [c for c in (config_a, config_b) if c not in set(frame["config"])]
    if missing:
        raise CompareError(f"{path}: no latency cases of {', '.join(missing)}; configs in this run: "
                           f"{', '.join(sorted(set(frame['config'])))}")
    case = f"{config_b} vs {config_a}"
    a = frame[frame["config"] == config_a].assign(config=case)
    b = frame[frame["config"] == config_b].assign(config=case)
    return f"{label}: {config_a}", f"{label}: {config_b}", compare_frames(a, b, paired=True)


def run_shift(long: pd.DataFrame) -> dict[str, float]:
    """Median B/A per speed metric over the cases both runs have: how far the whole run moved. An
    A/A pair's shift is the run-to-run noise to allow (uncertainty.RUN_NOISE)."""
    both = long[long["metric"].isin(NOISE_TESTED) & long["a"].notna() & long["b"].notna() & (long["a"] != 0)]
    return {m: float((g["b"] / g["a"]).median()) for m, g in both.groupby("metric", sort=False)}


def shift_text(long: pd.DataFrame) -> str:
    shift = run_shift(long)
    if not shift:
        return "no speed metric in both runs"
    parts = ", ".join(f"{SHORT[m]} x{v:.3f}" for m, v in shift.items())
    noise = long.attrs.get("run_noise")
    allowance = f"; run-to-run noise allowed: {noise:.0%}" if noise is not None else ""
    line = f"whole-run shift B/A (median over cases): {parts}{allowance}"
    host = long.attrs.get("host")
    if host is not None and host.ratio is not None:
        line += "\n" + host.note("B", "A").removeprefix("; ")
        line += ("; speed verdicts are on each run's host scale (--host-scale)" if long.attrs.get("host_scaled")
                 else "; speed verdicts are on the measured figures")
    elif noise is not None and noise > 0:
        line += "\nno host probe in both runs: nothing says whether the machine or the code moved"
    return line


def cell(row: Mapping[str, Any], relative: bool = False) -> str:
    """'12.30 (-5.1% better)': B's value, its change from A, the verdict; ratios change in points.
    relative: the values are one config's speed over another's (relative.py), shown to 3 decimals."""
    metric, verdict = row["metric"], row["verdict"]
    value = row["b"] if pd.notna(row["b"]) else row["a"]
    fmt = "{:.4f}" if BY_NAME[metric].unit == "ratio" else "{:.3f}" if relative else "{:,.2f}"
    if verdict not in ("better", "worse", "same", NOISE, TOLERATED):
        return f"{fmt.format(value)} ({verdict})"
    if verdict == "same":
        return f"{fmt.format(value)} (same)"
    if BY_NAME[metric].unit == "ratio":
        change = f"{row['delta']:+.4f}"
    elif pd.notna(row["delta_pct"]):
        # a change too small for one decimal would read "+0.0% worse"
        change = f"{row['delta_pct']:+.1%}" if abs(row["delta_pct"]) >= 0.0005 else f"{row['delta_pct']:+.3%}"
    else:
        change = f"{row['delta']:+,.2f}"
    if verdict == NOISE:
        return f"{fmt.format(value)} ({change}, {NOISE})"
    if verdict == TOLERATED:
        return f"{fmt.format(value)} ({change}, within {MEMORY_TOLERANCE[metric]:.0%} tolerance)"
    return f"{fmt.format(value)} ({change} {verdict})"


ONLY = ("only in A", "only in B")


def wide(long: pd.DataFrame) -> pd.DataFrame:
    """One row per case in both runs, one column per metric, cells from `cell`: the printed table."""
    long = long[~long["verdict"].isin(ONLY)]
    if long.empty:
        return pd.DataFrame(columns=["case"])
    long = long.assign(text=[cell(r) for _, r in long.iterrows()])
    table = long.pivot_table(index="case", columns="metric", values="text", aggfunc="first", sort=False)
    ordered = [m for m in COMPARE_METRICS if m in table.columns]
    table = table[ordered].rename(columns=SHORT).fillna("")
    table.columns.name = None  # else to_html prints 'metric' as an extra header row
    return table.reset_index()


def summary_counts(long: pd.DataFrame) -> dict[str, int]:
    return {v: int((long["verdict"] == v).sum()) for v in ("better", "worse", NOISE, TOLERATED, "same")}


def counts_text(long: pd.DataFrame) -> str:
    """'3 better, 1 worse, 5 within noise, 2 same'."""
    return ", ".join(f"{n} {verdict}" for verdict, n in summary_counts(long).items())


def unmatched(long: pd.DataFrame) -> str | None:
    """'only in A: x-bs8, ...; only in B: ...' for cases one run lacks (the CSV keeps their values)."""
    parts = []
    for verdict in ONLY:
        cases = list(dict.fromkeys(long.loc[long["verdict"] == verdict, "case"]))
        if cases:
            parts.append(f"{verdict}: {', '.join(cases)}")
    return "; ".join(parts) or None


def to_text(long: pd.DataFrame) -> str:
    table = wide(long)
    text = table.to_string(index=False) if not table.empty else "(no case is in both runs)"
    notes = [note for note in (engine_changes(long), unmatched(long)) if note]
    return "\n".join([text, *notes])


def print_rich(long: pd.DataFrame, label_a: str, label_b: str) -> None:
    """The CLI's table: B's values with their change from A, green where better and red where worse."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"qbench compare: A = {escape(label_a)}, B = {escape(label_b)} (values are B's)")
    table.add_column("case", style="bold", no_wrap=True)
    present = [m for m in COMPARE_METRICS if m in set(long["metric"])]
    for metric in present:
        table.add_column(SHORT[metric], justify="right")
    for case, group in long[~long["verdict"].isin(ONLY)].groupby("case", sort=False):
        cells = {r["metric"]: r for _, r in group.iterrows()}
        out = []
        for metric in present:
            row = cells.get(metric)
            if row is None:
                out.append("")
                continue
            style = {"better": "green", "worse": "red"}.get(row["verdict"], "")
            text = escape(cell(row, relative=bool(long.attrs.get("relative"))))
            out.append(f"[{style}]{text}[/{style}]" if style else text)
        table.add_row(escape(str(case)), *out)
    console = Console()
    if not console.is_terminal:  # piped or redirected: keep each case on one line instead of 80 columns
        console = Console(width=220)
    console.print(table)
    console.print(counts_text(long))
    for note in (engine_changes(long), unmatched(long)):
        if note:
            console.print(escape(note))
