"""pytest-benchmark's side of a run: where its JSON goes while the run lasts, the group each kind of
measurement gets, and qbench's metrics and record added to its JSON."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qbench_plugin.record.metrics import CONFIG_METRICS, DERIVED_METRICS
from qbench_plugin.redact import scrub
from qbench_plugin.record.run import RunStore

PENDING_JSON = "benchmark.json.writing"  # pytest-benchmark's output until the run has finished

# pytest-benchmark's table and `pytest-benchmark compare --group-by=group` group cases by this name. A
# config's latency cases share the config's name; one-round measurements (the accuracy pass, a sweep, a
# load test) and the overhead pairs get a group of their own, so they do not skew the latency columns.
GROUP_SUFFIX = {"accuracy": "accuracy", "saturation": "sweep", "load": "load", "overhead": "overhead", "residency": "residency",
                "suite": "overhead"}


def benchmark_json_target(path: Path) -> Any:
    """What --benchmark-json holds: a Path from pytest-benchmark 5.3, an open binary file before
    (seen with 5.2.3 on the GPU image)."""
    from importlib.metadata import version

    from packaging.version import Version

    if Version(version("pytest-benchmark")) >= Version("5.3"):
        return path
    return open(path, "wb")  # noqa: SIM115  (pytest-benchmark closes it after writing)


def benchmark_group(config: str, kind: str | None) -> str:
    suffix = GROUP_SUFFIX.get(kind or "")
    return f"{config} {suffix}" if suffix else config


def regroup(bench: Any) -> None:
    """Give a finished benchmark the group of the kind its measurement recorded (extra_info "kind")."""
    stats = getattr(bench, "stats", None)
    if stats is None:
        return
    kind = bench.extra_info.get("kind")
    group = benchmark_group(str(bench.extra_info.get("config") or stats.group), kind)
    if kind in GROUP_SUFFIX:
        bench.group = stats.group = group


def attach_results(store: RunStore, output_json: dict) -> None:
    """Per-config results (accuracy, cold start, memory) and derived metrics onto every case of that
    config, and the run's own record under "qbench"; secrets masked in place."""
    derived = {(c.config, c.batch_size): c.metrics for c in store.cases}
    for bench in output_json.get("benchmarks", []):
        extra = bench.setdefault("extra_info", {})
        record = store.configs.get(extra.get("config"))
        if record is None:
            continue
        for name in CONFIG_METRICS:
            extra.setdefault(name, record.metrics.get(name))
        extra.setdefault("method", record.method)
        if extra.get("kind") == "latency":
            case = derived.get((extra.get("config"), extra.get("batch_size")), {})
            for name in DERIVED_METRICS:
                extra.setdefault(name, case.get(name))
    output_json["qbench"] = store.to_json()
    # pytest-benchmark writes this dict after the hook returns: mask secrets in place
    cleaned = scrub(json.loads(json.dumps(output_json, default=str)))
    output_json.clear()
    output_json.update(cleaned)
