"""Every config's engine alive at once, so the latency matrix can interleave them (rounds.py).

The pool starts the selected configs' engines together at first use. On a CPU vLLM engines run
in-process (`--qbench-vllm-inprocess on`, the default: engine.VllmEngine): they and the transformers
engines start one by one, so that the main process's growth while one loads is that engine's. vLLM
engines with processes of their own (on a GPU, or with the option off) start first, concurrently, so
their starts overlap. On a GPU each vLLM engine gets an equal share of device memory (and a fixed
KV-cache size, since vLLM's memory profiling counts whatever a concurrently starting neighbour
allocates as its own). An engine that cannot start
beside the others for lack of memory is not dropped: it waits for a later group, which the matrix
starts after closing the earlier one (`groups`), and the report says so.

Memory is read per engine: the engine's own processes (vLLM's engine core and its workers; PSS,
which splits shared pages between the processes that map them) or, for an in-process engine (vLLM
on a CPU, transformers), the main process's growth while it loaded (RSS). The reading that the
matrix reports is taken synchronously when the engine is ready, against a baseline taken before it
started.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator

from qbench_plugin.quantize import quantize
from qbench_plugin.config import BenchConfig
from qbench_plugin.engines.engine import Engine, EngineSpec, EngineUnavailable, cuda_available, start_engine
from qbench_plugin.measure.measure import mib
from qbench_plugin.engines.memory import MemoryWatch, engine_pids, main_rss, torch_reserved
from qbench_plugin.record.run import ConfigRecord, RunStore

log = logging.getLogger("qbench")
GPU_SHARE_TOTAL = 0.85  # of device memory, split between co-resident vLLM engines (HF models take the rest)
KV_CACHE_CAP_BYTES = 4 * 2**30
NEIGHBOUR_WAIT_S = 180.0  # how long the rounds wait for a neighbour to finish starting before parking it
MEMORY_WORDS = ("out of memory", "memory", "cache blocks", "kv cache")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # engines started in threads share this process


def is_memory_error(exc: BaseException) -> bool:
    """Start-up failures that another group (fewer engines at once) might not have."""
    text = f"{type(exc).__name__} {exc}".lower()
    return isinstance(exc, MemoryError) or any(word in text for word in MEMORY_WORDS)


@dataclass
class Member:
    config: BenchConfig
    record: ConfigRecord
    engine: Engine | None = None
    memory: MemoryWatch = field(default_factory=MemoryWatch)
    group: int = 0
    closed_reason: str | None = None
    started: tuple[EngineSpec, dict] | None = None  # spec and engine arguments: extra starts (starts.py) reuse them


@dataclass
class Neighbour:
    """A process tree qbench started beside the engines (a load test's server launched early)."""

    pids: list[int]  # roots; their children count too
    started: Callable[[float], bool]  # waits up to that many seconds; True once it has finished starting
    parked: bool = False


def _procs(pids: list[int]) -> list:
    import psutil

    out = []
    for pid in MemoryWatch(pids=pids)._tree():
        try:
            out.append(psutil.Process(pid))
        except psutil.Error:
            pass
    return out


def _signal(procs: list, resume: bool) -> None:
    import psutil

    for proc in procs:
        try:
            proc.resume() if resume else proc.suspend()
        except psutil.Error:
            pass


class EnginePool:
    """The selected configs' engines, started together at first use and closed on request."""

    def __init__(self, configs: list[BenchConfig], *, model: str, labels: list[str], max_model_len: int,
                 default_engine: str, store: RunStore, quant: quantize.QuantContext,
                 progress: Callable[[str], None] = lambda line: None, co_resident: bool = True,
                 vllm_in_process: bool = True, gpu_sharers: int = 1, starts: int = 1):
        self.configs = configs
        self.model, self.labels, self.max_model_len = model, labels, max_model_len
        self.default_engine, self.store, self.quant = default_engine, store, quant
        self.progress, self.co_resident = progress, co_resident
        self.gpu_sharers = max(1, gpu_sharers)  # other pytest-xdist workers' engines on this GPU
        self.starts = max(1, starts)  # engines of each config in the rounds (measure/starts.py): GPU shares for all
        self.device = "cuda" if cuda_available() else "cpu"
        # vLLM engine cores in this process: on a CPU only (a GPU engine keeps vLLM's own processes)
        self.vllm_in_process = vllm_in_process and self.device == "cpu"
        self.members: dict[str, Member] = {}
        self.groups: list[list[str]] = []  # configs started together, in the order they were measured
        self.group_reasons: dict[str, str] = {}  # config -> why it was not resident with the first group
        # other process trees qbench keeps beside the engines (a load test's server started early)
        self.neighbours: dict[str, Neighbour] = {}
        self._lock = threading.Lock()
        self._started = False

    # -- starting ----------------------------------------------------------------------------------

    def _member(self, cfg: BenchConfig) -> Member:
        engine_name = cfg.engine or self.default_engine
        record = self.store.configs.setdefault(cfg.name, ConfigRecord(cfg.name, cfg.method, engine_name, cfg.baseline))
        return self.members.setdefault(cfg.name, Member(cfg, record))

    def _spec(self, cfg: BenchConfig) -> EngineSpec:
        return EngineSpec(config=cfg, model=self.model, engine=cfg.engine or self.default_engine,
                          max_model_len=self.max_model_len, device=self.device,
                          vllm_in_process=self.vllm_in_process)

    def _residency_kwargs(self, cfg: BenchConfig, vllm_count: int) -> dict:
        """A GPU share per co-resident vLLM engine (this worker's and the other workers' on the GPU);
        nothing on CPU (each sizes its KV cache in GiB)."""
        if self.device != "cuda" or vllm_count * self.gpu_sharers < 2:
            return {}
        share = min(cfg.gpu_memory_utilization, round(GPU_SHARE_TOTAL / (vllm_count * self.gpu_sharers), 3))
        import torch

        total = torch.cuda.get_device_properties(0).total_memory
        return {"gpu_memory_utilization": share, "kv_cache_memory_bytes": int(min(KV_CACHE_CAP_BYTES, share * total / 2))}

    def _recipe(self, cfg: BenchConfig, vllm_count: int) -> tuple[EngineSpec, quantize.Prepared, dict]:
        """The config's engine spec (its model prepared: a quantized checkpoint may take minutes) and
        arguments, with a GPU share for `vllm_count` co-resident vLLM engines; or EngineUnavailable."""
        spec = self._spec(cfg)
        if cfg.device == "cuda" and self.device != "cuda":
            raise EngineUnavailable(f"config {cfg.name} needs a CUDA GPU; torch.cuda.is_available() is False here")
        if cfg.device == "cpu" and self.device == "cuda":
            if spec.engine != "hf":
                raise EngineUnavailable(f"config {cfg.name} asks for device cpu; the vLLM here is a CUDA build")
            spec = dataclasses.replace(spec, device="cpu")  # transformers runs where it is told
        prepared = quantize.prepare(spec, self.quant)
        extra = {**prepared.engine_kwargs}
        if spec.engine == "vllm":
            extra.update(self._residency_kwargs(cfg, vllm_count * self.starts))
        return dataclasses.replace(spec, model=prepared.model), prepared, extra

    def _start(self, member: Member, vllm_count: int, others_inprocess: int = 0) -> None:
        """Prepare and start one engine; its record says what happened (never raises)."""
        cfg, record = member.config, member.record
        try:
            spec, prepared, extra = self._recipe(cfg, vllm_count)
            in_process = self.in_process(spec)
            if in_process:
                member.memory.main_baseline, member.memory.gpu_baseline = main_rss(), torch_reserved() or 0
            self.progress(f"qbench: starting {cfg.name} ({spec.engine}, {cfg.method})")
            began = time.perf_counter_ns()
            engine = start_engine(spec, self.labels, extra)
            engine.classify(["warm-up"])  # cold start = construction + the first answer
            seconds = (time.perf_counter_ns() - began) / 1e9
        except EngineUnavailable as exc:
            record.status, record.reason = "skipped", str(exc)
            record.metrics.update(exc.metrics)
            return
        except Exception as exc:  # noqa: BLE001  (a config that fails to start fails alone)
            record.status, record.reason = "failed", f"{type(exc).__name__}: {exc}"
            log.warning("qbench: %s failed to start: %s", cfg.name, record.reason)
            return
        member.engine, member.started = engine, (spec, extra)
        member.memory.pids = [] if in_process else engine_pids(engine)
        member.memory.sample(first=True)
        record.status, record.reason = "ready", None
        record.info.update(prepared.info, model=prepared.model, device=spec.device,
                           engine_kwargs=dict(getattr(engine, "engine_kwargs", {})),
                           cold_start="construction and first answer",
                           memory_scope=("the engine's own processes (PSS)" if member.memory.pids
                                         else "growth of the main process while the engine loaded (RSS)"))
        if spec.engine == "vllm":
            record.info["engine_core"] = getattr(engine, "engine_core", "own processes")
            if getattr(engine, "threads", None):  # in-process: the worker process's OpenMP thread count
                record.info["engine_threads"] = engine.threads
        record.metrics.update(
            cold_start_s=round(seconds, 3),
            memory_rss_mib=mib(member.memory.ready), gpu_memory_used_mib=mib(member.memory.gpu_ready),
            model_weights_mib=mib(quantize.weights_bytes(prepared.model)),
            weights_memory_mib=mib(engine.weights_memory_bytes()),
            quantization_time_s=prepared.info.get("quantization_time_s"),
            compression_ratio=_compression_ratio(self.model, prepared),
        )
        self.progress(f"qbench: {cfg.name} ready in {seconds:.1f} s")

    def in_process(self, spec: EngineSpec) -> bool:
        """Whether this engine lives in the pytest process (its memory is then this process's growth)."""
        return spec.engine != "vllm" or (spec.vllm_in_process and spec.device == "cpu")

    def start(self, names: list[str] | None = None) -> list[str]:
        """Start these configs' engines (default: all not yet started) as one group; return the
        names that are resident afterwards. Engines that failed for memory wait for a later group."""
        with self._lock:
            pending = [self._member(c) for c in self.configs
                       if (names is None or c.name in names) and self._member(c).record.status in ("pending",)]
            if not self.co_resident and pending:  # --qbench-interleave off: one engine at a time
                pending = pending[:1]
                self.close_all(f"one engine at a time (--qbench-interleave off), to start {pending[0].config.name}")
            if not pending:
                return self.resident()
            vllm = [m for m in pending if (m.config.engine or self.default_engine) == "vllm"]
            own = [m for m in vllm if not self.in_process(self._spec(m.config))]
            # in-process vLLM engines first, then transformers, in config order
            others = [m for m in vllm if m not in own] + [m for m in pending if m not in vllm]
            began = time.perf_counter()
            if own:  # each in its own processes: their starts overlap
                with ThreadPoolExecutor(max_workers=len(own), thread_name_prefix="qbench-start") as pool:
                    list(pool.map(lambda m: self._start(m, len(vllm)), own))
            for member in others:  # in-process: one at a time, so the main process's growth is its own
                self._start(member, len(vllm))
            for i, member in enumerate(others):  # later in-process loads are not this engine's growth
                member.memory.others_inprocess = sum(m.memory.ready or 0 for m in others[i + 1:])
            group = [m.config.name for m in pending if m.engine is not None]
            for member in pending if group else ():  # alone, a memory failure is final
                if member.record.status == "failed" and is_memory_error(Exception(member.record.reason)):
                    member.record.status = "pending"  # retried in a later group, without this one's engines
                    self.group_reasons[member.config.name] = f"could not start beside {', '.join(group)}: {member.record.reason}"
            if group:
                self.groups.append(group)
                for member in pending:
                    if member.engine is not None:
                        member.group = len(self.groups) - 1
                        member.record.info["started_with"] = [n for n in group if n != member.config.name]
                self.progress(f"qbench: {len(group)} engine(s) resident after {time.perf_counter() - began:.1f} s: "
                              f"{', '.join(group)}")
            self._started = True
            self.store.save()
            return self.resident()

    @property
    def device_name(self) -> str:
        """The GPU's name, or "cpu": what a run's speed belongs to."""
        if self.device != "cuda":
            return "cpu"
        import torch

        return torch.cuda.get_device_name(0)

    def waiting(self) -> list[str]:
        """Configs that could not start with an earlier group and wait for their own."""
        return [n for n, m in self.members.items() if m.record.status == "pending" and n in self.group_reasons]

    def resident(self) -> list[str]:
        return [n for n, m in self.members.items() if m.engine is not None]

    def get(self, cfg: BenchConfig) -> Engine:
        """The config's engine, starting the pool (or, after it was closed, the engine alone) when needed.
        Raises EngineUnavailable (skip) or RuntimeError (failed) with the record's reason."""
        member = self._member(cfg)
        if not self._started:
            self.start(None if self.co_resident else [cfg.name])
        if member.engine is None and member.record.status == "pending":
            if cfg.name in self.group_reasons:  # it could not start beside the resident engines
                self.close_all(f"closed to make room for {cfg.name}, which could not start beside it")
            self.start([cfg.name])
        if member.engine is None and member.record.status == "ready" and member.closed_reason:
            if not self.co_resident:
                self.close_all(f"one engine at a time (--qbench-interleave off), to restart {cfg.name}")
            self.reopen([cfg.name])
        if member.record.status == "skipped":
            raise EngineUnavailable(member.record.reason or "skipped")
        if member.engine is None:
            raise RuntimeError(f"config {cfg.name}: engine failed to start: {member.record.reason}")
        return member.engine

    def reopen(self, names: list[str]) -> list[str]:
        """Start these closed engines again, together, as they first started (shares included); the
        first start's cold start and memory stay the configs' figures. Returns those resident."""
        members = [self.members[n] for n in names if self.members[n].engine is None and self.members[n].closed_reason]
        kept = {m.config.name: {k: m.record.metrics.get(k) for k in ("cold_start_s", "memory_rss_mib",
                                                                      "gpu_memory_used_mib")} for m in members}
        for member in members:
            member.record.status = "pending"
        before = len(self.groups)
        self.start([m.config.name for m in members])
        del self.groups[before:]  # the same group again, not a new one
        for member in members:
            member.record.metrics.update(kept[member.config.name])
            member.record.info["restarted"] = f"after: {member.closed_reason}"
            member.closed_reason = None
        return [n for n in names if self.members[n].engine is not None]

    # -- memory ------------------------------------------------------------------------------------

    def sample_memory(self, names: list[str] | None = None) -> None:
        """Read the resident engines' memory now (between timed blocks, never during one)."""
        for name in names or self.resident():
            member = self.members[name]
            if member.engine is not None:
                member.memory.sample()

    def _record_peaks(self, member: Member, reason: str) -> None:
        member.record.metrics.update(memory_rss_peak_mib=mib(member.memory.peak),
                                     gpu_memory_peak_mib=mib(member.memory.gpu_peak))
        if reason:
            member.record.info["memory_peaks"] = reason

    @contextmanager
    def exclusive(self, name: str, reason: str) -> Iterator[Engine]:
        """The config's engine alone on the machine (a sweep needs the memory and the cores); its
        memory peaks are recorded first, since what follows is not the matrix's workload. The engine
        is assumed closed afterwards (the sweep closes it to start variants)."""
        engine = self.get(self.members[name].config)
        self.close_all(f"closed for {name}'s {reason}", keep=name)
        member = self.members[name]
        member.memory.sample()
        self._record_peaks(member, f"before the {reason}")
        self.store.save()
        try:
            yield engine
        finally:
            member.engine = None
            member.closed_reason = f"closed by its {reason}"
            engine.close()

    @contextmanager
    def stopped(self, names: list[str]) -> Iterator[list[int]]:
        """These engines' (or neighbours') processes stopped (SIGSTOP) inside the block and resumed after it: what an
        idle engine costs its neighbours (threads that poll or spin) without closing and restarting it."""
        procs = []
        for name in names:
            if name in self.neighbours:
                procs += _procs(self.neighbours[name].pids)
            else:
                member = self.members[name]
                procs += _procs(member.memory.pids) if member.engine is not None and member.memory.pids else []
        try:
            _signal(procs, resume=False)
            yield [p.pid for p in procs]
        finally:
            _signal(procs, resume=True)

    def park_neighbours(self, wait_s: float = NEIGHBOUR_WAIT_S) -> dict[str, str]:
        """Stop (SIGSTOP) each neighbour once it has finished starting, so the timed rounds run beside
        idle engines only: on 2 cores an idle early server beside two idle engines cost an in-process
        engine 9% (stopped / resident time 0.907, interval 0.822-0.944). A neighbour still starting
        after `wait_s` is left running, since stopping a start midway could trip its own timeouts.
        Returns what was done to each, for the run's record."""
        done = {}
        for label, neighbour in self.neighbours.items():
            if neighbour.parked:
                continue
            if neighbour.started(wait_s):
                _signal(_procs(neighbour.pids), resume=False)
                neighbour.parked = True
                done[label] = "stopped (SIGSTOP) through the timed rounds"
            else:
                done[label] = f"still starting after {wait_s:.0f} s: left running beside the rounds"
        return done

    def unpark(self, label: str) -> None:
        """Resume a parked neighbour and forget it (its owner takes it from here)."""
        neighbour = self.neighbours.pop(label, None)
        if neighbour is not None and neighbour.parked:
            _signal(_procs(neighbour.pids), resume=True)

    # -- closing -----------------------------------------------------------------------------------

    def close(self, name: str, reason: str) -> None:
        member = self.members.get(name)
        if member is None or member.engine is None:
            return
        member.memory.sample()
        if "memory_peaks" not in member.record.info:  # not frozen before a sweep
            self._record_peaks(member, f"until {reason}")
        engine, member.engine = member.engine, None
        member.closed_reason = reason
        try:
            engine.close()
        finally:
            self.store.save()

    def close_all(self, reason: str, keep: str | None = None) -> None:
        for name in self.resident():
            if name != keep:
                self.close(name, reason)


def _compression_ratio(source: str, prepared: quantize.Prepared) -> float | None:
    """Source weights on disk over the engine's checkpoint on disk; None when quantized at load."""
    if prepared.model == source:
        return None if prepared.engine_kwargs else 1.0
    before, after = quantize.weights_bytes(source), quantize.weights_bytes(prepared.model)
    return round(before / after, 3) if before and after else None

