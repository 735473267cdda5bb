"""One pytest run's results: per-config records and per-case measurements, in memory, then on disk.

Tests and fixtures write here; the JSON hook, the HTML report and the terminal summary read from
here, so everything renders from one results object.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qbench_plugin.redact import scrub, scrub_text


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"


def git_commit(cwd: Path) -> str | None:
    """Short commit of the checkout, with "-dirty" when tracked files differ from it: numbers from a
    modified tree must not pass for the commit's."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip() or None
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if commit and changed else commit


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a reader never sees half a file, even if the run is killed mid-write."""
    # round-trip through JSON first so numpy values are plain before secrets are masked
    plain = json.loads(json.dumps(data, default=_json_default))
    write_bytes_atomic(path, json.dumps(scrub(plain), indent=2).encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write a file (CSV, Markdown, PNG) whole or not at all, like write_json_atomic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)  # text files are scrubbed by write_text_atomic
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, scrub_text(text).encode("utf-8"))


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def describe_not_run(not_run: dict[str, list]) -> str:
    """RunStore.not_run() in words: 'configs a, b; cases c-bs8, c-bs16', or '' when everything ran."""
    configs = list(not_run.get("configs") or [])
    cases = [f"{cfg}-bs{bs}" for cfg, bs in not_run.get("cases") or []]
    return "; ".join(([f"configs {', '.join(configs)}"] if configs else []) + ([f"cases {', '.join(cases)}"] if cases else []))


@dataclass
class ConfigRecord:
    """What was measured once per config: start, memory, accuracy; predictions kept for comparisons."""

    name: str
    method: str
    engine: str
    baseline: bool = False
    status: str = "pending"  # pending | ready | failed | skipped
    reason: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # engine arguments, model path, ...
    predictions: np.ndarray | None = None
    probabilities: np.ndarray | None = None

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "method": self.method, "engine": self.engine, "baseline": self.baseline,
                "status": self.status,
                "reason": self.reason, "metrics": self.metrics, "info": self.info}


@dataclass
class CaseRecord:
    config: str
    batch_size: int
    metrics: dict[str, float]
    status: str = "passed"
    tokenization_in_timed_region: bool = True  # matrix cases time texts as strings, tokenizer included
    # every timed batch latency, so that `qbench compare` can tell a change from noise with qbench.json alone
    samples_ns: list[int] = field(default_factory=list)
    sample_rounds: list[int] = field(default_factory=list)  # the interleaved round each sample was timed in
    intervals: dict[str, list[float]] = field(default_factory=dict)  # metric -> 95% interval over rounds
    group: int = 0  # the group of co-resident engines it was timed with (matrix.py)


@dataclass
class LoadRecord:
    """One load-grid point (benchmarks/test_load.py), or a config whose server could not run: the
    endpoint, the load profile, what came back."""

    name: str  # the config whose server was loaded, or "endpoint" (--qbench-endpoint)
    target: str  # URL
    kind: str  # vllm | runpod
    status: str = "pending"  # passed | failed (some requests failed) | skipped | error
    reason: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # users, rate, batch size, spawn rate, settle, duration, workers
    point: str | None = None  # the load-grid point (loadgrid.LoadPoint.id); None: the config's server never ran
    metrics: dict[str, Any] = field(default_factory=dict)  # metrics.LOAD_METRICS
    info: dict[str, Any] = field(default_factory=dict)  # commands, files, outcomes, errors by message

    def summary(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RunStore:
    run_id: str
    out_dir: Path
    settings: dict[str, Any]
    commit: str | None = None
    status: str = "running"  # running | complete | partial (stopped early: see status_reason and not_run)
    status_reason: str | None = None
    configs: dict[str, ConfigRecord] = field(default_factory=dict)
    cases: list[CaseRecord] = field(default_factory=list)
    loads: list[LoadRecord] = field(default_factory=list)
    gates: list[Any] = field(default_factory=list)  # gates.GateResult, in the order they were decided
    dataset: dict[str, Any] = field(default_factory=dict)  # rows, duplicates, truncated rows, ... of the split
    out_of_memory: dict[str, tuple[int, str]] = field(default_factory=dict)  # config -> (batch size, error)
    # per-run facts about the workload (mean tokens per text, non-embedding parameters): see workload.py
    workload: dict[str, Any] = field(default_factory=dict)
    ceiling: list[dict[str, Any]] = field(default_factory=list)  # throughput-ceiling points: ceiling.Point
    overhead: dict[str, dict[str, Any]] = field(default_factory=dict)  # config -> suite vs bare classify loop
    # how the matrix was timed: rounds, block, seed, groups of co-resident engines, each round's order
    measurement: dict[str, Any] = field(default_factory=dict)
    # what the session collected to run, so that a stopped run can say what it never reached
    planned_configs: list[str] = field(default_factory=list)
    planned_cases: list[tuple[str, int]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. broken config files that were not selected

    def not_run(self) -> dict[str, list]:
        """Planned configs that never started, and latency cases of started configs that never finished.

        Skipped and failed configs are not here: they ran as far as their recorded reason."""
        started = {name for name, rec in self.configs.items() if rec.status != "pending"}
        configs = [name for name in self.planned_configs if name not in started]
        done = {(c.config, c.batch_size) for c in self.cases}
        ready = {name for name, rec in self.configs.items() if rec.status == "ready"}
        oom = {cfg: bs for cfg, (bs, _) in self.out_of_memory.items()}  # from there up: failed or skipped, with why
        cases = [[cfg, bs] for cfg, bs in self.planned_cases
                 if cfg in ready and (cfg, bs) not in done and bs < oom.get(cfg, bs + 1)]
        return {"configs": configs, "cases": cases}

    def config(self, name: str) -> ConfigRecord:
        return self.configs[name]

    def baseline(self) -> ConfigRecord | None:
        """The first baseline config of the run that produced predictions."""
        for rec in self.configs.values():
            if rec.baseline and rec.probabilities is not None:
                return rec
        return None

    def add_gate(self, result: Any) -> None:
        self.gates.append(result)
        self.save()

    def add_case(self, case: CaseRecord) -> None:
        self.cases.append(case)
        self.save()

    def add_load(self, load: LoadRecord) -> None:
        self.loads.append(load)
        self.save()

    def save(self) -> None:
        """results/<run id>/qbench.json, rewritten atomically after every finished case."""
        if self.out_dir is None:
            return
        write_json_atomic(self.out_dir / "qbench.json", self.to_json())

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "commit": self.commit,
            "status": self.status,
            "status_reason": self.status_reason,
            "not_run": self.not_run() if self.status == "partial" else {"configs": [], "cases": []},
            "settings": self.settings,
            "configs": {name: rec.summary() for name, rec in self.configs.items()},
            "cases": [case.__dict__ for case in self.cases],
            "loads": [load.summary() for load in self.loads],
            "gates": [gate.as_dict() for gate in self.gates],
            "dataset": self.dataset,
            "out_of_memory": {k: {"batch_size": v[0], "error": v[1]} for k, v in self.out_of_memory.items()},
            "workload": self.workload,
            "ceiling": self.ceiling,
            "overhead": self.overhead,
            "measurement": self.measurement,
            "warnings": self.warnings,
        }

    def table(self):
        """One row per (config, batch size) with the case and config metrics: the report's matrix."""
        import pandas as pd

        rows = []
        for case in self.cases:
            rec = self.configs.get(case.config)
            row = {"config": case.config, "method": rec.method if rec else None,
                   "engine": rec.engine if rec else None, "batch_size": case.batch_size}
            row.update(case.metrics)
            if rec:
                row.update(rec.metrics)
            rows.append(row)
        return pd.DataFrame(rows)
