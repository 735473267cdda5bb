"""CI gates: accuracy against fixed thresholds and the run's baseline, and performance against a
saved run (each case's own speed, or with --qbench-perf-relative-to its speed over a reference config's).

Performance decisions are noise-aware: each latency statistic is compared through a bootstrap
confidence interval of the ratio current/saved over the rounds both runs kept (uncertainty.py), and
a case regresses only when the whole interval lies beyond the threshold, so noise alone does not
fail CI. Tails are gated only from enough batches, and each interval's level is corrected for the
number of comparisons the run makes (tails.py). A saved run that measured something else is refused
(baseline.py).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from qbench_plugin.config import BenchConfig, Gates
from qbench_plugin.record.metrics import BY_NAME
from qbench_plugin.gates.baseline import read_saved
from qbench_plugin.stats.probe import HostCheck, probe_seconds
from qbench_plugin.gates.tails import family_confidence, resamples_for, too_few_for_tail
from qbench_plugin.stats.uncertainty import (CONFIDENCE, MIN_ROUNDS, MIN_SAMPLES, RESAMPLES, Timed, ratio_interval,
                                             relative_interval, widen)

# metric -> allowed relative change in the worse direction (0.10: 10 % slower / less / more memory)
DEFAULT_PERF_THRESHOLDS: dict[str, float] = {
    "latency_p50_ms": 0.10,
    "latency_p95_ms": 0.15,
    "latency_p99_ms": 0.25,
    "throughput_samples_per_s": 0.10,
}
GATED_METRICS = (*DEFAULT_PERF_THRESHOLDS, "latency_mean_ms")  # the names --qbench-perf-thresholds takes
BASELINE_GATES = ("max_accuracy_drop", "max_flip_rate")  # the accuracy gates that need the baseline's predictions


@dataclass(frozen=True)
class GateResult:
    gate: str
    config: str
    passed: bool | None  # None: not decidable (missing data); fails CI only under --qbench-gate-strict
    measured: float | None
    threshold: float | None
    message: str
    case: str | None = None
    # True: not gated by rule (a tail of too few batches), a choice made before the run rather than
    # missing data, so --qbench-gate-strict does not fail it
    by_rule: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- accuracy -----------------------------------------------------------------------------------

def effective_gates(gates: Gates, overrides: dict[str, float | None]) -> Gates:
    """The config's gates with command-line overrides applied (an override wins when set)."""
    values = gates.model_dump()
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Gates(**values)


def accuracy_gates(config: str, gates: Gates, metrics: dict[str, Any], baseline: str | None,
                   is_baseline: bool = False) -> list[GateResult]:
    """Evaluate the accuracy gates one config has; each result names config, threshold and value.

    The run's baseline config is not compared with itself: its drop and flip rate are 0 by definition,
    which is decided, not missing (--qbench-gate-strict fails what is missing)."""
    if is_baseline and metrics.get("accuracy_delta") is None:
        metrics, baseline = {**metrics, "accuracy_delta": 0.0, "flip_rate": 0.0}, f"{config} (itself)"
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
        if not sep:
            raise ValueError(f"perf threshold {part!r}: expected METRIC=PERCENT% with METRIC one of "
                             f"{', '.join(GATED_METRICS)}")
        if name not in GATED_METRICS:  # a name that is never checked would pass silently
            raise ValueError(f"perf threshold {part!r}: {name!r} is not gated; valid: {', '.join(GATED_METRICS)}")
        value = value.strip()
        number = float(value.rstrip("%")) / 100 if value.endswith("%") else float(value)
        if number < 0:
            raise ValueError(f"perf threshold {part!r}: must be >= 0")
        thresholds[name] = number
    return thresholds


def load_saved_cases(path: str | Path) -> dict[tuple[str, int], dict[str, Any]]:
    """(config, batch size) -> extra_info of each latency case in a saved pytest-benchmark JSON."""
    return cases_of(*read_saved(path))


