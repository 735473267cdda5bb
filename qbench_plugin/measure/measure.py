"""Numbers from raw samples: latency percentiles, throughput, memory, accuracy.

Every batch latency is kept (nanoseconds, perf_counter_ns) and the statistics are derived from
them with numpy, so anyone can recompute them from the JSON.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

NS_PER_MS = 1e6


def latency_stats(samples_ns: Sequence[int], batch_size: int) -> dict[str, float]:
    """Latency percentiles (ms) and throughput (samples/s) from per-batch wall times."""
    if len(samples_ns) == 0:
        raise ValueError("no latency samples")
    ms = np.asarray(samples_ns, dtype=np.float64) / NS_PER_MS
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {
        "latency_mean_ms": float(ms.mean()),
        "latency_p50_ms": float(p50),
        "latency_p95_ms": float(p95),
        "latency_p99_ms": float(p99),
        "latency_min_ms": float(ms.min()),
        "latency_max_ms": float(ms.max()),
        "throughput_samples_per_s": float(batch_size * len(ms) / (ms.sum() / 1e3)),
    }


def paired_ratio(numerator_ns: Sequence[int], denominator_ns: Sequence[int], resamples: int = 5000,
                 seed: int = 0) -> tuple[float, float, float]:
    """Median of per-pair ratios numerator_i / denominator_i and its bootstrap 95% interval.

    For calls made in pairs on the same input one right after the other: the per-pair ratio cancels
    the drift a GPU's call times show over seconds (both members see the same state), which ratios of
    whole-sample medians do not."""
    num, den = np.asarray(numerator_ns, dtype=np.float64), np.asarray(denominator_ns, dtype=np.float64)
    if num.shape != den.shape or num.size == 0:
        raise ValueError(f"need equally many paired samples, got {num.size} and {den.size}")
    ratios = num / den
    picks = np.random.default_rng(seed).integers(0, ratios.size, size=(resamples, ratios.size))
    low, high = np.percentile(np.median(ratios[picks], axis=1), [2.5, 97.5])
    return float(np.median(ratios)), float(low), float(high)


class LatencyRecorder:
    """Wraps a call so that each invocation's wall time is kept, in nanoseconds."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.samples_ns: list[int] = []

    def __call__(self, *args, **kwargs):
        start = time.perf_counter_ns()
        result = self.fn(*args, **kwargs)
        self.samples_ns.append(time.perf_counter_ns() - start)
        return result


def make_batches(texts: Sequence[str], batch_size: int, count: int) -> list[list[str]]:
    """`count` batches of `batch_size` texts taken in order, cycling through the texts.

    Deterministic, so every config and engine sees exactly the same batches."""
    if not texts:
        raise ValueError("no texts to batch")
    n = len(texts)
    return [[texts[(i * batch_size + j) % n] for j in range(batch_size)] for i in range(count)]


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1; classes absent from both truth and prediction are left out of the mean."""
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    if t.shape != p.shape or t.size == 0:
        raise ValueError("y_true and y_pred must be non-empty and of equal length")
    confusion = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(confusion, (t, p), 1)
    tp = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    denom = support + predicted
    present = denom > 0
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=present)
    return {"accuracy": float((t == p).mean()), "macro_f1": float(f1[present].mean())}


def baseline_comparison(probs: np.ndarray, scores: dict[str, float], base_probs: np.ndarray,
                        base_scores: dict[str, float]) -> dict[str, float]:
    """How a config's answers differ from the baseline config's on the same rows."""
    if probs.shape != base_probs.shape:
        raise ValueError(f"cannot compare predictions of shape {probs.shape} with the baseline's {base_probs.shape}")
    return {
        "accuracy_delta": scores["accuracy"] - base_scores["accuracy"],
        "macro_f1_delta": scores["macro_f1"] - base_scores["macro_f1"],
        "flip_rate": float((probs.argmax(1) != base_probs.argmax(1)).mean()),
        "max_abs_prob_diff": float(np.abs(probs - base_probs).max()),
    }


# -- memory -------------------------------------------------------------------------------------

def process_tree_rss_bytes() -> int:
    """RSS of this process and its children: vLLM runs its engine core in a child process."""
    import psutil

    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total


def gpu_memory_used_bytes() -> int | None:
    """Device memory in use by all processes (the engine core is another process), or None."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        free, total = torch.cuda.mem_get_info()
        return int(total - free)
    except Exception:
        return None


@dataclass
class MemoryReading:
    rss_peak_bytes: int = 0
    gpu_peak_bytes: int | None = None
    rss_end_bytes: int = 0
    gpu_end_bytes: int | None = None
    samples: int = 0


class MemoryTracker:
    """Samples process-tree RSS and GPU memory in a thread while a block runs; keeps the peak."""

    def __init__(self, interval_s: float = 0.25):
        self.interval_s = interval_s
        self.reading = MemoryReading()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        r = self.reading
        rss = process_tree_rss_bytes()
        gpu = gpu_memory_used_bytes()
        r.rss_peak_bytes = max(r.rss_peak_bytes, rss)
        if gpu is not None:
            r.gpu_peak_bytes = max(r.gpu_peak_bytes or 0, gpu)
        r.rss_end_bytes, r.gpu_end_bytes = rss, gpu
        r.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def start(self) -> "MemoryTracker":
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="qbench-memory", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> MemoryReading:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        return self.reading

    @contextmanager
    def track(self) -> Iterator[MemoryReading]:
        self.start()
        try:
            yield self.reading
        finally:
            self.stop()


@dataclass
class Stopwatch:
    seconds: float = 0.0
    _start: int = field(default=0, repr=False)

    @contextmanager
    def track(self) -> Iterator["Stopwatch"]:
        self._start = time.perf_counter_ns()
        try:
            yield self
        finally:
            self.seconds = (time.perf_counter_ns() - self._start) / 1e9


def mib(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)
