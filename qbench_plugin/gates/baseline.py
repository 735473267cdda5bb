"""The saved run a perf gate compares against: read once, and refused when it measured something else.

A saved case is found by (config, batch size) alone, so without this check a run of another model,
another split or another device would be compared case by case and pass or fail on numbers that
mean nothing together. What makes two runs comparable is what both record: the settings in
`qbench` → `settings` and the GPU names in `machine_info` → `qbench` of pytest-benchmark's JSON.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

# the settings that change what a latency case measures; a run differing in any is not comparable
SETTINGS = ("model", "dataset", "split", "max_model_len")
IDENTITY = (*SETTINGS, "device", "engine_core")


def read_saved(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """A saved run's pytest-benchmark JSON (results/<run id>/ or the file itself), with its path."""
    path = Path(path)
    if path.is_dir():
        path = path / "benchmark.json"
    try:
        return path, json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: saved run not found") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON (line {exc.lineno}): a half-written or damaged run") from None


def device_of(gpu_names: Sequence[str] | None) -> str:
    """The device a run was timed on, as both runs record it: the GPU name(s), or "cpu"."""
    return ", ".join(sorted(set(gpu_names or []))) or "cpu"


def engine_core(settings: Mapping[str, Any], device: str | None) -> str | None:
    """Where a run's vLLM engine core ran: in the pytest process (--qbench-vllm-inprocess on a CPU) or
    in its own processes. In-process calls skip the hop to the engine core process (vLLM p50 0.77-0.96x
    on 2 cores), so runs that differ here are not comparable. A CPU run from before the option existed
    ran its engine core in its own processes: that is what its missing setting means."""
    if device is None:
        return None
    in_process = device == "cpu" and settings.get("vllm_inprocess") not in (None, False, "off")
    return "in-process" if in_process else "own processes"


def identity(settings: Mapping[str, Any], gpu_names: Sequence[str] | None) -> dict[str, Any]:
    device = device_of(gpu_names)
    return {**{name: settings.get(name) for name in SETTINGS}, "device": device,
            "engine_core": engine_core(settings, device)}


def saved_identity(data: Mapping[str, Any]) -> dict[str, Any]:
    """What a saved run records of IDENTITY; a field it does not record is None (an older run)."""
    settings = (data.get("qbench") or {}).get("settings") or {}
    machine = (data.get("machine_info") or {}).get("qbench")
    found = {name: settings.get(name) for name in SETTINGS}
    found["device"] = device_of(machine.get("gpu_names")) if isinstance(machine, Mapping) else None
    found["engine_core"] = engine_core(settings, found["device"])
    return found


def incompatibility(current: Mapping[str, Any], saved: Mapping[str, Any], *, strict: bool) -> str | None:
    """Why the saved run cannot be a perf baseline for this one, in one line, or None.

    A field the saved run does not record cannot be checked: allowed, unless strict."""
    differ = [f"{name} {saved[name]!r} there, {current.get(name)!r} here" for name in IDENTITY
              if saved.get(name) is not None and str(saved[name]) != str(current.get(name))]
    if differ:
        return "measured something else: " + "; ".join(differ)
    missing = [name for name in IDENTITY if saved.get(name) is None]
    if missing and strict:
        return (f"does not record {', '.join(missing)}, so it cannot be shown to be comparable "
                "(--qbench-gate-strict)")
    return None


def current_gpu_names() -> list[str]:
    """The GPU names this run records in machine_info (machine.py), so both sides are read alike."""
    from qbench_plugin.machine import gpu_info

    return [g["name"] for g in gpu_info()["gpus"]]
