"""Which config to serve: the latency, throughput and balanced picks, with the configs tied with them.

Picks answer the deployment question, so they rank the configs of the serving engine (the run's
--qbench-engine, vLLM by default); a reference-engine config (transformers) is shown beside them as
faster or slower than the best serving-engine config, never picked.

A pick is a tie when another config's best row is within noise of the winner: the 95% interval of
their ratio, resampling the rounds both were timed in (paired: drift in a round hits both), includes
1. Within a tie the pick goes to the config with less memory, then higher accuracy, then the better
point estimate; the report names every tied config, so two reruns give the same pick or tie sets
that overlap.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import pandas as pd

from qbench_plugin.config import BenchConfig
from qbench_plugin.stats.uncertainty import MIN_ROUNDS, MIN_SAMPLES, Timed, ratio_interval

KINDS = ("latency", "throughput", "balanced")
KIND_TITLES = {"latency": "best for latency (lowest p95)", "throughput": "best for throughput",
               "balanced": "best balanced (balance score)"}
KIND_METRICS = {"latency": ("latency_p95_ms",), "throughput": ("throughput_samples_per_s",),
                "balanced": ("throughput_samples_per_s", "latency_p95_ms")}


def _minmax(values: pd.Series, flat: float) -> pd.Series:
    low, high = values.min(), values.max()
    if not math.isfinite(high - low) or high == low:
        return pd.Series(flat, index=values.index)
    return (values - low) / (high - low)


def balance_scores(rows: pd.DataFrame) -> pd.Series:
    """mean(minmax(throughput), 1 - minmax(p95)) over the given rows (the eligible ones), in [0, 1].

    Where every row has the same value of a metric, no row is worse on it: its term is 1 for all."""
    if rows.empty:
        return pd.Series(dtype=float)
    thr = _minmax(rows["throughput_samples_per_s"], flat=1.0)
    p95 = _minmax(rows["latency_p95_ms"], flat=0.0)
    return (thr + (1 - p95)) / 2


@dataclass(frozen=True)
class Tied:
    config: str
    batch_size: int
    ratios: dict[str, tuple[float, float, float]]  # metric -> (tied / winner, low, high)

    def text(self) -> str:
        if not self.ratios:
            return f"{self.config} at batch size {self.batch_size} (the best point estimate)"
        parts = [f"{_short(m)} {r:.3f} ({lo:.3f}-{hi:.3f})" for m, (r, lo, hi) in self.ratios.items()]
        return f"{self.config} at batch size {self.batch_size} ({', '.join(parts)} of the best point estimate's)"


@dataclass(frozen=True)
class Recommendation:
    kind: str
    config: str
    method: str
    engine: str
    batch_size: int
    latency_p95_ms: float
    throughput_samples_per_s: float
    accuracy: float | None
    balance_score: float
    tied: tuple[Tied, ...] = ()  # the other configs within noise of the fastest row
    fastest: str | None = None  # config@batch size with the best point estimate, when the tie-break moved the pick
    memory_metric: str | None = None

    @property
    def title(self) -> str:
        return KIND_TITLES[self.kind]

    def tie_text(self) -> str | None:
        if not self.tied:
            return None
        members = "; ".join(t.text() for t in self.tied)
        how = f"less {self.memory_metric or 'memory'}, then higher accuracy"
        return (f"{self.title}: {self.config} at batch size {self.batch_size} is tied with {members}; "
                f"the tie goes to {how}")


def _short(metric: str) -> str:
    return "p95" if metric == "latency_p95_ms" else "throughput"


@dataclass(frozen=True)
class ReferenceLine:
    """A config of another engine against the best serving-engine config, same run, paired rounds."""

    config: str
    engine: str
    batch_size: int
    versus: str  # the best serving-engine config by throughput
    versus_engine: str
    versus_batch_size: int
    ratio: float  # reference throughput / serving throughput
    interval: tuple[float, float] | None

    def text(self) -> str:
        word = "faster" if self.ratio >= 1 else "slower"
        factor = self.ratio if self.ratio >= 1 else 1 / self.ratio
        noise = ""
        if self.interval is not None:
            noise = f", 95% interval {self.interval[0]:.3f}-{self.interval[1]:.3f}"
            if self.interval[0] <= 1 <= self.interval[1]:
                noise += ", within noise"
        return (f"{self.config} ({self.engine}, a reference engine) at batch size {self.batch_size} is {factor:.2f}x "
                f"{word} than the best {self.versus_engine} config, {self.versus} at batch size "
                f"{self.versus_batch_size} (throughput ratio {self.ratio:.3f}{noise}); shown for reference, not picked")


@dataclass
class Picks:
    recommendations: dict[str, Recommendation] = field(default_factory=dict)
    references: list[ReferenceLine] = field(default_factory=list)
    engine: str = "vllm"
    reason: str | None = None  # why there is no pick
    left_out: list[str] = field(default_factory=list)  # rows too thinly timed to rank, each with why


def _timed(samples: Mapping[tuple[str, int], Mapping[str, Any]], config: str, batch_size: int) -> Timed:
    case = samples.get((config, batch_size)) or {}
    return Timed.of(case.get("samples_ns") or [], batch_size, case.get("sample_rounds") or None)


def undecidable(rows: pd.DataFrame, samples: Mapping[tuple[str, int], Mapping[str, Any]],
                planned_rounds: int | None = None) -> dict[Any, str]:
    """Rows whose recorded samples are too few to rank, by index, each with why.

    A case of one sample (or cut short after a round or two) has a point estimate but no interval: it
    could win a pick on one lucky call and could never be found tied. A row needs MIN_ROUNDS rounds, or
    every round of a run planned with fewer (a quick look, whose ties the report cannot decide anyway).
    Rows without recorded samples (hand-built tables, runs from before samples were kept) stay."""
    out = {}
    for index, row in rows.iterrows():
        case = samples.get((row["config"], int(row["batch_size"])))
        if not case or not case.get("samples_ns"):
            continue
        timed = _timed(samples, str(row["config"]), int(row["batch_size"]))
        what = "round" if timed.labelled else "batch"
        need = MIN_ROUNDS if timed.labelled else MIN_SAMPLES
        if timed.labelled and planned_rounds:
            need = min(need, planned_rounds)
        if timed.units < need:
            out[index] = (f"{row['config']} at batch size {int(row['batch_size'])}: {_count(timed.units, what)} of "
                          f"{_count(timed.samples_ns.size, 'timed batch')}; at least {_count(need, what)} are "
                          "needed to rank it")
    return out


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith('ch') else 's'}"


def _best_row(rows: pd.DataFrame, kind: str) -> pd.Series:
    orders = {
        "latency": (["latency_p95_ms", "throughput_samples_per_s", "config", "batch_size"], [True, False, True, True]),
        "throughput": (["throughput_samples_per_s", "latency_p95_ms", "config", "batch_size"], [False, True, True, True]),
        "balanced": (["balance_score", "throughput_samples_per_s", "config", "batch_size"], [False, False, True, True]),
    }
    by, ascending = orders[kind]
    return rows.sort_values(by, ascending=ascending, kind="stable").iloc[0]


def _recommendation(kind: str, row: pd.Series, **extra: Any) -> Recommendation:
    accuracy = row.get("accuracy")
    return Recommendation(
        kind=kind, config=str(row["config"]), method=str(row["method"]), engine=str(row["engine"]),
        batch_size=int(row["batch_size"]), latency_p95_ms=float(row["latency_p95_ms"]),
        throughput_samples_per_s=float(row["throughput_samples_per_s"]),
        accuracy=float(accuracy) if accuracy is not None and pd.notna(accuracy) else None,
        balance_score=float(row["balance_score"]), **extra)


def _tie(samples, kind: str, winner: pd.Series, other: pd.Series) -> Tied | None:
    """`other` is tied with `winner` when every metric of the kind is within noise (paired rounds)."""
    ratios = {}
    for metric in KIND_METRICS[kind]:
        found = ratio_interval(_timed(samples, other["config"], int(other["batch_size"])),
                               _timed(samples, winner["config"], int(winner["batch_size"])), metric, paired=True)
        if found is None or not (found[1] <= 1 <= found[2]):
            return None
        ratios[metric] = found
    return Tied(str(other["config"]), int(other["batch_size"]), ratios)


def _break_tie(candidates: pd.DataFrame, memory: str | None) -> pd.Series:
    keys, ascending = [], []
    if memory and memory in candidates and candidates[memory].notna().all():
        keys.append(memory), ascending.append(True)
    if "accuracy" in candidates and candidates["accuracy"].notna().all():
        keys.append("accuracy"), ascending.append(False)
    keys.append("_rank"), ascending.append(True)
    return candidates.sort_values(keys, ascending=ascending, kind="stable").iloc[0]


def recommend(eligible: pd.DataFrame, cases: list[Mapping[str, Any]] | None = None, *, engine: str = "vllm",
              memory: str | None = None, planned_rounds: int | None = None) -> Picks:
    """The three picks among eligible rows of the serving engine, each with its tie set."""
    samples = {(c["config"], int(c["batch_size"])): c for c in cases or []}
    serving = eligible[eligible["engine"] == engine].copy()
    out = Picks(engine=engine)
    thin = undecidable(serving, samples, planned_rounds)
    if thin:
        serving, out.left_out = serving.drop(index=list(thin)), list(thin.values())
        if serving.empty:
            out.reason = "no serving-engine case was timed in enough rounds to rank (" + "; ".join(out.left_out) + ")"
            return out
    if serving.empty:
        out.reason = (f"no eligible config ran on the serving engine ({engine}); reference engines are not picked"
                      if not eligible.empty else None)
        return out
    serving["balance_score"] = balance_scores(serving)
    for kind in KINDS:
        winner = _best_row(serving, kind)
        # each other config at its own best row for this kind, compared with the winner's row
        tied = []
        rows = [winner]
        for name, group in serving[serving["config"] != winner["config"]].groupby("config", sort=True):
            best = _best_row(group, kind)
            found = _tie(samples, kind, winner, best)
            if found is not None:
                tied.append(found)
                rows.append(best)
        candidates = pd.DataFrame(rows).assign(_rank=range(len(rows)))
        chosen = _break_tie(candidates, memory) if tied else winner
        others = tuple(t for t in tied if t.config != chosen["config"])
        if chosen["config"] != winner["config"]:
            others = (Tied(str(winner["config"]), int(winner["batch_size"]), {}), *others)
        out.recommendations[kind] = _recommendation(
            kind, chosen, tied=others, memory_metric=memory,
            fastest=f"{winner['config']}@{int(winner['batch_size'])}" if chosen["config"] != winner["config"] else None)
    out.references = reference_lines(eligible, samples, engine)
    return out


def reference_lines(eligible: pd.DataFrame, samples, engine: str) -> list[ReferenceLine]:
    """Each other-engine config at its best throughput against the best serving-engine config's."""
    serving = eligible[eligible["engine"] == engine]
    others = eligible[eligible["engine"] != engine]
    if serving.empty or others.empty:
        return []
    best = _best_row(serving.assign(balance_score=0.0), "throughput")
    lines = []
    for name, group in others.groupby("config", sort=True):
        row = _best_row(group.assign(balance_score=0.0), "throughput")
        found = ratio_interval(_timed(samples, name, int(row["batch_size"])),
                               _timed(samples, best["config"], int(best["batch_size"])),
                               "throughput_samples_per_s", paired=True)
        ratio = float(row["throughput_samples_per_s"]) / float(best["throughput_samples_per_s"])
        lines.append(ReferenceLine(str(name), str(row["engine"]), int(row["batch_size"]), str(best["config"]), engine,
                                   int(best["batch_size"]), ratio, found[1:] if found else None))
    return lines


