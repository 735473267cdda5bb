"""Several pytest-xdist workers' records as one run: what a worker sends, and the controller's merge.

Pure data: a worker's RunStore and its pytest-benchmark entries go out as plain JSON values (what
execnet can carry in `config.workeroutput`); the controller folds every worker's into its own
RunStore and builds the entries pytest-benchmark writes, so one run folder holds every config.
No xdist import here: distribute.py is the glue, this is what its tests exercise without engines.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

import numpy as np

from qbench_plugin.record.run import CaseRecord, ConfigRecord, RunStore, _json_default

# the matrix plan every worker shares (same options, same seed); the rest of a worker's measurement
# (its groups, round orders, host probe, seconds) stays under measurement.workers.<id>
SHARED_PLAN = ("rounds", "block", "warmup", "seed", "run_noise", "gate_comparisons")


def plain(value: Any) -> Any:
    """JSON-plain copy (numpy values and Paths turned into lists, numbers, strings): what execnet carries."""
    return json.loads(json.dumps(value, default=_json_default))


def worker_output(store: RunStore, entries: list[dict], placement: Mapping[str, Any]) -> dict[str, Any]:
    """What a worker hands the controller at its session's end. Predictions and probabilities go too:
    the baseline and a quantized config may have run on different workers, and the controller
    compares them (flip rate, probability drift)."""
    configs = {}
    for name, rec in store.configs.items():
        configs[name] = {**rec.summary(),
                         "predictions": None if rec.predictions is None else np.asarray(rec.predictions).tolist(),
                         "probabilities": None if rec.probabilities is None else np.asarray(rec.probabilities).tolist()}
    return plain({
        "placement": dict(placement), "status": store.status, "status_reason": store.status_reason,
        "configs": configs, "cases": [case.__dict__ for case in store.cases], "measurement": store.measurement,
        "out_of_memory": {k: list(v) for k, v in store.out_of_memory.items()},
        "planned_configs": store.planned_configs, "planned_cases": store.planned_cases,
        "warnings": store.warnings, "entries": entries, "gates": [gate.as_dict() for gate in store.gates],
    })


def _config_record(data: Mapping[str, Any]) -> ConfigRecord:
    rec = ConfigRecord(name=data["name"], method=data["method"], engine=data["engine"], baseline=data["baseline"],
                       status=data["status"], reason=data.get("reason"), metrics=dict(data.get("metrics") or {}),
                       info=dict(data.get("info") or {}))
    if data.get("predictions") is not None:
        rec.predictions = np.asarray(data["predictions"])
    if data.get("probabilities") is not None:
        rec.probabilities = np.asarray(data["probabilities"], dtype=float)
    return rec


def merge_outputs(store: RunStore, outputs: Iterable[Mapping[str, Any]]) -> list[dict]:
    """Fold every worker's output into the controller's store (in worker id order, so a run's JSON does
    not depend on which worker finished first); return the pytest-benchmark entries, in the same order.
    Configs that ran on another worker than the baseline are compared with it afterwards
    (distribute.compare_with_baseline: comparing is the measuring step's, which record/ does not import)."""
    outputs = sorted(outputs, key=lambda out: str(out["placement"].get("worker")))
    entries: list[dict] = []
    workers: dict[str, Any] = {}
    plan: dict[str, Any] = {}
    for out in outputs:
        place = dict(out["placement"])
        worker = str(place.get("worker"))
        for name, data in out["configs"].items():
            rec = _config_record(data)
            rec.info["placement"] = {k: place.get(k) for k in ("worker", "cores", "device", "gpus", "gpu_name")
                                     if k in ("worker", "cores", "device") or place.get(k)}
            store.configs[name] = rec
        store.cases.extend(CaseRecord(**{**case, "samples_ns": list(case.get("samples_ns") or [])})
                           for case in out["cases"])
        store.out_of_memory.update({k: (int(v[0]), str(v[1])) for k, v in out["out_of_memory"].items()})
        store.planned_configs.extend(n for n in out["planned_configs"] if n not in store.planned_configs)
        store.planned_cases.extend(tuple(c) for c in out["planned_cases"] if tuple(c) not in store.planned_cases)
        store.warnings.extend(w for w in out["warnings"] if w not in store.warnings)
        measurement = dict(out["measurement"])
        for key in SHARED_PLAN:
            if key in measurement:
                plan.setdefault(key, measurement[key])
        workers[worker] = {**place, "configs": sorted(out["configs"]), "measurement": measurement}
        if out["status"] == "partial" and store.status != "partial":
            store.status, store.status_reason = "partial", f"worker {worker}: {out['status_reason']}"
        entries.extend(out["entries"])
    if workers:
        seconds = [w["measurement"].get("seconds") for w in workers.values() if w["measurement"].get("seconds")]
        store.measurement.update(plan, workers=workers, groups=[], seconds=max(seconds) if seconds else 0.0,
                                 design=f"interleaved rounds within each of {len(workers)} pytest-xdist workers "
                                        "(each worker's configs against each other)")
    return entries
