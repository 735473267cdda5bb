"""The two measurements a benchmark test makes, wired into pytest-benchmark's pedantic mode."""
from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from .engine import Engine
from .load import EvalSet
from .measure import LatencyRecorder, baseline_comparison, classification_metrics, latency_stats, make_batches
from .run import CaseRecord, RunStore


def measure_latency(benchmark, engine: Engine, texts: list[str], batch_size: int, *, samples: int, warmup: int,
                    store: RunStore, config: str, record: bool = True) -> dict[str, float]:
    """Time `samples` batches of `batch_size` texts after `warmup` untimed ones.

    Tokenization is inside the timed region: a batch goes in as strings, as a user's request would.
    `record=False` keeps the case out of the run's matrix (for measurements about the suite itself)."""
    batches = make_batches(texts, batch_size, samples + warmup)
    feed = itertools.cycle(batches)
    recorder = LatencyRecorder(engine.classify)
    benchmark.group = config
    benchmark.pedantic(recorder, setup=lambda: ((next(feed),), {}), rounds=samples, warmup_rounds=warmup,
                       iterations=1)
    timed = recorder.samples_ns[warmup:]
    stats = latency_stats(timed, batch_size)
    benchmark.extra_info.update(
        kind="latency" if record else "suite", config=config, engine=engine.name, batch_size=batch_size, warmup_batches=warmup,
        tokenization_in_timed_region=True, latency_samples_ns=timed, **stats,
    )
    if record:
        store.add_case(CaseRecord(config=config, batch_size=batch_size, metrics=stats))
    return stats


def predict(engine: Engine, texts: list[str], batch_size: int) -> np.ndarray:
    """Probabilities for all texts, in batches."""
    parts = [engine.classify(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    return np.concatenate(parts, axis=0)


def measure_accuracy(benchmark, engine: Engine, eval_set: EvalSet, batch_size: int, *, store: RunStore,
                     config: str) -> dict[str, Any]:
    """Classify the whole split once (timed as one round) and score it against the labels."""
    benchmark.group = config
    probs = benchmark.pedantic(predict, args=(engine, eval_set.texts, batch_size), rounds=1, iterations=1)
    if probs.shape != (len(eval_set.texts), len(eval_set.labels)):
        raise AssertionError(f"engine returned probabilities of shape {probs.shape}, expected "
                             f"({len(eval_set.texts)}, {len(eval_set.labels)})")
    preds = probs.argmax(axis=1)
    scores = classification_metrics(eval_set.label_ids, preds, len(eval_set.labels))
    record = store.config(config)
    record.metrics.update(scores)
    record.predictions, record.probabilities = preds, probs
    base = store.baseline()
    if base is not None and base is not record:
        scores.update(baseline_comparison(probs, scores, base.probabilities, base.metrics))
        scores["baseline"] = base.name
        record.metrics.update({k: v for k, v in scores.items() if k != "baseline"})
        record.info["baseline"] = base.name
    benchmark.extra_info.update(kind="accuracy", config=config, engine=engine.name, batch_size=batch_size,
                                rows=len(eval_set.texts), split=eval_set.split, **scores)
    store.save()
    return scores
