"""vLLM's engine core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) on a CPU: building such an
engine, the thread count its calls compute in, and shutting one down while others live on (engine.py's
VllmEngine uses these; vLLM's default, its own processes, goes through build_llm too)."""
from __future__ import annotations

import gc
import logging
import os
import threading
from contextlib import contextmanager
from typing import Any, Iterator

log = logging.getLogger("qbench")

MULTIPROCESSING = "VLLM_ENABLE_V1_MULTIPROCESSING"
_inprocess_lock = threading.RLock()  # held while an in-process engine is built or shut down
_inprocess_alive = 0


def build_llm(kwargs: dict, in_process: bool):
    """vLLM's LLM, its engine core in this process or (vLLM's default) in its own processes.

    vLLM reads VLLM_ENABLE_V1_MULTIPROCESSING while it builds the engine (vllm.envs, and the CPU
    platform straight from os.environ), and an in-process engine core then caches every vllm.envs value
    for the process (enable_envs_cache). So the variable is set only while an in-process engine is
    built, under a lock, with the cache dropped before and after: the next engine, or a `vllm serve`
    started later, sees this process's own environment. The CPU worker also replaces
    torch.set_num_threads with a no-op for the whole process; it is put back."""
    from vllm import LLM

    if not in_process:
        return LLM(**kwargs)
    global _inprocess_alive
    import torch
    import vllm.envs as vllm_envs

    with _inprocess_lock:
        before, set_num_threads = os.environ.get(MULTIPROCESSING), torch.set_num_threads
        os.environ[MULTIPROCESSING] = "0"
        vllm_envs.disable_envs_cache()
        try:
            llm = LLM(**kwargs)
        finally:
            if before is None:
                os.environ.pop(MULTIPROCESSING, None)
            else:
                os.environ[MULTIPROCESSING] = before
            vllm_envs.disable_envs_cache()
            torch.set_num_threads = set_num_threads
        _inprocess_alive += 1
        return llm


def worker_threads(llm) -> int | None:
    """The OpenMP threads vLLM gives its CPU worker process when it has one: the CPUs of its binding
    (VLLM_CPU_OMP_THREADS_BIND; auto: one per physical core, less one core reserved for the engine
    core). An in-process engine computes in this process's threads instead, torch's default of one per
    CPU: on 2 cores that is 2 threads where the worker process has 1, and it timed bs 32 at 57 ms
    where the worker process took 99 ms. So its calls run with the worker's count (1 thread: 93 ms).
    None (torch's count) where vLLM would not bind."""
    try:
        from vllm.utils.ompmultiprocessing import OMPProcessManager

        lists = OMPProcessManager(llm.llm_engine.vllm_config).cpu_lists
    except Exception as exc:  # noqa: BLE001  (another vLLM layout: keep torch's count, and say so)
        log.warning("qbench: could not read vLLM's CPU worker binding (%s: %s); the in-process engine uses "
                    "torch's thread count", type(exc).__name__, exc)
        return None
    return len(lists[0]) if lists and lists[0] else None


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """torch's intra-op threads set to `count` for the block (process-wide; the engines answer one at a
    time, and the transformers engines in this process keep torch's own count)."""
    if not count:
        yield
        return
    import torch

    before = torch.get_num_threads()
    if before == count:
        yield
        return
    torch._C.set_num_threads(count)  # not torch.set_num_threads, which vLLM's CPU worker may replace
    try:
        yield
    finally:
        torch._C.set_num_threads(before)


def shutdown(llm) -> None:
    """Shut an in-process engine down. vLLM's shutdown ends with cleanup_dist_env_and_memory(), which
    tears down the process-wide distributed groups that every other in-process engine still uses (its
    next classify then fails: "pipeline model parallel group is not initialized"), so while another is
    alive only the rest of that cleanup runs; the last one tears everything down."""
    global _inprocess_alive
    import vllm.envs as vllm_envs
    import vllm.v1.engine.core as vllm_core

    with _inprocess_lock:
        _inprocess_alive = max(0, _inprocess_alive - 1)
        if _inprocess_alive == 0:
            llm.llm_engine.engine_core.shutdown()
            return
        full = vllm_core.cleanup_dist_env_and_memory

        def keep_groups(*_args: Any, **_kwargs: Any) -> None:
            vllm_envs.disable_envs_cache()
            gc.unfreeze()
            gc.collect()

        vllm_core.cleanup_dist_env_and_memory = keep_groups
        try:
            llm.llm_engine.engine_core.shutdown()
        finally:
            vllm_core.cleanup_dist_env_and_memory = full
