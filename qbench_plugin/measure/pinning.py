"""Which cores the timed work runs on during the rounds of a GPU run (`--qbench-pin-cores`).

Why. At this model size every engine on a GPU is host-bound: a batch of 32 takes ~30 ms of which the
GPU is busy for a few. On a shared 16-vCPU H200 host the per-round host probe's interpreter part was
bimodal (about 27 ms or 50-56 ms, in runs of rounds), and in its slow state the transformers engine
(whose launches come from the pytest main thread) slowed 1.23-1.30x but the vLLM engines 1.04-1.19x,
so the ratio between them moved 8-10% from one session to the next. Where the OS puts the timing
thread and the engine processes is one source of such states that qbench can remove: a thread that
shares a physical core (SMT sibling) with a busy one runs up to 2x slower, and the OS chooses anew in
each session.

Measured (2026-12-03, one H200 lease, results/examples/h200/aa/pinned-2026-12-03/): it did not help.
With pinning, the probe's slow rounds stayed (its interpreter part on a CPU 100% of its wall time and
no steal, so the vCPU itself was slow: contention on the host, below what the guest sees), and the
bs-32 ratios to fp16 moved 7-9% between the two sessions, against 2-8% unpinned. So it is off by
default and kept as an experiment (`--qbench-pin-cores on`).

What. For the rounds only, the pytest main thread (the caller of every engine, and the transformers
engine itself) gets one logical CPU of a physical core that nothing else of qbench's may use; each
vLLM engine's processes get a physical core of their own, round-robin over the remaining ones when
there are fewer cores than engines (only one engine works at a time); the pytest process's other
threads get every core but the main thread's. After the rounds every thread gets its mask back, so
engines, sweeps and servers started later, and later tests on these engines, are not crammed onto
one core. Nothing is pinned on a CPU run (in-process engines bind their own OpenMP
threads) or with fewer than two physical cores; the run records what was done or why not.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Sequence

SYS_CPU = Path("/sys/devices/system/cpu")


def _parse_list(text: str) -> list[int]:
    """A kernel CPU list ("0,8" or "0-3,8-11") as ints."""
    out: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        out.extend(range(int(low), int(high or low) + 1))
    return out


def physical_cores(cpus: Sequence[int], sys_cpu: Path = SYS_CPU) -> list[list[int]]:
    """The allowed logical CPUs grouped by physical core (SMT siblings together), by lowest CPU.
    Without topology files (some containers) each CPU counts as its own core."""
    allowed, seen, cores = set(cpus), set(), []
    for cpu in sorted(allowed):
        if cpu in seen:
            continue
        try:
            siblings = _parse_list((sys_cpu / f"cpu{cpu}" / "topology" / "thread_siblings_list").read_text())
        except (OSError, ValueError):
            siblings = [cpu]
        core = sorted(c for c in set(siblings) | {cpu} if c in allowed)
        seen.update(core)
        cores.append(core)
    return cores


def plan(cores: Sequence[Sequence[int]], engines: Sequence[str]) -> dict[str, list[int]] | str:
    """Logical CPUs for "main" (the timing thread), "others" (the pytest process's other threads) and
    each engine; or why nothing is pinned."""
    if len(cores) < 2:
        return f"not pinned: {len(cores)} physical core(s) allowed; the timing thread needs one to itself and the rest another"
    # the last core for the timing thread: the first usually takes the device interrupts
    rest = [list(c) for c in cores[:-1]]
    out = {"main": [cores[-1][0]], "others": sorted(c for core in rest for c in core)}
    for i, name in enumerate(engines):
        out[name] = rest[i % len(rest)]
    return out


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def _set(tid: int, cpus: Sequence[int]) -> bool:
    try:
        os.sched_setaffinity(tid, cpus)
        return True
    except OSError:  # the thread ended, or a CPU went away
        return False


def _mask(tid: int) -> set[int] | None:
    try:
        return os.sched_getaffinity(tid)
    except OSError:  # the thread ended
        return None


def pin_tree(pids: Sequence[int], cpus: Sequence[int], saved: dict[int, set[int]]) -> int:
    """Every thread of these processes and of their children onto `cpus`, each one's mask first kept
    in `saved`; returns how many threads were moved."""
    import psutil

    procs = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs += [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
    moved = 0
    for tid in (t for proc in procs for t in _threads(proc.pid)):
        mask = _mask(tid)
        if mask is not None and _set(tid, cpus):
            saved.setdefault(tid, mask)
            moved += 1
    return moved


@contextmanager
def pinned(engines: Mapping[str, Sequence[int]], record: dict, *, off: str | None = None) -> Iterator[None]:
    """The rounds' placement: inside the block the main thread is on its own core and each engine's
    processes (`engines`: name -> root pids; empty for engines inside the pytest process) on theirs;
    `record` gets the plan, or `off` (why the caller pins nothing) or the reason it could not. The
    pytest process's threads get their masks back on exit."""
    if off:
        record.update(pinned=False, reason=off)
        yield
        return
    own = {name: list(pids) for name, pids in engines.items() if pids}
    layout = plan(physical_cores(sorted(os.sched_getaffinity(0))), sorted(own))
    if isinstance(layout, str):
        record.update(pinned=False, reason=layout)
        yield
        return
    me, main = os.getpid(), threading.get_native_id()
    saved = {tid: mask for tid in _threads(me) if (mask := _mask(tid)) is not None}
    for tid in saved:
        _set(tid, layout["main"] if tid == main else layout["others"])
    engine_masks: dict[int, set[int]] = {}  # the engines get theirs back too: later tests use them
    threads = {name: pin_tree(pids, layout[name], engine_masks) for name, pids in own.items()}
    record.update(pinned=True, main_thread=layout["main"], other_threads=layout["others"],
                  engines={name: {"cpus": layout[name], "threads": threads[name]} for name in own})
    try:
        yield
    finally:
        for tid, mask in saved.items():
            _set(tid, mask)
        back = saved.get(main) or os.sched_getaffinity(0)
        for tid in _threads(me):  # threads born inside the block inherited a pinned mask
            if tid not in saved:
                _set(tid, back)
        for tid, mask in engine_masks.items():
            _set(tid, mask)
