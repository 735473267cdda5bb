"""CI gates: accuracy against fixed thresholds and the run's baseline, and performance against a
saved run.

Performance decisions are noise-aware: each latency statistic is compared through a bootstrap
confidence interval of the ratio current/saved over the rounds both runs kept (uncertainty.py), and
a case regresses only when the whole interval lies beyond the threshold, so noise alone does not
fail CI.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from .config import Gates
from .metrics import BY_NAME
from .probe import probe_seconds
from .uncertainty import CONFIDENCE, MIN_ROUNDS, MIN_SAMPLES, Timed, ratio_interval, widen

# metric -> allowed relative change in the worse direction (0.10: 10 % slower / less / more memory)
DEFAULT_PERF_THRESHOLDS: dict[str, float] = {
    "latency_p50_ms": 0.10,
    "latency_p95_ms": 0.15,
    "latency_p99_ms": 0.25,
    "throughput_samples_per_s": 0.10,
}


@dataclass(frozen=True)
class GateResult:
    gate: str
    config: str
    passed: bool | None  # None: not decidable (missing data); never fails CI
    measured: float | None
    threshold: float | None
    message: str
    case: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- accuracy -----------------------------------------------------------------------------------

def effective_gates(gates: Gates, overrides: dict[str, float | None]) -> Gates:
    """The config's gates with command-line overrides applied (an override wins when set)."""
    values = gates.model_dump()
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Gates(**values)


def accuracy_gates(config: str, gates: Gates, metrics: dict[str, Any], baseline: str | None) -> list[GateResult]:
    """Evaluate the accuracy gates one config has; each result names config, threshold and value."""
    results = []
    accuracy = metrics.get("accuracy")
    if gates.min_accuracy is not None:
        results.append(_check("min_accuracy", config, accuracy, gates.min_accuracy, lambda v, t: v >= t,
                              "accuracy {v:.4f} is below min_accuracy {t:.4f}",
                              "accuracy {v:.4f} >= min_accuracy {t:.4f}"))
    if gates.max_accuracy_drop is not None:
        delta = metrics.get("accuracy_delta")
        drop = None if delta is None else -delta
        results.append(_check("max_accuracy_drop", config, drop, gates.max_accuracy_drop, lambda v, t: v <= t,
                              f"accuracy drop vs baseline {baseline} {{v:.4f}} exceeds max_accuracy_drop {{t:.4f}}",
                              f"accuracy drop vs baseline {baseline} {{v:.4f}} <= max_accuracy_drop {{t:.4f}}",
                              missing="no baseline comparison (is this the baseline, or did the baseline not run?)"))
    if gates.max_flip_rate is not None:
        results.append(_check("max_flip_rate", config, metrics.get("flip_rate"), gates.max_flip_rate,
                              lambda v, t: v <= t,
                              f"flip rate vs baseline {baseline} {{v:.4f}} exceeds max_flip_rate {{t:.4f}}",
                              f"flip rate vs baseline {baseline} {{v:.4f}} <= max_flip_rate {{t:.4f}}",
                              missing="no baseline comparison (is this the baseline, or did the baseline not run?)"))
    return results


def _check(gate: str, config: str, value: float | None, threshold: float, ok: Callable[[float, float], bool],
           fail_msg: str, pass_msg: str, missing: str = "not measured") -> GateResult:
    if value is None:
        return GateResult(gate, config, None, None, threshold, f"config {config}: {gate} {threshold}: {missing}")
    passed = bool(ok(value, threshold))
    msg = (pass_msg if passed else fail_msg).format(v=value, t=threshold)
    return GateResult(gate, config, passed, float(value), threshold, f"config {config}: {msg}")


# -- performance --------------------------------------------------------------------------------

def parse_thresholds(text: str) -> dict[str, float]:
    """'latency_p95_ms=15%,throughput_samples_per_s=5%' -> {...: 0.15, ...: 0.05} over the defaults."""
    thresholds = dict(DEFAULT_PERF_THRESHOLDS)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in BY_NAME:
            raise ValueError(f"perf threshold {part!r}: expected METRIC=PERCENT% with METRIC one of "
                             f"{', '.join(sorted(DEFAULT_PERF_THRESHOLDS))}")
        value = value.strip()
        number = float(value.rstrip("%")) / 100 if value.endswith("%") else float(value)
        if number < 0:
            raise ValueError(f"perf threshold {part!r}: must be >= 0")
        thresholds[name] = number
    return thresholds


def load_saved_cases(path: str | Path) -> dict[tuple[str, int], dict[str, Any]]:
    """(config, batch size) -> extra_info of each latency case in a saved pytest-benchmark JSON."""
    path = Path(path)
    if path.is_dir():
        path = path / "benchmark.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: saved run not found") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON (line {exc.lineno}): a half-written or damaged run") from None
    cases = {}
    for bench in data.get("benchmarks", []):
        extra = bench.get("extra_info", {})
        if extra.get("kind") == "latency":
            cases[(extra["config"], int(extra["batch_size"]))] = extra
    if not cases:
        raise ValueError(f"{path}: no qbench latency cases in this file")
    return cases


