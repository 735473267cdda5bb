"""What a run costs and how far it is from peak: the hourly price of a replica, the device's peak for
MFU, cost per request, and the traffic tiers (replicas per requests/min) sized at the p95 target.

Pure, like summary.py, which builds the run's RunResults from these.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import pandas as pd

from qbench_plugin.report import gpus
from qbench_plugin.loadtest import loadgrid

if TYPE_CHECKING:  # summary.py imports this module: its options type is a hint only
    from qbench_plugin.report.summary import ReportOptions

TIERS_PER_MIN = (100, 1_000, 10_000)

@dataclass(frozen=True)
class Pricing:
    gpu: str | None
    on_demand_per_hour: float | None
    spot_per_hour: float | None
    source: str
    note: str | None = None

    @property
    def available(self) -> bool:
        return self.on_demand_per_hour is not None or self.spot_per_hour is not None


def _device_label(device_names: list[str]) -> str:
    return ", ".join(device_names) if device_names else "this machine's CPU (no GPU)"


def resolve_pricing(options: ReportOptions, device_names: list[str], cpu_count: int | None = None) -> Pricing:
    """The hourly price of one replica: given, else the priced-as or detected GPU's list price, else, on a
    machine without a GPU, its vCPUs at the CPU list price (gpus.CPU); every assumption says so."""
    spec = gpus.by_name(options.gpu_type) if options.gpu_type else gpus.detect(device_names)
    cpu_run = spec is None and not device_names
    vcpus = cpu_count or 1
    cpu_on_demand = round(gpus.CPU.on_demand_per_vcpu_hour * vcpus, 6) if cpu_run else None
    # a given on-demand price is the user's machine, not ours: our CPU spot price would not match it
    cpu_spot = round(gpus.CPU.spot_per_vcpu_hour * vcpus, 6) if cpu_run and options.price_per_hour is None else None
    on_demand = options.price_per_hour if options.price_per_hour is not None else (
        spec.on_demand_per_hour if spec else cpu_on_demand)
    spot = options.spot_price_per_hour if options.spot_price_per_hour is not None else (
        spec.spot_per_hour if spec else cpu_spot)
    if on_demand is None and spot is None:
        return Pricing(None, None, None, f"no known GPU on {_device_label(device_names)} and no --qbench-gpu-type "
                       f"({', '.join(gpus.known_names())}) or --qbench-price-per-hour given")
    given = [o for o, v in (("--qbench-price-per-hour", options.price_per_hour),
                            ("--qbench-spot-price-per-hour", options.spot_price_per_hour)) if v is not None]
    parts = [f"{' and '.join(given)} as given"] if given else []
    if spec and (options.price_per_hour is None or options.spot_price_per_hour is None):
        parts.append(f"list-price assumption for {spec.name} ({spec.price_source}, as of {gpus.PRICES_AS_OF})")
    if cpu_run and options.price_per_hour is None:
        parts.append(f"list-price assumption for a CPU replica: {vcpus} vCPUs (this machine's logical cores) x "
                     f"${gpus.CPU.on_demand_per_vcpu_hour}/vCPU-hour on-demand, ${gpus.CPU.spot_per_vcpu_hour} spot "
                     f"({gpus.CPU.price_source}, as of {gpus.PRICES_AS_OF})")
    note = None
    measured_on = gpus.detect(device_names)
    if not cpu_run and (measured_on is None or (spec is not None and measured_on != spec)):
        priced_as = spec.name if spec else "the given price"
        note = (f"throughput was measured on {_device_label(device_names)} but is priced as {priced_as}: "
                f"the cost of that hardware if it delivered this throughput, not a measurement of it")
    name = spec.name if spec else (gpus.CPU.label(vcpus) if cpu_run and options.price_per_hour is None else "custom")
    return Pricing(name, on_demand, spot, "; ".join(parts), note)


@dataclass(frozen=True)
class Peak:
    tflops: float | None
    source: str


def resolve_peak(options: ReportOptions, device_names: list[str]) -> Peak:
    """The peak MFU divides by: given, or the detected GPU's; never the priced-as GPU's (not what ran)."""
    if options.peak_tflops:
        return Peak(options.peak_tflops, "--qbench-peak-tflops")
    spec = gpus.detect(device_names)
    if spec:
        return Peak(spec.peak_tflops, f"{spec.name} dense bf16/fp16 peak (table in gpus.py)")
    if device_names:
        return Peak(None, f"unknown: {', '.join(device_names)} is not in the table; pass --qbench-peak-tflops")
    return Peak(None, "unknown on CPU: pass --qbench-peak-tflops (this CPU's dense bf16 TFLOP/s) to get MFU")


def cost_per_requests(throughput_per_s: float | None, price_per_hour: float | None, requests: int) -> float | None:
    """USD for `requests` requests (one text each) on one fully busy replica at the measured throughput."""
    if not throughput_per_s or price_per_hour is None or not math.isfinite(throughput_per_s):
        return None
    return price_per_hour / (throughput_per_s * 3600.0) * requests


def add_costs(table: pd.DataFrame, pricing: Pricing) -> pd.DataFrame:
    table = table.copy()
    thr = table["throughput_samples_per_s"]
    for column, price, n in (("cost_per_1k_usd", pricing.on_demand_per_hour, 1_000),
                             ("cost_per_1m_usd", pricing.on_demand_per_hour, 1_000_000),
                             ("spot_cost_per_1k_usd", pricing.spot_per_hour, 1_000),
                             ("spot_cost_per_1m_usd", pricing.spot_per_hour, 1_000_000)):
        table[column] = [cost_per_requests(t, price, n) for t in thr]
        table[column] = pd.to_numeric(table[column])
    return table


@dataclass(frozen=True)
class Tier:
    requests_per_min: int
    replicas: int
    utilization: float  # share of the replicas' measured capacity the tier uses
    on_demand_per_hour: float | None
    spot_per_hour: float | None


MATRIX_SOURCE = "in-process matrix"
LOAD_SOURCE = "server load grid"


@dataclass(frozen=True)
class TrafficPlan:
    p95_target_ms: float
    config: str | None
    batch_size: int | None  # texts per batch (matrix) or per HTTP request (load grid)
    capacity_per_replica_per_s: float | None  # texts/s (matrix) or HTTP requests/s (load grid)
    latency_p95_ms: float | None
    tiers: tuple[Tier, ...]
    reason: str | None  # why there is no plan
    source: str = MATRIX_SOURCE  # where the capacity comes from
    point: str | None = None  # load grid: the capacity's point (loadgrid.LoadPoint.id)
    note: str | None = None  # load grid: e.g. the serving config's accuracy was not measured in this run

    @property
    def from_load(self) -> bool:
        return self.source == LOAD_SOURCE


def replicas_needed(requests_per_min: float, capacity_per_s: float) -> int:
    """Replicas at the measured throughput, no headroom: a request is one text."""
    if capacity_per_s <= 0:
        raise ValueError("capacity must be positive")
    return max(1, math.ceil(requests_per_min / 60.0 / capacity_per_s - 1e-9))


def traffic_plan(eligible: pd.DataFrame, p95_target_ms: float, pricing: Pricing,
                 tiers: Iterable[int] = TIERS_PER_MIN) -> TrafficPlan:
    """Serve each tier with the eligible row of highest throughput whose p95 meets the target."""
    if eligible.empty:
        return TrafficPlan(p95_target_ms, None, None, None, None, (), "no config passed its accuracy gates")
    meeting = eligible[eligible["latency_p95_ms"] <= p95_target_ms]
    if meeting.empty:
        fastest = eligible["latency_p95_ms"].min()
        return TrafficPlan(p95_target_ms, None, None, None, None, (),
                           f"no eligible (config, batch size) has p95 <= {p95_target_ms:g} ms; the lowest "
                           f"measured is {fastest:.2f} ms (raise --qbench-p95-target-ms or use faster hardware)")
    best = meeting.sort_values(["throughput_samples_per_s", "latency_p95_ms", "config"],
                               ascending=[False, True, True], kind="stable").iloc[0]
    capacity = float(best["throughput_samples_per_s"])
    return TrafficPlan(p95_target_ms, str(best["config"]), int(best["batch_size"]), capacity,
                       float(best["latency_p95_ms"]), _tiers(capacity, pricing, tiers), None)


def _tiers(capacity: float, pricing: Pricing, tiers: Iterable[int]) -> tuple[Tier, ...]:
    out = []
    for rpm in tiers:
        n = replicas_needed(rpm, capacity)
        out.append(Tier(rpm, n, rpm / 60.0 / (n * capacity),
                        n * pricing.on_demand_per_hour if pricing.on_demand_per_hour is not None else None,
                        n * pricing.spot_per_hour if pricing.spot_per_hour is not None else None))
    return tuple(out)


def load_traffic_plan(capacities: Iterable[loadgrid.Capacity], eligibility: pd.DataFrame,
                      configs: Mapping[str, Mapping[str, Any]], p95_target_ms: float, pricing: Pricing,
                      tiers: Iterable[int] = TIERS_PER_MIN) -> TrafficPlan:
    """Tiers from the server's capacity at the target (loadgrid.capacities): the config with the highest
    requests/s under the target, among configs that did not fail their accuracy gates. A request is one
    HTTP request of the capacity point's batch size. A config whose accuracy this run did not measure
    (a load-only run) may serve, with a note saying so."""
    accuracy_measured = {name for name, rec in configs.items() if rec.get("status") == "ready"
                         and (rec.get("metrics") or {}).get("accuracy") is not None}
    blocked = {row["config"]: row["why_not"] for _, row in eligibility.iterrows()
               if not row["eligible"] and row["config"] in accuracy_measured}
    capacities = list(capacities)
    found = [c for c in capacities if c.found and c.config not in blocked]
    if not found:
        why = "; ".join(c.text() for c in capacities if c.config not in blocked)
        if blocked:
            why = "; ".join(filter(None, [why, "not eligible: " + ", ".join(
                f"{name} ({reason})" for name, reason in blocked.items())]))
        return TrafficPlan(p95_target_ms, None, None, None, None, (), f"no load-grid capacity: {why}",
                           source=LOAD_SOURCE)
    best = max(found, key=lambda c: (c.rps, -c.latency_p95_ms))
    note = None
    if best.config not in accuracy_measured:
        note = f"{best.config}'s accuracy was not measured in this run, so its accuracy gates were not checked"
    return TrafficPlan(p95_target_ms, best.config, best.batch_size, best.rps, best.latency_p95_ms,
                       _tiers(best.rps, pricing, tiers), None, source=LOAD_SOURCE, point=best.point, note=note)
