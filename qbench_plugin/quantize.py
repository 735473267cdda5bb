"""How each quantization method reaches an engine: which model to load and with what arguments.

A method that cannot run on the chosen engine, version or hardware raises EngineUnavailable with
the exact reason; it is never run as another method.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .engine import EngineSpec, EngineUnavailable


@dataclass(frozen=True)
class Prepared:
    model: str  # what the engine loads: the run's model or a quantized checkpoint
    engine_kwargs: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # recorded in the results


def prepare(spec: EngineSpec) -> Prepared:
    method = spec.config.method
    if method == "none":
        return Prepared(model=spec.model)
    raise EngineUnavailable(f"quantization method {method!r} is not supported by qbench on engine {spec.engine} yet")
