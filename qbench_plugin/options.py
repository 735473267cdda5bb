"""Command-line options, each with an ini twin, and the typed settings they resolve to.

Precedence: command line > pytest.ini (`qbench_*`) > the defaults below.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from .embedded import EMBEDDED


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in str(value).split(",") if part.strip())


def _int_csv(value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in _csv(value))
    except ValueError:
        raise pytest.UsageError(f"qbench batch sizes must be comma-separated integers, got {value!r}") from None
    if not sizes or any(size <= 0 for size in sizes):
        raise pytest.UsageError(f"qbench batch sizes must be positive integers, got {value!r}")
    return sizes


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise pytest.UsageError(f"expected an integer, got {value!r}") from None
    if number < 0:
        raise pytest.UsageError(f"expected a non-negative integer, got {value!r}")
    return number


@dataclass(frozen=True)
class _Option:
    name: str
    default: str
    help: str
    convert: Callable[[str], Any] = str


OPTIONS: tuple[_Option, ...] = (
    _Option("model", EMBEDDED, "classifier: hub id, local folder, or 'embedded' (trained at first use)"),
    _Option("dataset", EMBEDDED, "evaluation data: hub id, local folder or file, or 'embedded'"),
    _Option("split", "test", "dataset split to evaluate and time"),
    _Option("text_column", "text", "dataset column holding the text"),
    _Option("label_column", "label", "dataset column holding the label (name or id)"),
    _Option("configs", "", "comma-separated config names from the configs dir (default: all)", _csv),
    _Option("configs_dir", "configs", "directory of config JSON files, relative to the rootdir"),
    _Option("batch_sizes", "1,4,8,16,32", "comma-separated batch sizes", _int_csv),
    _Option("samples", "50", "timed batches per (config, batch size)", _positive_int),
    _Option("warmup", "5", "untimed batches before the timed ones", _positive_int),
    _Option("engine", "vllm", "engine for configs that do not pin one: vllm or hf"),
    _Option("results_dir", "results", "where each run writes results/<run id>/ (relative to the rootdir)"),
    _Option("max_model_len", "256", "longest input in tokens; longer texts are truncated", _positive_int),
    _Option("cache_dir", "", "cache for trained and quantized models (default: $QBENCH_CACHE_DIR or ~/.cache/qbench)"),
    _Option("calibration_split", "train", "dataset split that calibrates GPTQ/AWQ/int8 (never the evaluated one)"),
    _Option("quant_python", ".venv-quant/bin/python", "python of the llm-compressor environment (relative to the rootdir)"),
    _Option("report", "auto", "write results/<run id>/report.html and benchmark.json: auto (when benchmarks/ runs), always, never"),
)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("qbench", "qbench: quantized classifier benchmarks")
    for opt in OPTIONS:
        flag = "--qbench-" + opt.name.replace("_", "-")
        group.addoption(flag, dest="qbench_" + opt.name, default=None,
                        help=f"{opt.help} (ini: qbench_{opt.name}; default: {opt.default or 'unset'})")
        parser.addini("qbench_" + opt.name, opt.help, default=opt.default)


@dataclass(frozen=True)
class Settings:
    model: str
    dataset: str
    split: str
    text_column: str
    label_column: str
    configs: tuple[str, ...]
    configs_dir: Path
    batch_sizes: tuple[int, ...]
    samples: int
    warmup: int
    engine: str
    results_dir: Path
    max_model_len: int
    cache_dir: Path | None
    calibration_split: str
    quant_python: Path
    report: str

    @classmethod
    def from_pytest(cls, config: pytest.Config) -> "Settings":
        values: dict[str, Any] = {}
        for opt in OPTIONS:
            raw = config.getoption("qbench_" + opt.name)
            if raw is None:
                raw = config.getini("qbench_" + opt.name)
            values[opt.name] = opt.convert(raw)
        root = Path(config.rootpath)
        values["configs_dir"] = root / values["configs_dir"]
        values["results_dir"] = root / values["results_dir"]
        values["quant_python"] = root / values["quant_python"]
        values["cache_dir"] = Path(values["cache_dir"]).expanduser() if values["cache_dir"] else None
        if values["engine"] not in ("vllm", "hf"):
            raise pytest.UsageError(f"--qbench-engine must be vllm or hf, got {values['engine']!r}")
        if values["report"] not in ("auto", "always", "never"):
            raise pytest.UsageError(f"--qbench-report must be auto, always or never, got {values['report']!r}")
        if values["samples"] < 1:
            raise pytest.UsageError("--qbench-samples must be at least 1")
        return cls(**values)

    def public(self) -> dict[str, Any]:
        """Settings as recorded in results (paths as strings)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}