# -- the winner's deployment settings ---------------------------------------------------------------

def deployment_settings(rec: Recommendation, record: Mapping[str, Any], config: BenchConfig | None,
                        settings: Mapping[str, Any]) -> dict[str, Any]:
    """Serving settings that reproduce the winner's measured setup (env-var style names)."""
    info = record.get("info") or {}
    kwargs = info.get("engine_kwargs") or {}
    if kwargs.get("quantization"):
        quantization = kwargs["quantization"]
    elif rec.method in ("gptq", "awq", "int8"):
        quantization = "compressed-tensors"  # vLLM reads it from the checkpoint's config; named for clarity
    elif rec.method == "none":
        quantization = "none"
    else:
        quantization = rec.method
    utilization = kwargs.get("gpu_memory_utilization", config.gpu_memory_utilization if config else 0.5)
    out: dict[str, Any] = {
        "MODEL": info.get("model") or settings.get("model"),
        "QUANTIZATION": quantization,
        "MAX_NUM_SEQS": rec.batch_size,
        "GPU_MEMORY_UTILIZATION": utilization,
        "MAX_MODEL_LEN": kwargs.get("max_model_len", settings.get("max_model_len")),
        "DTYPE": kwargs.get("dtype", config.dtype if config else None),
    }
    notes = [f"MAX_NUM_SEQS is the winning batch size ({rec.batch_size}): the concurrency that was measured"]
    if config is not None and info.get("device") != "cpu" and utilization != config.gpu_memory_utilization:
        notes.append(f"GPU_MEMORY_UTILIZATION {utilization} is the share this engine was given beside the run's other "
                     f"engines on the GPU (interleaved rounds, or pytest-xdist workers sharing it); a lone deployment "
                     f"can use the config's {config.gpu_memory_utilization}")
    if info.get("device") == "cpu":
        notes.append("measured on CPU, where vLLM sizes its KV cache with VLLM_CPU_KVCACHE_SPACE (GiB) and "
                     "ignores GPU_MEMORY_UTILIZATION; the value shown is the config's, for a GPU deployment")
    if rec.engine != "vllm":
        note = (f"the winner ran on the {rec.engine} engine (transformers), not vLLM; these settings describe "
                f"its quantization for a vLLM deployment, whose speed is that of a vllm config, not the one measured")
        if rec.method == "bitsandbytes":
            note += "; vLLM >= 0.28 has no bitsandbytes"
        notes.append(note)
    out["notes"] = notes
    return out
