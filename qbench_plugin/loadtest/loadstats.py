"""A Locust run's figures, from the locustfile's per-request records: the measured window (after ramp-up
and the settle period), rates and latency percentiles inside it, counts over the whole run, and Locust's
own totals beside ours."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from qbench_plugin.loadtest.loadgrid import LATE_TOLERANCE_MS
from qbench_plugin.record.metrics import LOAD_METRICS


def summarize(requests: Sequence[Sequence[Any]], batch_size: int, window: tuple[int, int] | None = None,
              ramp_s: float | None = None) -> dict[str, Any]:
    """The load metrics from per-request records [start unix ns, latency ns, status, outcome(, late ns)].

    Counts of requests and failures cover the whole run. Rates and latencies come from the measured
    `window` (unix ns, start and end): the requests answered inside it, per second of it, latency
    percentiles over its successful requests (a refused connection answers in microseconds and
    would flatter them). Without a window (Locust never started all its users) those stay None.
    `load_run_rps` is the whole run's rate, first request sent to last answer."""
    metrics: dict[str, Any] = dict.fromkeys(LOAD_METRICS)
    n = len(requests)
    metrics.update(load_requests=n, load_failures=0, load_server_errors=0, load_connection_errors=0,
                   load_ramp_s=None if ramp_s is None else round(ramp_s, 3))
    if n == 0:
        return metrics
    start = np.array([r[0] for r in requests], dtype=np.int64)
    latency = np.array([r[1] for r in requests], dtype=np.int64)
    status = np.array([r[2] for r in requests], dtype=np.int64)
    outcome = np.array([r[3] for r in requests])
    late = np.array([r[4] if len(r) > 4 and r[4] is not None else 0 for r in requests], dtype=np.int64)
    end = start + latency
    ok = outcome == "ok"
    run_s = max(float(end.max() - start.min()) / 1e9, 1e-9)
    metrics.update(
        load_failures=int(n - ok.sum()),
        load_server_errors=int((status >= 500).sum()),
        load_connection_errors=int((outcome == "connection_error").sum()),
        load_run_rps=round(n / run_s, 3),
    )
    if window is None or window[1] <= window[0]:
        return metrics
    w0, w1 = window
    inside = (end >= w0) & (end <= w1)
    window_s = (w1 - w0) / 1e9
    good = inside & ok
    metrics.update(
        load_window_requests=int(inside.sum()),
        load_late_requests=int((inside & (late > LATE_TOLERANCE_MS * 1e6)).sum()),
        load_rps=round(int(inside.sum()) / window_s, 3),
        load_texts_per_s=round(int(good.sum()) * batch_size / window_s, 3),
        load_duration_s=round(window_s, 3),
    )
    if good.any():
        ms = latency[good] / 1e6
        p50, p95, p99 = np.percentile(ms, [50, 95, 99])
        metrics.update(load_latency_mean_ms=round(float(ms.mean()), 3), load_latency_p50_ms=round(float(p50), 3),
                       load_latency_p95_ms=round(float(p95), 3), load_latency_p99_ms=round(float(p99), 3))
    return metrics


def measured_window(recorded: dict[str, Any], settle_s: float) -> tuple[tuple[int, int] | None, float | None]:
    """(window start, end) in unix ns and the ramp-up in s, from the locustfile's record: the window
    opens `settle_s` after spawning_complete and closes when Locust began to stop (or at the last
    answer, if it never recorded stopping). None when Locust never started all its users."""
    spawned, started = recorded.get("spawning_complete_unix_ns"), recorded.get("test_start_unix_ns")
    ramp_s = (spawned - started) / 1e9 if spawned and started else None
    if not spawned:
        return None, ramp_s
    stop = recorded.get("stopping_unix_ns")
    if not stop:
        ends = [r[0] + r[1] for r in recorded.get("requests") or []]
        stop = max(ends) if ends else None
    if stop is None:
        return None, ramp_s
    return (int(spawned + settle_s * 1e9), int(stop)), ramp_s


def read_locust_stats(json_prefix: Path) -> dict[str, Any]:
    """Locust's own totals (from --json-file, written after its final stats; its CSV can miss the
    last seconds). They include requests that ended while Locust stopped, which ours leave out."""
    path = Path(f"{json_prefix}.json")
    if not path.exists():
        return {}
    entries = json.loads(path.read_text(encoding="utf-8"))
    requests = sum(e.get("num_requests", 0) for e in entries)
    total_ms = sum(e.get("total_response_time", 0.0) for e in entries)
    return {"requests": requests, "failures": sum(e.get("num_failures", 0) for e in entries),
            "mean_ms": round(total_ms / requests, 3) if requests else None,
            "max_ms": max((e.get("max_response_time") or 0.0 for e in entries), default=None)}
