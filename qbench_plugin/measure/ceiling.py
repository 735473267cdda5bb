"""The throughput ceiling: the tokenizer on its own, the engine on pre-tokenized input, a saturation sweep.

Every point says whether tokenization was inside its timed region. The sweep doubles the batch size
until throughput stops improving (or memory runs out, which is recorded as the end of the sweep);
the ways to raise the ceiling (length-sorted batches, engine settings, replicas, tokenizer
parallelism) are measured as points next to the default, never assumed to help.
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence


from qbench_plugin.measure.measure import LatencyRecorder, MemoryTracker, latency_stats, mib

STRINGS, TOKENS = "strings", "tokens"  # what a timed call gets: raw texts, or the tokenizer's output


@dataclass
class Point:
    """One measured throughput point."""

    config: str
    engine: str
    stage: str  # "tokenizer" (the tokenizer alone) or "engine"
    input: str  # STRINGS: tokenization inside the timed region; TOKENS: outside
    batch_size: int
    texts: int = 0
    seconds: float = 0.0
    texts_per_s: float = 0.0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    order: str = "dataset"  # or "length_sorted": batches of similar token lengths (less padding)
    replicas: int = 1
    engine_settings: dict[str, Any] = field(default_factory=dict)
    tokenizers_parallelism: bool | None = None  # tokenizer points: TOKENIZERS_PARALLELISM
    memory_rss_peak_mib: float | None = None
    gpu_memory_peak_mib: float | None = None
    error: str | None = None  # why the point has no numbers (out of memory, skipped, failed to compile)
    # how the engine ran (issue 21's rungs): "padded" as engine.py runs it, "bucketed" (fixed shapes),
    # "packed" (padding-free rows); compile and graph settings; what `compile_s` cost before the timed calls
    path: str = "padded"
    compile_mode: str | None = None
    compile_s: float | None = None  # compiling, autotuning and capturing every shape, untimed
    cuda_graphs: bool = False
    attention: str | None = None  # the HF rungs' mask kind: "sdpa" (dense) or "flex" (BlockMask)
    overlapped: bool = False  # strings in, tokenized by worker processes/threads while the engine runs
    path_settings: dict[str, Any] = field(default_factory=dict)  # buckets, row width, cache dir, workers
    timed_tokens_per_text: float | None = None  # the timed texts' own mean length, which MFU uses
    deployable: str = ""  # "vllm": what a vLLM deployment runs; "reference": transformers only

    def __post_init__(self) -> None:
        self.deployable = self.deployable or ("vllm" if self.engine == "vllm" else "reference")

    @property
    def tokenization_in_timed_region(self) -> bool:
        return self.input == STRINGS

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tokenization_in_timed_region": self.tokenization_in_timed_region}


class Saturation:
    """Decides when a sweep has stopped paying: `patience` points in a row without a gain of at least
    `min_gain` over the best so far."""

    def __init__(self, min_gain: float = 0.05, patience: int = 2):
        self.min_gain, self.patience = min_gain, patience
        self.best = 0.0
        self.misses = 0

    def add(self, texts_per_s: float) -> bool:
        """Record a point; True while the sweep should go on."""
        if texts_per_s > self.best * (1 + self.min_gain):
            self.misses = 0
        else:
            self.misses += 1
        self.best = max(self.best, texts_per_s)
        return self.misses < self.patience


def sweep_batch_sizes(start: int, maximum: int) -> list[int]:
    """start, 2*start, 4*start ... up to maximum (inclusive)."""
    sizes, size = [], max(1, start)
    while size <= maximum:
        sizes.append(size)
        size *= 2
    return sizes


MIN_BATCHES = 5  # timed calls per point, however large the batch: a p95 needs a few samples
REPLICAS_DEVICE_SHARE = 0.85  # of GPU memory, split between the replicas: a sweep has the device alone (not under -n)


def batch_indices(lengths: Sequence[int], batch_size: int, total: int, order: str,
                  min_batches: int = MIN_BATCHES) -> list[list[int]]:
    """Row indices for ceil(total / batch_size) batches (at least `min_batches`) cycling through the
    rows; with "length_sorted" each batch holds rows of similar token length."""
    n = len(lengths)
    count = max(min_batches, -(-total // batch_size))
    flat = [i % n for i in range(count * batch_size)]
    if order == "length_sorted":
        flat.sort(key=lambda i: lengths[i])
    elif order != "dataset":
        raise ValueError(f"unknown batch order {order!r}")
    return [flat[k : k + batch_size] for k in range(0, len(flat), batch_size)]


def timed_calls(fn: Callable[[Any], Any], inputs: Sequence[Any]) -> list[int]:
    """Wall time of every call (nanoseconds, perf_counter_ns) after one untimed call on the middle
    input: not the first, which is the shortest batch when batches are length-sorted. The engines
    return host arrays, so a GPU's work is finished when a call returns."""
    fn(inputs[len(inputs) // 2])
    recorder = LatencyRecorder(fn)
    for item in inputs:
        recorder(item)
    return recorder.samples_ns


def fill(point: Point, samples_ns: Sequence[int]) -> Point:
    """A point's numbers from its per-call times; every call held `point.batch_size` texts."""
    stats = latency_stats(samples_ns, point.batch_size)
    point.texts = point.batch_size * len(samples_ns)
    point.seconds = sum(samples_ns) / 1e9
    point.texts_per_s = stats["throughput_samples_per_s"]
    point.latency_p50_ms, point.latency_p95_ms = stats["latency_p50_ms"], stats["latency_p95_ms"]
    return point


@contextmanager
def tracked(point: Point) -> Iterator[Point]:
    """Peak memory (process tree and GPU) while the point runs."""
    tracker = MemoryTracker(interval_s=0.1)
    with tracker.track() as reading:
        yield point
    point.memory_rss_peak_mib, point.gpu_memory_peak_mib = mib(reading.rss_peak_bytes), mib(reading.gpu_peak_bytes)


@contextmanager
def tokenizers_parallelism(enabled: bool) -> Iterator[None]:
    """The Rust tokenizer reads TOKENIZERS_PARALLELISM on every batch call."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if enabled else "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def tokenizer_points(tokenizer, texts: Sequence[str], batch_size: int, total: int, max_length: int,
                     config: str, engine: str) -> list[Point]:
    """The tokenizer alone: batched (parallelism off and on) and one text per call."""
    points = []
    batches = [[texts[i] for i in rows] for rows in batch_indices([0] * len(texts), batch_size, total, "dataset")]
    encode = lambda batch: tokenizer(batch, truncation=True, max_length=max_length)  # noqa: E731
    for parallel in (False, True):
        with tokenizers_parallelism(parallel):
            point = Point(config, engine, "tokenizer", STRINGS, batch_size, tokenizers_parallelism=parallel)
            points.append(fill(point, timed_calls(encode, batches)))
    singles = [[texts[i % len(texts)]] for i in range(min(total, 2048) + 1)]
    point = Point(config, engine, "tokenizer", STRINGS, 1)
    points.append(fill(point, timed_calls(encode, singles)))
    return points


def engine_point(engine, texts: Sequence[str], lengths: Sequence[int], batch_size: int, total: int, *,
                 input: str, order: str, config: str, settings: dict[str, Any] | None = None) -> Point:
    """One point of one engine: strings go through classify (tokenized inside the timed region),
    tokens through classify_encoded with the encoding done beforehand."""
    point = Point(config, engine.name, "engine", input, batch_size, order=order, engine_settings=dict(settings or {}))
    batches = [[texts[i] for i in rows] for rows in batch_indices(lengths, batch_size, total, order)]
    if input == TOKENS:
        calls, fn = [engine.encode(batch) for batch in batches], engine.classify_encoded
    else:
        calls, fn = batches, engine.classify
    with tracked(point):
        samples = timed_calls(fn, calls)
    return fill(point, samples)


def replicated_point(engines: Sequence[Any], texts: Sequence[str], lengths: Sequence[int], batch_size: int,
                     total: int, *, config: str, order: str = "dataset", settings: dict[str, Any] | None = None) -> Point:
    """N engines on one device, each fed pre-tokenized batches by its own thread; texts/s over the wall
    time of all of them (one engine's host work can leave the device idle; several can overlap)."""
    point = Point(config, engines[0].name, "engine", TOKENS, batch_size, order=order, replicas=len(engines),
                  engine_settings=dict(settings or {}))
    batches = [[texts[i] for i in rows]
               for rows in batch_indices(lengths, batch_size, total * len(engines), order,
                                         min_batches=MIN_BATCHES * len(engines))]
    shares = [[engines[k].encode(b) for b in batches[k :: len(engines)]] for k in range(len(engines))]
    for engine, share in zip(engines, shares):
        engine.classify_encoded(share[0])  # warm-up, untimed
    errors: list[BaseException] = []

    def drive(engine, share) -> None:
        try:
            for encoded in share:
                engine.classify_encoded(encoded)
        except BaseException as exc:  # noqa: BLE001  (re-raised in the calling thread)
            errors.append(exc)

    threads = [threading.Thread(target=drive, args=(e, s), name="qbench-replica") for e, s in zip(engines, shares)]
    with tracked(point):
        start = time.perf_counter_ns()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter_ns() - start
    if errors:
        raise errors[0]
    point.texts = sum(len(b) for b in batches)
    point.seconds = elapsed / 1e9
    point.texts_per_s = point.texts / point.seconds
    return point


def sweep(engine, texts: Sequence[str], lengths: Sequence[int], sizes: Sequence[int], total: int, *,
          inputs: Sequence[str], orders: Sequence[str], config: str, settings: dict[str, Any] | None = None,
          is_out_of_memory: Callable[[BaseException], bool]) -> list[Point]:
    """Raise the batch size along `sizes` for each (input, order) until throughput saturates or memory
    runs out; the out-of-memory point is kept, with its error, as the sweep's end."""
    points = []
    for input in inputs:
        for order in orders:
            saturation = Saturation()
            for size in sizes:
                try:
                    point = engine_point(engine, texts, lengths, size, total, input=input, order=order,
                                         config=config, settings=settings)
                except Exception as exc:
                    if not is_out_of_memory(exc):
                        raise
                    points.append(Point(config, engine.name, "engine", input, size, order=order,
                                        engine_settings=dict(settings or {}),
                                        error=f"out of memory: {type(exc).__name__}: {exc}"[:300]))
                    break
                points.append(point)
                if not saturation.add(point.texts_per_s):
                    break
    return points


def variant_ladder(engine, variants: Sequence[dict[str, int]], texts: Sequence[str], lengths: Sequence[int],
                   sizes: Sequence[int], total: int, so_far: Sequence[Point], *, config: str,
                   is_out_of_memory: Callable[[BaseException], bool]) -> Iterator[Point]:
    """Each engine-settings variant started in turn (the caller has closed `engine`) and swept from tokens;
    the ladder stops at the first rung that does not beat the best so far by 5%, or that cannot start
    (too big: a point with the error, not raised). A rung gets the device's memory, not the swept engine's share."""
    best_so_far = fastest(so_far)  # the ladder climbs on raw speed; the named point is best()'s to choose
    for rung in variants:
        variant = {**memory_share(engine, 1), **rung}  # a rung that names its own memory keeps it
        before = best_so_far.texts_per_s if best_so_far else 0.0
        try:
            other = engine.variant(**variant)
        except Exception as exc:  # noqa: BLE001
            yield Point(config, engine.name, "engine", TOKENS, sizes[0], engine_settings=dict(variant),
                        error=f"engine did not start: {type(exc).__name__}: {exc}"[:300])
            return
        try:
            found = sweep(other, texts, lengths, sizes, total, inputs=(TOKENS,), orders=("dataset",), config=config,
                          settings=variant, is_out_of_memory=is_out_of_memory)
        finally:
            other.close()
        yield from found
        gained = fastest(found)
        if gained is None or gained.texts_per_s < before * 1.05:
            return
        best_so_far = gained


def replica_settings(engine, top: Point) -> dict[str, Any]:
    """The engine settings every replica starts with (and its points record): the best point's, with
    the engine core in processes of its own, since replicas are driven from threads at once and
    in-process vLLM engines share this process's vLLM state (its forward context)."""
    share = dict(top.engine_settings)
    if getattr(engine, "in_process", False) or share.get("in_process"):
        share["in_process"] = False
    return share


def memory_share(engine, count: int) -> dict[str, float]:
    """Each of `count` engines' GPU share (none on a CPU): the device's or the swept engine's, if larger, split
    evenly. Split from fp16_baseline's 0.5, four replicas on an H200 had no memory left for a KV cache."""
    utilization = getattr(engine, "engine_kwargs", {}).get("gpu_memory_utilization")
    return {"gpu_memory_utilization": round(max(utilization, REPLICAS_DEVICE_SHARE) / count, 3)} if utilization else {}


@contextmanager
def started_replicas(engine, count: int, top: Point) -> Iterator[list]:
    """`count` copies of the engine at the best point's settings, each with its share of the GPU memory
    (memory_share); closed on the way out."""
    share = {**replica_settings(engine, top), **memory_share(engine, count)}
    replicas: list = []
    try:
        for _ in range(count):
            replicas.append(engine.variant(**share))
        yield replicas
    finally:
        for replica in replicas:
            replica.close()


def replica_point(engine, count: int, top: Point, texts: Sequence[str], lengths: Sequence[int], total: int, *,
                  config: str, also: Callable[[list], Point] | None = None) -> Point | list[Point]:
    """The replicas fed pre-tokenized batches; replicas that do not fit are a finding (a point with the
    error). `also(replicas)` measures another point on the same replicas (strings in, overlapped):
    then both points come back, in a list."""
    try:
        with started_replicas(engine, count, top) as replicas:
            point = replicated_point(replicas, texts, lengths, top.batch_size, total, config=config, order=top.order,
                                     settings=replica_settings(engine, top))
            return point if also is None else [point, also(replicas)]
    except Exception as exc:  # noqa: BLE001
        return Point(config, engine.name, "engine", TOKENS, top.batch_size, order=top.order, replicas=count,
                     engine_settings=replica_settings(engine, top),
                     error=f"{count} replicas failed: {type(exc).__name__}: {exc}"[:300])


MIN_GAIN = 0.05  # the gain a point needs over a simpler one to count: what the sweep and the ladder stop on


def _simplicity(point: Mapping[str, Any]) -> tuple:
    """Cheaper to deploy first: one engine, default settings, the engine's own padded path, no compile
    or graphs, batches as they come, smaller batches. (Rows read back from a frame hold NaN for fields a
    point did not have, hence the comparisons that NaN fails.)"""
    settings = point.get("engine_settings")
    path = point.get("path")
    machinery = (isinstance(path, str) and path != "padded") + isinstance(point.get("compile_mode"), str) \
        + (point.get("cuda_graphs") == True)  # noqa: E712  (NaN == True is False; `is True` misses numpy's bool)
    return (int(point.get("replicas") or 1), bool(settings) and isinstance(settings, Mapping), machinery,
            point.get("order") != "dataset", int(point["batch_size"]))


def leader(points: Sequence[Mapping[str, Any]]) -> int | None:
    """Index of the saturation point among measured points: the simplest point within MIN_GAIN of the
    fastest. A point is 5 calls or a few seconds of wall time; on an H200 two replicas gave 4,974
    texts/s against one engine's 4,864 (2%), which is noise, not a reason to run two engines, yet the
    raw maximum named them. A more elaborate point is named only when it is faster than everything
    simpler by more than the gain the sweep and the ladder stop on."""
    if not points:
        return None
    fastest = max(p["texts_per_s"] for p in points)
    close = [i for i, p in enumerate(points) if p["texts_per_s"] * (1 + MIN_GAIN) >= fastest]
    return min(close, key=lambda i: _simplicity(points[i]))  # min is stable: measurement order in ties


def _measured(points: Sequence[Point], stage: str) -> list[Point]:
    return [p for p in points if p.stage == stage and p.error is None and p.texts_per_s > 0]


def best(points: Sequence[Point], stage: str = "engine") -> Point | None:
    """The saturation point (leader): the simplest point within MIN_GAIN of the fastest."""
    measured = _measured(points, stage)
    found = leader([p.as_dict() for p in measured])
    return None if found is None else measured[found]


def fastest(points: Sequence[Point], stage: str = "engine") -> Point | None:
    measured = _measured(points, stage)
    return max(measured, key=lambda p: p.texts_per_s) if measured else None


ENGINE_SETTINGS = {  # vLLM LLM() arguments the ladder may vary, and their kind
    "max_num_seqs": int, "max_num_batched_tokens": int,
    "max_cudagraph_capture_size": int,  # largest token count vLLM captures a CUDA graph for (default <= 512)
    "async_scheduling": bool,  # vLLM 0.24 turns it off by default for pooling models
    # the engine core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0; engines/inprocess.py): no request or
    # output crosses a process boundary, which at 2048 requests a call is host work a GPU run is bound by
    "in_process": bool,
}


def parse_engine_settings(value: str) -> list[dict[str, int | bool]]:
    """'max_num_seqs=1024,max_num_batched_tokens=131072;async_scheduling=true' -> one dict per variant."""
    variants = []
    for part in filter(None, (p.strip() for p in value.split(";"))):
        variant: dict[str, int | bool] = {}
        for item in filter(None, (i.strip() for i in part.split(","))):
            key, sep, raw = (x.strip() for x in item.partition("="))
            if not sep or key not in ENGINE_SETTINGS:
                raise ValueError(f"engine setting {item!r}: expected one of {', '.join(k + '=' for k in ENGINE_SETTINGS)}")
            if ENGINE_SETTINGS[key] is bool:
                if raw.lower() not in ("true", "false"):
                    raise ValueError(f"engine setting {item!r}: {raw!r} is not true or false")
                variant[key] = raw.lower() == "true"
                continue
            try:
                variant[key] = int(raw)
            except ValueError:
                raise ValueError(f"engine setting {item!r}: {raw!r} is not a whole number") from None
        variants.append(variant)
    return variants
