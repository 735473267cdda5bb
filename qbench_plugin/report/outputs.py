"""From a finished session to the files a person reads: the glue between the plugin's hooks and the
pure report modules (summary, plots, explog, htmlblocks, compare).

The results are computed once, on the first hook that needs them (pytest-benchmark's JSON hook runs
before qbench's sessionfinish and pytest-html's summary), and every output renders from that object.
"""
from __future__ import annotations

import logging
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import pytest

from qbench_plugin.report.compare import CompareError, compare_frames, frame_from_qbench, load_run
from qbench_plugin.report.explog import experiment_log
from qbench_plugin.machine import machine_info
from qbench_plugin.record.metrics import DERIVED_METRICS
from qbench_plugin.report.plots import Plot, make_plots
from qbench_plugin.record.run import RunStore, write_bytes_atomic, write_text_atomic
from qbench_plugin.report.summary import DEFAULT_P95_TARGET_MS, ReportOptions, RunResults, build_results

log = logging.getLogger("qbench")

SUMMARY_CSV = "summary.csv"
PIVOT_CSVS = {"p95_ms": "pivot_p95_ms.csv", "throughput": "pivot_throughput.csv"}
METHOD_STATS_CSV = "method_stats.csv"
EXPERIMENT_LOG = "EXPERIMENT_LOG.md"
COMPARE_CSV = "compare.csv"


def collect_machine(markexpr: str | None = None) -> dict[str, Any]:
    """machine.py's facts plus what the experiment log also states: python, OS, RAM, the -m expression."""
    info = machine_info()
    info["python"] = platform.python_version()
    info["platform"] = platform.platform()
    try:
        import psutil

        info["memory_total_gib"] = psutil.virtual_memory().total / 2**30
    except Exception:  # noqa: BLE001  (the log then leaves the memory line out)
        pass
    if markexpr:
        info["pytest_markexpr"] = markexpr
    return info


def report_options(settings: Any) -> ReportOptions:
    return ReportOptions(
        gpu_type=settings.gpu_type or "",
        price_per_hour=settings.price_per_hour,
        spot_price_per_hour=settings.spot_price_per_hour,
        peak_tflops=settings.peak_tflops,
        p95_target_ms=settings.p95_target_ms or DEFAULT_P95_TARGET_MS,
        gate_overrides={"min_accuracy": getattr(settings, "min_accuracy", None),
                        "max_accuracy_drop": getattr(settings, "max_accuracy_drop", None),
                        "max_flip_rate": getattr(settings, "max_flip_rate", None)},
    )


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


@dataclass
class ReportState:
    """Per-session report state: the saved run to compare with (read at start, so a bad path fails fast)
    and the results, computed once."""

    compare_label: str | None = None
    compare_frame: pd.DataFrame | None = None
    results: RunResults | None = None
    plots: list[Plot] = field(default_factory=list)
    error: str | None = None
    written: list[str] = field(default_factory=list)

    @classmethod
    def from_settings(cls, settings: Any) -> "ReportState":
        state = cls()
        if settings.compare_run:
            try:
                state.compare_label, state.compare_frame = load_run(settings.compare_run)
            except CompareError as exc:
                raise pytest.UsageError(f"--qbench-compare-run: {exc}") from None
        return state

    def compute(self, store: RunStore, settings: Any, configs: Iterable[Any] | None,
                markexpr: str | None) -> RunResults | None:
        """The run's RunResults (cached); None when nothing was measured or the report failed (logged)."""
        if self.results is not None or self.error is not None:
            return self.results
        if not store.configs and not store.loads:
            return None
        try:
            results = build_results(store.to_json(), machine=collect_machine(markexpr),
                                    bench_configs={c.name: c for c in configs or []},
                                    options=report_options(settings))
            if self.compare_frame is not None and store.cases:
                results.comparison = compare_frames(self.compare_frame, frame_from_qbench(store.to_json()))
                results.comparison_source = self.compare_label
            _record_derived(store, results)
            self.plots = make_plots(results)
            self.results = results
        except Exception as exc:  # noqa: BLE001  (the benchmark's own results must still be saved)
            log.exception("qbench: building the report failed")
            self.error = f"{type(exc).__name__}: {exc}"
        return self.results

    def file_names(self) -> list[str]:
        names = [SUMMARY_CSV, *PIVOT_CSVS.values(), METHOD_STATS_CSV, *(f"{p.name}.png" for p in self.plots),
                 EXPERIMENT_LOG]
        if self.results is not None and self.results.comparison is not None:
            names.append(COMPARE_CSV)
        return names

    def write(self, out_dir: Path) -> list[Path]:
        """results/<run id>/: the CSVs, the PNGs, EXPERIMENT_LOG.md and compare.csv, each written atomically."""
        r = self.results
        if r is None:
            return []
        files = {SUMMARY_CSV: r.table.to_csv(index=False),
                 METHOD_STATS_CSV: r.method_stats.to_csv(index=False)}
        for key, name in PIVOT_CSVS.items():
            files[name] = r.pivots[key].to_csv(index=False)
        if r.comparison is not None:
            files[COMPARE_CSV] = r.comparison.to_csv(index=False)
        written = []
        try:
            files[EXPERIMENT_LOG] = experiment_log(r, self.file_names())
            for name, text in files.items():
                write_text_atomic(out_dir / name, text)
                written.append(out_dir / name)
            for plot in self.plots:
                write_bytes_atomic(out_dir / f"{plot.name}.png", plot.png)
                written.append(out_dir / f"{plot.name}.png")
        except Exception as exc:  # noqa: BLE001  (benchmark.json and qbench.json are already safe on disk)
            log.exception("qbench: writing the report files failed")
            self.error = f"{type(exc).__name__}: {exc}"
        self.written = [p.name for p in written]
        return written


def _record_derived(store: RunStore, results: RunResults) -> None:
    """tokens/s, achieved TFLOP/s and MFU into each case's metrics, so qbench.json and benchmark.json hold them."""
    rows = results.table.set_index(["config", "batch_size"])
    rows = rows[~rows.index.duplicated(keep="last")]
    for case in store.cases:
        key = (case.config, case.batch_size)
        if key in rows.index:
            row = rows.loc[key]
            for name in DERIVED_METRICS:
                case.metrics[name] = _clean(float(row[name])) if pd.notna(row[name]) else None
    store.workload["peak_tflops"] = results.peak.tflops
