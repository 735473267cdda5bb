"""One engine's memory, read between timed blocks: a vLLM engine's own processes (PSS, which splits
shared pages between the processes that map them, and device memory per process from NVML), or an
in-process engine's growth of this process (RSS, torch's reserved device memory)."""
from __future__ import annotations

from dataclasses import dataclass, field

from qbench_plugin.engines.engine import Engine, cuda_available


def _processes_pss(pids: list[int]) -> int | None:
    """PSS of these processes and their children (USS + a fair share of shared pages), or RSS where
    the kernel does not expose PSS."""
    import psutil

    total, seen = 0, False
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for proc in procs:
            try:
                info = proc.memory_full_info()
                total += getattr(info, "pss", info.rss)
                seen = True
            except psutil.Error:
                continue
    return total if seen else None


def main_rss() -> int:
    """This process's RSS: an in-process engine's memory is this process's growth while it loaded."""
    import psutil

    return psutil.Process().memory_info().rss


def _gpu_bytes_by_pid() -> dict[int, int]:
    """Device memory per process (NVML), empty where NVML is not available."""
    try:
        import pynvml

        pynvml.nvmlInit()
        out: dict[int, int] = {}
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                out[proc.pid] = out.get(proc.pid, 0) + int(proc.usedGpuMemory or 0)
        return out
    except Exception:  # noqa: BLE001  (no NVML, no driver: per-process GPU memory is unknown)
        return {}


def engine_pids(engine: Engine) -> list[int]:
    """The processes a vLLM engine runs in (its engine core; workers are their children)."""
    try:
        procs = engine.llm.llm_engine.engine_core.resources.engine_manager.processes
        return [p.pid for p in procs if p.pid]
    except AttributeError:
        return []


@dataclass
class MemoryWatch:
    """One engine's memory: ready reading and the peak of the readings taken between timed blocks."""

    pids: list[int] = field(default_factory=list)  # its own processes; empty: it lives in this process
    main_baseline: int = 0  # this process's RSS before an in-process engine loaded
    others_inprocess: int = 0  # growth of this process due to in-process engines loaded after it
    gpu_baseline: int = 0  # this process's reserved device memory before an in-process engine loaded
    ready: int | None = None
    peak: int | None = None
    gpu_ready: int | None = None
    gpu_peak: int | None = None

    def read(self) -> tuple[int | None, int | None]:
        if self.pids:
            host = _processes_pss(self.pids)
            by_pid = _gpu_bytes_by_pid()
            gpu = sum(by_pid.get(pid, 0) for pid in self._tree()) if by_pid else None
        else:
            host = max(0, main_rss() - self.main_baseline - self.others_inprocess)
            reserved = torch_reserved()
            gpu = None if reserved is None else max(0, reserved - self.gpu_baseline)
        return host, gpu

    def _tree(self) -> list[int]:
        import psutil

        out = list(self.pids)
        for pid in self.pids:
            try:
                out += [c.pid for c in psutil.Process(pid).children(recursive=True)]
            except psutil.Error:
                pass
        return out

    def sample(self, first: bool = False) -> None:
        host, gpu = self.read()
        if first:
            self.ready, self.gpu_ready = host, gpu
        if host is not None:
            self.peak = max(self.peak or 0, host)
        if gpu is not None:
            self.gpu_peak = max(self.gpu_peak or 0, gpu)


def torch_reserved() -> int | None:
    """Device memory torch has reserved in this process, None without CUDA."""
    if not cuda_available():
        return None
    import torch

    return int(torch.cuda.memory_reserved())