def cases_of(path: Path, data: Mapping[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
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


def probe_of(data: Mapping[str, Any]) -> list[float] | None:
    """A saved pytest-benchmark JSON's per-round host-probe seconds (probe.py), or None without one."""
    record = data.get("qbench") if isinstance(data, dict) else None
    return probe_seconds(((record or {}).get("measurement") or {}).get("host_probe"))


def perf_gates(config: str, batch_size: int, current: dict[str, Any], saved: dict[str, Any] | None,
               thresholds: dict[str, float], run_noise: float = 0.0,
               confidence: float = CONFIDENCE, host_note: str = "") -> list[GateResult]:
    """Compare one case with the same case of a saved run, metric by metric.

    The interval of current/saved resamples each run's rounds on its own (uncertainty.py), so both
    runs' between-round spread is in it, and is widened by the machine's A/A-measured run-to-run
    noise (a whole session's speed moves, every config alike); a case regresses only when the whole
    interval lies beyond the threshold in the worse direction. `confidence` is each interval's level (the
    run's family level, Bonferroni-corrected by the caller); a tail of too few batches is not gated.
    host_note: what the two runs' host probes say of the machines (HostCheck.note), added to each
    message so a verdict that the host explains says so."""
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

    def interval(metric: str):
        return ratio_interval(cur, old, metric, paired=False, confidence=confidence,
                              resamples=resamples_for(confidence, RESAMPLES))

    return _decide(case, config, thresholds, min(cur.samples_ns.size, old.samples_ns.size), interval, run_noise,
                   confidence, "than the saved run", "over rounds and run-to-run", host_note)


def relative_perf_gates(config: str, batch_size: int, reference: str, current: tuple[dict, dict | None],
                        saved: tuple[dict | None, dict | None], thresholds: dict[str, float], run_noise: float = 0.0,
                        confidence: float = CONFIDENCE, host_note: str = "") -> list[GateResult]:
    """Compare one case's speed relative to `reference` (same batch size, same run) with that ratio in
    the saved run: `current` and `saved` are (the config's case, the reference's case) of each run.

    Each run's pair is compared round by round, so a whole session's shift, which hits every config of
    a run alike, cancels (uncertainty.relative_interval); `run_noise` is then the relative allowance
    (RELATIVE_RUN_NOISE, 10% where measured), not the 20-25% between two runs' absolute speeds. A
    slowdown of every config alike is invisible here: the reference's own cases keep the absolute gate."""
    case = f"{config}-bs{batch_size}"
    missing = [f"{name}-bs{batch_size} timed in {run}" for name, run, extra in (
        (config, "the saved run", saved[0]), (reference, "this run", current[1]),
        (reference, "the saved run", saved[1])) if extra is None]
    if missing:
        return [GateResult("perf_regression", config, None, None, None,
                           f"case {case}: no {' and no '.join(missing)}; cannot compare against {reference}", case)]
    cur = tuple(timed_of({**extra, "batch_size": batch_size}) for extra in current)
    old = tuple(timed_of({**extra, "batch_size": batch_size}) for extra in saved)
    few = [f"{name}-bs{batch_size} has {timed.units} rounds in {run}" for name, run, timed in (
        (config, "this run", cur[0]), (reference, "this run", cur[1]), (config, "the saved run", old[0]),
        (reference, "the saved run", old[1])) if not timed.decidable]
    if few:
        return [GateResult("perf_regression", config, None, None, None,
                           f"case {case}: {'; '.join(few)}; at least {MIN_ROUNDS} rounds each are needed to decide "
                           f"against {reference}", case)]

    def interval(metric: str):
        return relative_interval(cur, old, metric, resamples=resamples_for(confidence, RESAMPLES),
                                 confidence=confidence)

    samples = min(t.samples_ns.size for t in (*cur, *old))
    return _decide(case, config, thresholds, samples, interval, run_noise, confidence,
                   f"against {reference} than in the saved run", "over rounds paired in each run and relative run-to-run",
                   host_note)


def unshared_rounds(config: str, reference: str, current: tuple[dict, dict | None],
                    saved: tuple[dict | None, dict | None]) -> str | None:
    """Why `config` and `reference` did not share their rounds in time in one of the runs (None: they did):
    a later group of engines (--qbench-interleave off: a group a config) reuses the round labels minutes apart."""
    split = [f"{run}: {config} in group {pair[0].get('group')}, {reference} in group {pair[1].get('group')}"
             for run, pair in (("this run", current), ("the saved run", saved))
             if pair[0] is not None and pair[1] is not None and pair[0].get("group") != pair[1].get("group")]
    return "; ".join(split) or None


def _decide(case: str, config: str, thresholds: dict[str, float], samples: int,
            interval: Callable[[str], tuple[float, float, float] | None], run_noise: float, confidence: float,
            than: str, over: str, host_note: str) -> list[GateResult]:
    """Each gated metric's verdict from its ratio interval (current over saved): a regression only
    when the whole interval, widened by run_noise, lies beyond the threshold in the worse direction."""
    results = []
    for metric, threshold in thresholds.items():
        if metric not in GATED_METRICS:
            continue
        few = too_few_for_tail(metric, samples)
        if few is not None:
            results.append(GateResult("perf_regression:" + metric, config, None, None, threshold,
                                      f"case {case}: {metric}: {few}", case, by_rule=True))
            continue
        found = widen(interval(metric), run_noise)
        if found is None:
            results.append(GateResult("perf_regression:" + metric, config, None, None, threshold,
                                      f"case {case}: {metric}: cannot pair it with the reference in one of the "
                                      f"runs (samples without round labels, or fewer than {MIN_ROUNDS} rounds "
                                      "shared); cannot decide", case))
            continue
        ratio, low, high = found
        if BY_NAME[metric].higher_is_better:
            regressed, change = high < 1 - threshold, 1 - ratio
        else:
            regressed, change = low > 1 + threshold, ratio - 1
        word = "worse" if change > 0 else "better"
        msg = (f"case {case}: {metric} {abs(change):.1%} {word} {than} "
               f"(ratio {ratio:.3f}, {_level(confidence)} CI {low:.3f}-{high:.3f} {over} "
               f"noise {run_noise:.0%}; allowed {threshold:.0%} worse){host_note}")
        results.append(GateResult("perf_regression:" + metric, config, not regressed, ratio, threshold,
                                  ("REGRESSION " if regressed else "") + msg, case))
    return results


def _level(confidence: float) -> str:
    return f"{confidence * 100:.4f}".rstrip("0").rstrip(".") + "%"


# -- enforcing ----------------------------------------------------------------------------------

class GateFailure(AssertionError):
    """A gate that failed: the test fails with every failing gate's message."""


class GateKeeper:
    """Holds a run's gate settings, evaluates gates as cases finish and keeps every verdict."""

    def __init__(self, overrides: dict[str, float | None], saved_cases: dict | None, thresholds: dict[str, float],
                 record: Callable[[GateResult], None], run_noise: float = 0.0, *, strict: bool = False,
                 comparisons: int = 1, saved_probe: list[float] | None = None,
                 current_probe: Callable[[], list[float] | None] = lambda: None,
                 defer: Callable[[str], None] | None = None, relative_to: str | None = None,
                 relative_noise: float = 0.0,
                 current_case: Callable[[str, int], dict[str, Any] | None] = lambda config, batch_size: None):
        self.overrides = overrides
        # --qbench-perf-relative-to: every other config's speed is gated over this config's in its own run
        # (relative_perf_gates, at relative_noise); current_case looks up this run's reference case
        self.relative_to, self.relative_noise, self.current_case = relative_to or None, relative_noise, current_case
        # a pytest-xdist worker without the baseline config: its gates against the baseline go to the
        # controller, which decides them once every worker's results are merged (distribute.py)
        self.defer = defer
        self.run_noise = run_noise
        self.saved_probe, self.current_probe = saved_probe, current_probe
        self.saved_cases = saved_cases
        self.thresholds = thresholds
        self._record = record
        self.strict = strict
        # every perf interval of the run at this level, so that all of them hold together at CONFIDENCE
        self.confidence = family_confidence(CONFIDENCE, comparisons)

    def _enforce(self, results: list[GateResult]) -> list[GateResult]:
        if self.strict:
            results = [undecided_fails(r) if r.passed is None and not r.by_rule else r for r in results]
        for result in results:
            self._record(result)
        failed = [r.message for r in results if r.passed is False]
        if failed:
            raise GateFailure("\n".join(failed))
        return results

    def check_accuracy(self, config: str, gates: Gates, metrics: dict[str, Any], baseline: str | None,
                       is_baseline: bool = False) -> list[GateResult]:
        results = accuracy_gates(config, effective_gates(gates, self.overrides), metrics, baseline, is_baseline)
        later = [r for r in results if r.gate in BASELINE_GATES] if self.defer and not (baseline or is_baseline) else []
        decided = self._enforce([r for r in results if r not in later])
        if later:
            import pytest  # the one verdict this class gives that is neither pass nor fail

            self.defer(config)
            pytest.skip(f"qbench: config {config}: {', '.join(r.gate for r in later)} decided after the merge "
                        "(the baseline ran on another pytest-xdist worker): see the gate lines in the summary")
        return decided

    def check_latency(self, config: str, batch_size: int, extra: dict[str, Any]) -> list[GateResult]:
        if self.saved_cases is None:
            return []
        saved = self.saved_cases.get((config, batch_size))
        note = HostCheck.of(self.current_probe(), self.saved_probe).note("this run", "the saved run")
        if self.relative_to and config != self.relative_to:
            reference = self.relative_to
            current = (extra, self.current_case(reference, batch_size))
            pairs = (saved, self.saved_cases.get((reference, batch_size)))
            split = unshared_rounds(config, reference, current, pairs)
            if split is None:
                return self._enforce(relative_perf_gates(config, batch_size, reference, current, pairs, self.thresholds,
                                                         self.relative_noise, confidence=self.confidence, host_note=note))
            note = f"{note} (absolute, not against {reference}: timed in different groups, {split})"
        return self._enforce(perf_gates(config, batch_size, extra, saved, self.thresholds, self.run_noise,
                                        confidence=self.confidence, host_note=note))


def gates_after_merge(configs: Mapping[str, BenchConfig], records: Mapping[str, Any],
                      overrides: Mapping[str, float | None], *, strict: bool = False) -> list[GateResult]:
    """The baseline gates that workers left to the controller (GateKeeper.defer), decided on the merged
    records: `configs` are the deferred configs, `records` their merged ConfigRecords."""
    results = []
    for name, cfg in configs.items():
        rec = records.get(name)
        metrics, baseline = (rec.metrics, rec.info.get("baseline")) if rec is not None else ({}, None)
        for result in accuracy_gates(name, effective_gates(cfg.gates, dict(overrides)), metrics, baseline):
            if result.gate in BASELINE_GATES:
                results.append(undecided_fails(result) if strict and result.passed is None else result)
    return results


def undecided_fails(result: GateResult) -> GateResult:
    """Under --qbench-gate-strict a gate that could not be decided is a failure, saying why."""
    return replace(result, passed=False, message=f"UNDECIDED (--qbench-gate-strict) {result.message}")


def perf_comparisons(cases: int, thresholds: Mapping[str, float], samples: int) -> int:
    """How many perf intervals a run of `cases` latency cases of `samples` batches decides."""
    return cases * sum(1 for m in thresholds if m in GATED_METRICS and too_few_for_tail(m, samples) is None)


# -- which configs the report may recommend ---------------------------------------------------------

def accuracy_gate_failures(record: Mapping[str, Any], config: BenchConfig | None,
                           overrides: Mapping[str, float | None] | None = None) -> list[str]:
    """Why a config may not be recommended; empty when it may. `record` is a config's qbench.json entry."""
    name = record.get("name") or (config.name if config else "?")
    metrics = record.get("metrics") or {}
    if record.get("status") not in (None, "ready"):
        return [f"config {name} did not run ({record.get('status')})"]
    if metrics.get("accuracy") is None:
        return [f"config {name}: accuracy not measured"]
    rules = effective_gates(config.gates if config else Gates(), dict(overrides or {}))
    verdicts = accuracy_gates(name, rules, metrics, (record.get("info") or {}).get("baseline"))
    # undecidable (None), e.g. a drop gate on the baseline itself, does not exclude: gates.py's CI rule
    return [v.message for v in verdicts if v.passed is False]


def passes_accuracy_gates(record: Mapping[str, Any], config: BenchConfig | None,
                          overrides: Mapping[str, float | None] | None = None) -> bool:
    """The one predicate recommendations use; swap its body to change what 'passes' means."""
    return not accuracy_gate_failures(record, config, overrides)


def gate_frame(configs: Mapping[str, Mapping[str, Any]], bench_configs: Mapping[str, BenchConfig],
               overrides: Mapping[str, float | None] | None = None) -> pd.DataFrame:
    rows = []
    for name, rec in configs.items():
        cfg = bench_configs.get(name)
        failures = accuracy_gate_failures({"name": name, **rec}, cfg, overrides)
        rules = cfg.gates.model_dump(exclude_none=True) if cfg else {}
        rows.append({"config": name, "status": rec.get("status"), "eligible": not failures,
                     "gates": ", ".join(f"{k}={v}" for k, v in rules.items()) or "none",
                     "why_not": "; ".join(failures)})
    return pd.DataFrame(rows, columns=["config", "status", "eligible", "gates", "why_not"])
