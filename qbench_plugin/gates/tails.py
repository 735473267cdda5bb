"""When a tail percentile may be gated, and the confidence each gate needs when a run gates many.

A p99 of 50 batches is set by the slowest one or two calls, a p95 of 50 by the slowest three: one
stall in either run moves it, and no interval over 50 batches can bound it (the distribution-free
95% interval of a p95 is only finite from 72 samples, a p99's from 367). So a quantile q is gated
only when at least MIN_BEYOND timed batches lie beyond it, n * (1 - q) >= MIN_BEYOND: p95 from 100
batches, p99 from 500. Below that the gate says so ("p99 of 50 batches is about the largest; not
gated") and does not decide.

A run gates every (case, metric) at once. Each interval alone misses with probability 1 - CONFIDENCE,
so a 40-case matrix would fail CI on noise alone in most runs (a simulation of identical runs: the
p99 gate alone raised a false regression in 1% of cases, 30% of 40-case runs). The gates therefore
use a Bonferroni level: each interval at 1 - (1 - CONFIDENCE) / m for the m comparisons the run
makes, so the chance of any false regression in the run stays at most 1 - CONFIDENCE. (Holm would
need every comparison's result before deciding any; the gates decide as each case finishes.)
"""
from __future__ import annotations

import math

MIN_BEYOND = 5  # timed batches that must lie beyond a gated quantile
QUANTILES = {"latency_p95_ms": 0.95, "latency_p99_ms": 0.99}
MAX_RESAMPLES = 100_000


def samples_needed(metric: str) -> int:
    """Timed batches a metric needs before it may be gated (1 for metrics that are not tails)."""
    q = QUANTILES.get(metric)
    return 1 if q is None else math.ceil(MIN_BEYOND / (1 - q) - 1e-9)


def too_few_for_tail(metric: str, samples: int) -> str | None:
    """Why `metric` of `samples` batches is not gated, in words; None when it may be."""
    needed = samples_needed(metric)
    if samples >= needed:
        return None
    q = QUANTILES.get(metric)
    if q is None:  # a mean or median needs one batch
        return "no batches timed; not gated"
    rank = max(1, math.floor(samples * (1 - q)) + 1)  # the order statistic from the top the quantile sits at
    where = "about the largest" if rank == 1 else f"about the {_ordinal(rank)} largest"
    return (f"p{round(q * 100)} of {samples} batches is {where} (max of n); not gated: at least {MIN_BEYOND} "
            f"batches beyond it are needed ({needed} batches)")


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def family_confidence(confidence: float, comparisons: int) -> float:
    """Bonferroni: the level of each of `comparisons` intervals so that all hold together at `confidence`."""
    return 1 - (1 - confidence) / max(1, comparisons)


def resamples_for(confidence: float, base: int) -> int:
    """Bootstrap resamples enough for the interval's tails: at least 20 resamples beyond each end."""
    tail = (1 - confidence) / 2
    return min(MAX_RESAMPLES, max(base, math.ceil(20 / tail)))
