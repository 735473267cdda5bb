"""Command-line options, each with an ini twin, and the typed settings they resolve to.

Precedence: command line > pytest.ini (`qbench_*`) > the defaults below.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from qbench_plugin.dataset.embedded import EMBEDDED


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in str(value).split(",") if part.strip())


def _counts(what: str) -> Callable[[str], tuple[int, ...]]:
    """Comma-separated whole numbers of at least 1 (a load-grid axis)."""

    def convert(value: str) -> tuple[int, ...]:
        try:
            counts = tuple(int(part) for part in _csv(value))
        except ValueError:
            raise pytest.UsageError(f"expected comma-separated {what}, got {value!r}") from None
        if not counts or any(c < 1 for c in counts):
            raise pytest.UsageError(f"expected comma-separated {what} of at least 1, got {value!r}")
        return tuple(dict.fromkeys(counts))

    return convert


def _rates(value: str) -> tuple[float, ...]:
    """Comma-separated positive requests/s, or empty (closed loop)."""
    try:
        rates = tuple(float(part) for part in _csv(value))
    except ValueError:
        raise pytest.UsageError(f"expected comma-separated requests/s, got {value!r}") from None
    if any(not r > 0 for r in rates):
        raise pytest.UsageError(f"expected positive requests/s, got {value!r}")
    return tuple(dict.fromkeys(rates))


def _number(cast: Callable[[str], float], what: str, minimum: float | None = None, maximum: float | None = None,
            above: float | None = None, optional: bool = False) -> Callable[[str], Any]:
    """A converter for a numeric option that names the option's expectation when the value misses it."""

    def convert(value: str):
        if optional and value in ("", None):
            return None
        try:
            number = cast(value)
        except ValueError:
            raise pytest.UsageError(f"expected {what}, got {value!r}") from None
        if ((minimum is not None and number < minimum) or (maximum is not None and number > maximum)
                or (above is not None and not number > above)):
            raise pytest.UsageError(f"expected {what}, got {value!r}")
        return number

    return convert


_optional_ratio = _number(float, "a number between 0 and 1", minimum=0, maximum=1, optional=True)
_count = _number(int, "a whole number of at least 1", minimum=1)
_rate = _number(float, "a positive number", above=0)
_positive_int = _number(int, "a non-negative integer", minimum=0)
_seconds = _number(float, "a number of seconds of at least 0", minimum=0)
_optional_positive_float = _number(float, "a positive number", above=0, optional=True)


def _usage(parse: Callable[[str], Any], value: str) -> Any:
    """parse(value), its ValueError turned into the one-line usage error pytest prints."""
    try:
        return parse(value)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def _model(value: str) -> str:
    from qbench_plugin.dataset.embedded import parse_embedded

    _usage(parse_embedded, value)
    return value


def _on_off(value: str) -> bool:
    return _one_of("on", "off")(value) == "on"


def _engine_settings(value: str) -> tuple[dict[str, int], ...]:
    from qbench_plugin.measure.ceiling import parse_engine_settings

    return tuple(_usage(parse_engine_settings, value))


def _hf_rungs(value: str) -> str:
    from qbench_plugin.measure.hf_rungs import parse_rungs

    if value != "auto":
        _usage(parse_rungs, value)
    return value


def _buckets(value: str) -> tuple[int, ...]:
    from qbench_plugin.engines.hf_paths import parse_buckets

    return tuple(_usage(parse_buckets, value))


