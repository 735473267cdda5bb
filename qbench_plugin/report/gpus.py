"""Known GPUs: hourly list prices (for cost per request) and dense bf16/fp16 peaks (for MFU).

These are assumptions, not measurements: prices are rounded public on-demand and typical spot prices
for one GPU (an instance's price divided by its GPU count) as listed by major clouds around
PRICES_AS_OF; they vary by provider, region and date. Pass --qbench-price-per-hour /
--qbench-spot-price-per-hour for your own. Peaks are the vendors' dense (no sparsity) tensor-core
bf16/fp16 figures; --qbench-peak-tflops overrides them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

PRICES_AS_OF = "2025-06"


@dataclass(frozen=True)
class GpuSpec:
    name: str
    on_demand_per_hour: float  # USD per GPU-hour, list price (assumption)
    spot_per_hour: float | None  # USD per GPU-hour, typical spot/preemptible price (assumption); None: none listed
    peak_tflops: float  # dense bf16 (fp16 where the GPU has no bf16) tensor-core TFLOP/s
    price_source: str
    pattern: str  # matched against nvidia-smi / torch device names, case-insensitive
    aliases: tuple[str, ...] = ()  # other spellings accepted by --qbench-gpu-type


GPUS: tuple[GpuSpec, ...] = (
    GpuSpec("A100 40GB", 4.10, 1.50, 312.0, "AWS p4d.24xlarge / 8", r"a100(?!.*80)", ("A100", "A100-40GB", "A100 40")),
    GpuSpec("A100 80GB", 5.12, 2.00, 312.0, "AWS p4de.24xlarge / 8", r"a100.*80", ("A100-80GB", "A100 80")),
    # three H100 parts share the name: the SXM board (most clouds' 8-GPU instances) and the PCIe and NVL
    # cards, which run at lower clocks and power; their device names say "PCIe" or "NVL"
    GpuSpec("H100", 6.88, 2.50, 989.0, "AWS p5.48xlarge / 8 (SXM)", r"h100(?!.*(pcie|nvl))", ("H100 SXM", "H100-80GB")),
    GpuSpec("H100 PCIe", 2.49, None, 756.0, "Lambda 1x H100 PCIe on-demand (no public spot price)", r"h100.*pcie",
            ("H100-PCIe",)),
    GpuSpec("H100 NVL", 6.98, 1.61, 835.0, "Azure NC40ads H100 v5 (1x H100 NVL); spot: a 2026 Southeast Asia quote",
            r"h100.*nvl", ("H100-NVL",)),
    GpuSpec("H200", 10.60, 3.80, 989.0, "AWS p5en.48xlarge / 8", r"h200(?!.*nvl)"),  # H200 NVL: not priced
    GpuSpec("L4", 0.80, 0.32, 121.0, "AWS g6.xlarge", r"\bl4\b"),
    GpuSpec("A10G", 1.01, 0.40, 70.0, "AWS g5.xlarge (peak: AWS's figure; not in NVIDIA's datasheets)", r"a10g"),
    GpuSpec("T4", 0.53, 0.21, 65.0, "AWS g4dn.xlarge (fp16; no bf16)", r"\bt4\b"),
)


@dataclass(frozen=True)
class CpuSpec:
    """A CPU replica's price per vCPU-hour: a run on a CPU is priced as the vCPUs it ran on."""

    on_demand_per_vcpu_hour: float  # USD (assumption)
    spot_per_vcpu_hour: float  # USD (assumption)
    price_source: str

    def label(self, vcpus: int) -> str:
        return f"CPU, {vcpus} vCPU{'s' if vcpus != 1 else ''}"


# AWS c7i.large (2 vCPUs, Intel Sapphire Rapids, us-east-1): $0.0893/h on-demand, ~$0.035/h spot, halved;
# a compute-optimised instance is what one would rent to serve a small classifier on CPUs.
CPU = CpuSpec(0.0446, 0.0175, "AWS c7i.large / 2 vCPUs (us-east-1)")


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def by_name(name: str) -> GpuSpec | None:
    """The table entry for a user-given type ('H100', 'a100-80gb', 'A100 80GB'...); None if unknown.

    'A100' alone means the 40GB card, the one most clouds list first."""
    key = _key(name)
    for gpu in GPUS:
        if key in {_key(gpu.name), *(_key(alias) for alias in gpu.aliases)}:
            return gpu
    return None


def detect(device_names: list[str]) -> GpuSpec | None:
    """The table entry for the first device name that matches one (e.g. 'NVIDIA A100-SXM4-80GB')."""
    for device in device_names:
        for gpu in GPUS:
            if re.search(gpu.pattern, device, flags=re.IGNORECASE):
                return gpu
    return None


def known_names() -> list[str]:
    return [gpu.name for gpu in GPUS]