def timed_of(extra: Mapping[str, Any]) -> Timed:
    """A case's samples and round labels as a pytest-benchmark extra_info or qbench case holds them."""
    samples = extra.get("latency_samples_ns") or extra.get("samples_ns") or []
    rounds = extra.get("latency_sample_rounds") or extra.get("sample_rounds") or None
    return Timed.of(samples, int(extra.get("batch_size") or 1), rounds)


def load_saved_probe(path: str | Path) -> list[float] | None:
    """The saved run's per-round host-probe seconds (probe.py), or None when it has none."""
    path = Path(path)
    try:
        data = json.loads((path / "benchmark.json" if path.is_dir() else path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # load_saved_cases has already said what is wrong with the file
    record = data.get("qbench") if isinstance(data, dict) else None
    return probe_seconds(((record or {}).get("measurement") or {}).get("host_probe"))


def perf_gates(config: str, batch_size: int, current: dict[str, Any], saved: dict[str, Any] | None,
               thresholds: dict[str, float], run_noise: float = 0.0,
               hosts: tuple[list[float], list[float]] | None = None) -> list[GateResult]:
    """Compare one case with the same case of a saved run, metric by metric.

    The interval of current/saved resamples each run's rounds on its own (uncertainty.py), so both
    runs' between-round spread is in it, and is widened by the machine's A/A-measured run-to-run
    noise (a whole session's speed moves, every config alike); a case regresses only when the whole
    interval lies beyond the threshold in the worse direction. hosts: (current's, saved's) host-probe
    seconds per round; with them both runs are judged on their host's scale (run_noise is then the
    smaller allowance left after it)."""
    case = f"{config}-bs{batch_size}"
    if saved is None:
        return [GateResult("perf_regression", config, None, None, None,
                           f"case {case}: not in the saved run; nothing to compare", case)]
    cur, old = timed_of({**current, "batch_size": batch_size}), timed_of({**saved, "batch_size": batch_size})
    if not (cur.decidable and old.decidable):
        return [GateResult("perf_regression", config, None, None, None,
                           f"case {case}: {cur.units} current and {old.units} saved rounds (or unlabelled batches); "
                           f"at least {MIN_ROUNDS} rounds ({MIN_SAMPLES} unlabelled batches) each are needed to decide",
                           case)]
    results = []
    scale = " on both runs' host-probe scale" if hosts else ""
    for metric, threshold in thresholds.items():
        if metric not in DEFAULT_PERF_THRESHOLDS and metric != "latency_mean_ms":
            continue
        ratio, low, high = widen(ratio_interval(cur, old, metric, paired=False, hosts=hosts), run_noise)
        higher_is_better = BY_NAME[metric].higher_is_better
        # regression only when the whole interval is beyond the threshold in the worse direction
        if higher_is_better:
            regressed, change = high < 1 - threshold, 1 - ratio
        else:
            regressed, change = low > 1 + threshold, ratio - 1
        word = "worse" if change > 0 else "better"
        msg = (f"case {case}: {metric} {abs(change):.1%} {word} than the saved run "
               f"(ratio {ratio:.3f}{scale}, {CONFIDENCE:.0%} CI "
               f"{low:.3f}-{high:.3f} over rounds and run-to-run noise {run_noise:.0%}; allowed {threshold:.0%} worse)")
        results.append(GateResult("perf_regression:" + metric, config, not regressed, ratio, threshold,
                                  ("REGRESSION " if regressed else "") + msg, case))
    return results


# -- enforcing ----------------------------------------------------------------------------------

class GateFailure(AssertionError):
    """A gate that failed: the test fails with every failing gate's message."""


class GateKeeper:
    """Holds a run's gate settings, evaluates gates as cases finish and keeps every verdict."""

    def __init__(self, overrides: dict[str, float | None], saved_cases: dict | None, thresholds: dict[str, float],
                 record: Callable[[GateResult], None], run_noise: float = 0.0,
                 normalized_noise: float | None = None, saved_probe: list[float] | None = None,
                 current_probe: Callable[[], list[float] | None] = lambda: None):
        self.overrides = overrides
        self.run_noise = run_noise
        # with both runs' host probes the gate judges on the hosts' scale and allows what is left
        self.normalized_noise = run_noise if normalized_noise is None else normalized_noise
        self.saved_probe, self.current_probe = saved_probe, current_probe
        self.saved_cases = saved_cases
        self.thresholds = thresholds
        self._record = record

    def _enforce(self, results: list[GateResult]) -> list[GateResult]:
        for result in results:
            self._record(result)
        failed = [r.message for r in results if r.passed is False]
        if failed:
            raise GateFailure("\n".join(failed))
        return results

    def check_accuracy(self, config: str, gates: Gates, metrics: dict[str, Any], baseline: str | None) -> list[GateResult]:
        return self._enforce(accuracy_gates(config, effective_gates(gates, self.overrides), metrics, baseline))

    def check_latency(self, config: str, batch_size: int, extra: dict[str, Any]) -> list[GateResult]:
        if self.saved_cases is None:
            return []
        saved = self.saved_cases.get((config, batch_size))
        current = self.current_probe()
        hosts = (current, self.saved_probe) if current and self.saved_probe else None
        noise = self.normalized_noise if hosts else self.run_noise
        return self._enforce(perf_gates(config, batch_size, extra, saved, self.thresholds, noise, hosts))