def _one_of(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if str(value).lower() not in choices:
            raise pytest.UsageError(f"expected {', '.join(choices[:-1])} or {choices[-1]}, got {value!r}")
        return str(value).lower()
    return parse


def _replica_feeds(value: str) -> tuple[str, ...]:
    feeds = tuple(part.lower() for part in _csv(value))
    unknown = [f for f in feeds if f not in ("threads", "processes")]
    if unknown or not feeds:
        raise pytest.UsageError(f"expected threads, processes or both, comma-separated, got {value!r}")
    return feeds


def _replica_counts(value: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in _csv(value))
    except ValueError:
        raise pytest.UsageError(f"expected comma-separated replica counts, got {value!r}") from None
    if any(count < 2 for count in counts):
        raise pytest.UsageError(f"replica counts must be at least 2 (1 is the sweep itself), got {value!r}")
    return counts


def _endpoint_kind(value: str) -> str:
    from qbench_plugin.loadtest.endpoint import KINDS

    if value not in KINDS:
        raise pytest.UsageError(f"--qbench-endpoint-kind must be one of {', '.join(KINDS)}, got {value!r}")
    return value


def _gpu_type(value: str) -> str:
    from qbench_plugin.report.gpus import by_name, known_names

    if value and by_name(value) is None:
        raise pytest.UsageError(f"--qbench-gpu-type {value!r} is not in the price table; known: "
                                f"{', '.join(known_names())} (or give --qbench-price-per-hour)")
    return value


@dataclass(frozen=True)
class _Option:
    name: str
    default: str
    help: str
    convert: Callable[[str], Any] = str
    # a switch: given bare on the command line it means on (the ini twin takes on/off); no value is read,
    # so `--qbench-gate-strict benchmarks` keeps `benchmarks` as the path it is
    flag: bool = False


OPTIONS: tuple[_Option, ...] = (
    _Option("model", EMBEDDED, "classifier: hub id, local folder, 'embedded' (tiny, trained at first use) or "
            "'embedded:qwen2.5-0.5b' (Qwen2.5-0.5B's shape; train it on a GPU)", _model),
    _Option("dataset", EMBEDDED, "evaluation data: hub id, local folder or file, or 'embedded'"),
    _Option("split", "test", "dataset split to evaluate and time"),
    _Option("text_column", "text", "dataset column holding the text"),
    _Option("label_column", "label", "dataset column holding the label (name or id)"),
    _Option("configs", "", "comma-separated config names from the configs dir (default: all)", _csv),
    _Option("configs_dir", "configs", "directory of config JSON files, relative to the rootdir"),
    _Option("batch_sizes", "1,4,8,16,32", "comma-separated batch sizes", _counts("batch sizes")),
    _Option("samples", "50", "timed batches per (config, batch size)", _positive_int),
    _Option("warmup", "5", "untimed batches before the timed ones", _positive_int),
    _Option("rounds", "auto", "interleaved rounds the timed batches are split into (each round times a block of "
            "samples/rounds batches of every case, in a fresh random order); auto: one batch a block on a GPU, up "
            "to five on a CPU (at least 10 rounds)", lambda v: None if str(v).lower() == "auto" else _number(int, "auto or a whole number")(v)),
    _Option("seed", "", "seed of the rounds' random order (default: drawn per run and recorded)",
            _number(int, "a non-negative integer", minimum=0, optional=True)),
    _Option("interleave", "on", "on: keep every config's engine up and interleave them in rounds; off: one "
            "config's engine at a time (rounds still split its samples)", _on_off),
    _Option("vllm_inprocess", "on", "vLLM on a CPU: on: the matrix's vLLM engines run their engine core in the "
            "pytest process (VLLM_ENABLE_V1_MULTIPROCESSING=0), started one by one, memory read as the process's "
            "growth; off: each in processes of its own (vLLM's default), started concurrently, memory read as their "
            "PSS. No effect on a GPU, whose vLLM engines keep their own processes", _on_off),
    _Option("engine_starts", "1", "engines of each config timed in the interleaved rounds: with N > 1, N - 1 more "
            "starts of every config's engine join the rounds and the case pools their samples; each start's "
            "throughput is recorded, so the spread between starts is measured (on an H200 two sessions' ratios "
            "moved 7-9% while each session's rounds put them at 2-3%)", _positive_int),
    _Option("pin_cores", "off", "GPU runs: on: during the timed rounds the pytest main thread (which drives every "
            "engine) gets a physical core to itself and each vLLM engine's processes a core of their own; off: the "
            "OS places them (measured on an H200: pinning did not steady an A/A pair). No effect on a CPU run",
            _on_off),
    _Option("engine", "vllm", "engine for configs that do not pin one: vllm or hf", _one_of("vllm", "hf")),
    _Option("results_dir", "results", "where each run writes results/<run id>/ (relative to the rootdir)"),
    _Option("max_model_len", "256", "longest input in tokens", _positive_int),
    _Option("truncation", "truncate", "texts longer than max_model_len: truncate (counted in the report) or reject",
            _one_of("truncate", "reject")),
    _Option("cache_dir", "", "cache for trained and quantized models (default: $QBENCH_CACHE_DIR or ~/.cache/qbench)"),
    _Option("calibration_split", "train", "dataset split that calibrates GPTQ/AWQ/int8 (never the evaluated one)"),
    _Option("calibration_dataset", "", "where the calibration split is read: hub id, folder or file (default: "
            "--qbench-dataset; required when that is one file or one saved Dataset, whose every split is the same rows)"),
    _Option("quant_python", ".venv-quant/bin/python", "python of the llm-compressor environment (relative to the rootdir)"),
    _Option("quantize_timeout", "3600", "seconds the llm-compressor worker may take to make one checkpoint", _rate),
    _Option("quantize_unrunnable", "off", "on: make a config's checkpoint even when no engine here can run it (e.g. "
            "W4A16 on a CPU without AVX-512), to record its size and quantization time; off: skip it at once", _on_off),
    _Option("min_accuracy", "", "gate: minimum accuracy, for every config (overrides the configs' gates)", _optional_ratio),
    _Option("max_accuracy_drop", "", "gate: largest accuracy drop vs the baseline config, for every config", _optional_ratio),
    _Option("max_flip_rate", "", "gate: largest share of predictions that differ from the baseline's", _optional_ratio),
    _Option("perf_baseline", "", "saved run (results/<run id>/ or its benchmark.json) to check performance against"),
    _Option("run_noise", "", "run-to-run noise the perf gates allow on top of the rounds' interval, e.g. 0.1 "
            "(default: the A/A-measured figure of this device in uncertainty.py)",
            _number(float, "a number between 0 and 1", minimum=0, maximum=1, optional=True)),
    _Option("perf_relative_to", "", "with --qbench-perf-baseline: gate other configs' speed over this config's against "
            "that ratio in the saved run (10% allowance on a measured device, else 25%); it keeps the absolute gate"),
    _Option("perf_thresholds", "", "allowed regressions, e.g. latency_p95_ms=15%,throughput_samples_per_s=10% (defaults in gates.py)"),
    _Option("gate_strict", "off", "on: a gate that cannot be decided (a case missing from the saved run, too few rounds, "
            "a saved run that does not record what makes it comparable) fails instead of passing as n/a", _on_off,
            flag=True),
    _Option("gpu_type", "", "GPU to price the run as (A100 40GB, A100 80GB, H100, H200, L4, A10G, T4; default: the detected GPU)", _gpu_type),
    _Option("price_per_hour", "", "on-demand USD per replica-hour (a GPU, or the CPU machine) for cost per request (default: the GPU table's list price; on a CPU, its vCPUs at the CPU list price)", _optional_positive_float),
    _Option("spot_price_per_hour", "", "spot USD per replica-hour for cost per request (default: the GPU or CPU table's)", _optional_positive_float),
    _Option("peak_tflops", "", "device's dense bf16/fp16 peak TFLOP/s for MFU (default: the detected GPU's; unknown on CPU)", _optional_positive_float),
    _Option("p95_target_ms", "100", "p95 latency target that traffic tiers are sized under: per request from the "
            "load grid when it ran (its capacity at the target), else per batch from the in-process matrix", _optional_positive_float),
    _Option("compare_run", "", "saved run (results/<run id>/, its qbench.json or benchmark.json) to compare this run with"),
    _Option("load_users", "10", "load tests: concurrent Locust users, comma-separated (a grid axis; open loop: "
            "the most requests in flight)", _counts("user counts")),
    _Option("load_spawn_rate", "10", "load tests: users started per second (ramp-up is left out of the measured window)", _rate),
    _Option("load_duration", "20", "load tests: seconds of each grid point's measured window", _count),
    _Option("load_batch_size", "8", "load tests: texts per request, comma-separated (a grid axis)", _counts("batch sizes")),
    _Option("load_rate", "", "load tests: open loop: requests/s to offer, comma-separated (a grid axis; users send on "
            "a schedule; empty: closed loop, each user sends when answered)", _rates),
    _Option("load_settle", "2", "load tests: seconds between the last user started and a point's measured window", _seconds),
    _Option("load_configs", "baseline", "load tests: configs that get a server: baseline, all, or comma-separated names", _csv),
    _Option("load_workers", "0", "load tests: Locust workers to start on this machine (0: one plain Locust process)", _positive_int),
    _Option("load_expect_workers", "0", "load tests: workers the Locust master waits for, on any machine (0: --qbench-load-workers)", _positive_int),
    _Option("load_master_bind", "127.0.0.1:0", "load tests: HOST:PORT the Locust master listens on (port 0: a free one)"),
    _Option("load_server_early", "on", "load tests on a CPU: on: start the first load config's vLLM server while the "
            "engines start (its imports overlap theirs; it then waits idle, which test_residency measures); off: "
            "start it after the in-process tests", _on_off),
    _Option("endpoint", "", "load an already running server at this URL instead of starting one per config"),
    _Option("endpoint_kind", "vllm", "kind of --qbench-endpoint: vllm (POST /classify) or runpod (POST /runsync)", _endpoint_kind),
    _Option("endpoint_key_env", "RUNPOD_API_KEY", "NAME of the environment variable holding the endpoint's API key (runpod)"),
    _Option("sweep", "off", "saturation sweep (benchmarks/test_saturation.py): on or off", _on_off),
    _Option("sweep_configs", "baseline", "configs that get a sweep: baseline, all, or comma-separated names", _csv),
    _Option("sweep_texts", "2048", "texts per sweep point (cycled from the split; never fewer than 5 batches)", _count),
    _Option("sweep_max_batch", "4096", "largest batch size the sweep tries", _count),
    _Option("sweep_engine_settings", "max_num_seqs=512,max_num_batched_tokens=32768;max_num_seqs=1024,max_num_batched_tokens=131072;"
            "max_num_seqs=2048,max_num_batched_tokens=262144;"
            "max_num_seqs=2048,max_num_batched_tokens=262144,async_scheduling=true,max_cudagraph_capture_size=1024",
            "vLLM settings to climb after the defaults, rung by rung while each beats the best by 5%: k=v,k=v;k=v (empty: none)",
            _engine_settings),
    _Option("sweep_replicas", "2", "engine replicas on one device to try at the best batch size, comma-separated (empty: none)",
            _replica_counts),
    _Option("sweep_replica_feed", "threads,processes", "how the replicas are fed: threads (one process drives every "
            "engine) and/or processes (one process a replica, vLLM only), comma-separated", _replica_feeds),
    _Option("sweep_hf_rungs", "auto", "HF engine rungs past padded batches: bucketed or packed, each with any of +compile, "
            "+graphs, +flex, comma-separated (auto: per device, see README; empty: none)", _hf_rungs),
    _Option("sweep_compile_mode", "auto", "torch.compile mode of the +compile rungs (auto: max-autotune-no-cudagraphs on "
            "CUDA, default on CPU)"),
    _Option("sweep_buckets", "32,64", "padded lengths of the bucketed rungs, comma-separated (a longer batch pads to "
            "--qbench-max-model-len)", _buckets),
    _Option("sweep_pack_width", "512", "tokens a packed row holds (at least --qbench-max-model-len)", _count),
    _Option("sweep_pack_texts", "0", "texts a packed HF batch holds on average (0: the best pre-tokenized batch)", _positive_int),
    _Option("sweep_tokenize", "process", "strings-in points with tokenization overlapped: process or thread workers, or off",
            _one_of("process", "thread", "off")),
    _Option("sweep_tokenize_workers", "0", "tokenizer workers of the overlapped points (0: half the CPUs, at most 8)",
            _positive_int),
    _Option("report", "auto", "write results/<run id>/report.html and benchmark.json: auto (when benchmarks/ runs), always, never",
            _one_of("auto", "always", "never")),
)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("qbench", "qbench: quantized classifier benchmarks")
    for opt in OPTIONS:
        flag = "--qbench-" + opt.name.replace("_", "-")
        text = f"{opt.help} (ini: qbench_{opt.name}; default: {opt.default or 'unset'})"
        # argparse %-formats every help string ("%(default)s"): a bare "15%" would crash `pytest --help`
        bare = {"action": "store_const", "const": "on"} if opt.flag else {}
        group.addoption(flag, dest="qbench_" + opt.name, default=None, help=text.replace("%", "%%"), **bare)
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
    rounds: int | None  # None: auto, by device
    seed: int | None
    interleave: bool
    vllm_inprocess: bool
    engine_starts: int
    pin_cores: bool
    engine: str
    results_dir: Path
    max_model_len: int
    truncation: str
    cache_dir: Path | None
    calibration_split: str
    calibration_dataset: str
    quant_python: Path
    quantize_timeout: float
    min_accuracy: float | None
    max_accuracy_drop: float | None
    max_flip_rate: float | None
    perf_baseline: str
    run_noise: float | None
    perf_relative_to: str
    perf_thresholds: str
    gate_strict: bool
    gpu_type: str
    price_per_hour: float | None
    spot_price_per_hour: float | None
    peak_tflops: float | None
    p95_target_ms: float | None
    compare_run: str
    load_users: tuple[int, ...]
    load_spawn_rate: float
    load_duration: int
    load_batch_size: tuple[int, ...]
    load_rate: tuple[float, ...]
    load_settle: float
    load_configs: tuple[str, ...]
    load_workers: int
    load_expect_workers: int
    load_master_bind: str
    load_server_early: bool
    quantize_unrunnable: bool
    endpoint: str
    endpoint_kind: str
    endpoint_key_env: str
    sweep: bool
    sweep_configs: tuple[str, ...]
    sweep_texts: int
    sweep_max_batch: int
    sweep_engine_settings: tuple[dict[str, int], ...]
    sweep_replicas: tuple[int, ...]
    sweep_replica_feed: tuple[str, ...]
    sweep_hf_rungs: str
    sweep_compile_mode: str
    sweep_buckets: tuple[int, ...]
    sweep_pack_width: int
    sweep_pack_texts: int
    sweep_tokenize: str
    sweep_tokenize_workers: int
    report: str

    @classmethod
    def from_pytest(cls, config: pytest.Config) -> "Settings":
        values: dict[str, Any] = {}
        for opt in OPTIONS:
            raw = config.getoption("qbench_" + opt.name)
            if raw is None:
                raw = config.getini("qbench_" + opt.name)
            try:
                values[opt.name] = opt.convert(raw)
            except pytest.UsageError as exc:
                flag = "--qbench-" + opt.name.replace("_", "-")
                raise pytest.UsageError(f"{flag} (ini qbench_{opt.name}): {exc}") from None
        root = Path(config.rootpath)
        values["configs_dir"] = root / values["configs_dir"]
        values["results_dir"] = root / values["results_dir"]
        values["quant_python"] = root / values["quant_python"]
        values["cache_dir"] = Path(values["cache_dir"]).expanduser() if values["cache_dir"] else None
        if values["sweep"] and values["sweep_max_batch"] < max(values["batch_sizes"]):
            raise pytest.UsageError(f"--qbench-sweep-max-batch {values['sweep_max_batch']} is below the largest "
                                    f"batch size {max(values['batch_sizes'])}, where the sweep starts")
        if values["sweep"] and values["sweep_pack_width"] < values["max_model_len"]:
            raise pytest.UsageError(f"--qbench-sweep-pack-width {values['sweep_pack_width']} is below "
                                    f"--qbench-max-model-len {values['max_model_len']}: a longest text would not fit a row")
        if values["calibration_split"] == values["split"] and values["calibration_dataset"] in ("", values["dataset"]):
            raise pytest.UsageError(f"--qbench-calibration-split must differ from the evaluated split "
                                    f"--qbench-split ({values['split']!r}): calibrating on it would flatter accuracy")
        from qbench_plugin.measure.rounds import RoundPlan  # its checks also refuse --qbench-samples 0

        try:
            RoundPlan.of(values["samples"], values["rounds"], "cpu", values["warmup"], 0)  # auto: cpu is stricter than cuda
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
        return cls(**values)

    def public(self) -> dict[str, Any]:
        """Settings as recorded in results (paths as strings)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}
