"""Typed benchmark configs, one JSON file per quantization setup (configs/*.json).

Validation happens when a file is read, before any model loads, so a typo costs
milliseconds and the message names the file and the field.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

METHODS = ("none", "bitsandbytes", "awq", "gptq", "fp8", "int8")
Method = Literal["none", "bitsandbytes", "awq", "gptq", "fp8", "int8"]
EngineName = Literal["vllm", "hf"]
ENGINES = ("vllm", "hf")


# The llm-compressor scheme qbench makes for each method and weight width. A width missing here is
# refused when the config is read: running another scheme than the one asked for would be a silent
# substitution (an 8-bit GPTQ config once ran W4A16).
SCHEMES_BY_BITS = {"gptq": {4: "W4A16", 8: "W8A16"}, "awq": {4: "W4A16_ASYM"}, "int8": {8: "W8A8"}}
DEFAULT_SCHEMES = {"gptq": "W4A16", "awq": "W4A16_ASYM", "int8": "W8A8", "bitsandbytes": "nf4"}
BITS_BY_METHOD = {"bitsandbytes": (4, 8), "fp8": (8,), "none": ()}


def scheme_weight_bits(scheme: str) -> int | None:
    """Weight bits a compressed-tensors scheme name states (W4A16 -> 4, W8A8 -> 8), None if it states none."""
    found = re.match(r"W(\d+)", scheme.upper())
    return int(found.group(1)) if found else None


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Quantization(_Strict):
    method: Method = "none"
    bits: int | None = Field(default=None, description="weight bits (4 or 8) where the method has a choice")
    scheme: str | None = Field(default=None, description="method-specific scheme, e.g. W4A16, W8A8")
    checkpoint: str | None = Field(
        default=None, description="pre-quantized model (hub id or local path) instead of the run's model"
    )
    calibration_samples: int = Field(default=256, gt=0, description="calibration texts for gptq, awq, int8")

    @field_validator("bits")
    @classmethod
    def _bits_the_method_has(cls, bits: int | None, info: ValidationInfo) -> int | None:
        method = info.data.get("method")
        if bits is None or method is None:
            return bits
        allowed = tuple(SCHEMES_BY_BITS[method]) if method in SCHEMES_BY_BITS else BITS_BY_METHOD.get(method, ())
        if bits not in allowed:
            made = f"{', '.join(map(str, allowed))}-bit weights only" if allowed else "no bits setting"
            raise ValueError(f"method {method!r} has {made}, not {bits}")
        return bits

    @field_validator("scheme")
    @classmethod
    def _scheme_agrees_with_bits(cls, scheme: str | None, info: ValidationInfo) -> str | None:
        method, bits = info.data.get("method"), info.data.get("bits")
        if scheme is None or method not in SCHEMES_BY_BITS:
            return scheme
        stated = scheme_weight_bits(scheme)
        wanted = bits or (8 if method == "int8" else None)
        if wanted is not None and stated != wanted:
            raise ValueError(f"scheme {scheme!r} is not {wanted}-bit weights ({'bits' if bits else 'method int8'} "
                             f"asks for {wanted}); drop one or make them agree")
        return scheme

    @property
    def resolved_scheme(self) -> str | None:
        """The scheme that is made: the config's own, else the one for its bits, else the method's default."""
        if self.scheme:
            return self.scheme
        if self.bits is not None and self.method in SCHEMES_BY_BITS:
            return SCHEMES_BY_BITS[self.method][self.bits]
        return DEFAULT_SCHEMES.get(self.method)


class Gates(_Strict):
    min_accuracy: float | None = Field(default=None, ge=0, le=1)
    max_accuracy_drop: float | None = Field(default=None, ge=0, le=1)
    max_flip_rate: float | None = Field(default=None, ge=0, le=1)


class BenchConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    engine: EngineName | None = Field(default=None, description="pin an engine; default: --qbench-engine")
    device: Literal["any", "cpu", "cuda"] = "any"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    quantization: Quantization = Quantization()
    max_num_seqs: int | None = Field(default=None, gt=0)
    gpu_memory_utilization: float = Field(default=0.5, gt=0, le=1)
    enforce_eager: bool | None = Field(default=None, description="default: True on CPU, False on CUDA")
    enable_prefix_caching: bool = Field(
        default=False, description="vLLM reuses the KV of a text's first full blocks when the same text comes "
        "again; a benchmark repeats its texts (the accuracy pass, cycled batches), real traffic mostly does not")
    baseline: bool = Field(default=False, description="the config others are compared against")
    markers: tuple[str, ...] = ()
    gates: Gates = Gates()
    tensor_parallel_size: int = Field(
        default=1, ge=1, description="GPUs one vLLM engine spans (vLLM's tensor_parallel_size), for a model that "
        "does not fit one; the case is skipped, with the reason, where fewer GPUs are visible")

    @model_validator(mode="after")
    def _tensor_parallel_needs_vllm_on_gpus(self) -> "BenchConfig":
        if self.tensor_parallel_size > 1 and self.engine == "hf":
            raise ValueError("tensor_parallel_size above 1 is vLLM's; engine 'hf' runs on one device")
        if self.tensor_parallel_size > 1 and self.device == "cpu":
            raise ValueError("tensor_parallel_size above 1 needs GPUs; this config pins device 'cpu'")
        return self

    @property
    def method(self) -> str:
        return self.quantization.method


def _field_path(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "<root>"


def load_config(path: str | Path) -> BenchConfig:
    """Read and validate one config file; raises ConfigError naming the file and the field."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    try:
        return BenchConfig.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = _field_path(err["loc"])
            msg = err["msg"]
            if err["type"] == "value_error":
                msg = msg.removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            elif field == "quantization.method":
                msg = f"unknown method {err.get('input')!r}; valid methods: {', '.join(METHODS)}"
            problems.append(f"field '{field}': {msg}")
        raise ConfigError(f"{path}: " + "; ".join(problems)) from None


def load_configs(directory: str | Path, names: list[str] | None = None) -> list[BenchConfig]:
    """All configs in a directory (sorted by file name), or the named ones in the given order."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"{directory}: configs directory not found")
    available = {p.stem: p for p in sorted(directory.glob("*.json"))}
    if not names:
        return [load_config(p) for p in available.values()]
    missing = [n for n in names if n not in available]
    if missing:
        raise ConfigError(
            f"{directory}: no config named {', '.join(missing)}; available: {', '.join(available) or 'none'}"
        )
    return [load_config(available[n]) for n in names]


def load_selected(directory: str | Path, names: list[str] | None = None) -> tuple[list[BenchConfig], list[str]]:
    """The selected configs (all when none are named) and one warning per broken file that was not selected.

    Every file is read, so a typo in a config nobody selected today does not wait for the day it is;
    a broken selected file stops the run (ConfigError naming every broken selected file)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"{directory}: configs directory not found")
    names = list(names or [])
    available = {p.stem: p for p in sorted(directory.glob("*.json"))}
    missing = [n for n in names if n not in available]
    if missing:
        raise ConfigError(
            f"{directory}: no config named {', '.join(missing)}; available: {', '.join(available) or 'none'}"
        )
    chosen = set(names or available)
    loaded: dict[str, BenchConfig] = {}
    problems, warnings = [], []
    for stem, path in available.items():
        try:
            loaded[stem] = load_config(path)
        except ConfigError as exc:
            (problems if stem in chosen else warnings).append(str(exc))
    if problems:
        raise ConfigError("; ".join(problems))
    return [loaded[n] for n in (names or available)], [f"{w} (not selected; the run goes on)" for w in warnings]
