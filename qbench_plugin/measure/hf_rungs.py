"""The transformers reference's rungs past padded batches: fixed-shape length buckets, padding-free
packing, torch.compile and CUDA graphs (engines/hf_paths.py runs them; this module times them).

Each rung is one point from pre-tokenized input and, when asked, one from strings with tokenization
overlapped (measure/pretokenize.py). A rung that cannot run here (CUDA graphs without CUDA) is a point
with the reason, never replaced by another; one that fails (compile, capture, out of memory) is a
point with its error. Everything a rung costs before its timed calls (compiling, autotuning and
capturing each shape) is `compile_s`; the timed calls come after, on warm shapes.
"""
from __future__ import annotations

import functools
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from qbench_plugin.engines import hf_paths
from qbench_plugin.measure import pretokenize
from qbench_plugin.measure.ceiling import MIN_BATCHES, STRINGS, TOKENS, Point, batch_indices, timed_calls, tracked
from qbench_plugin.measure.measure import latency_stats

PATHS, EXTRAS = ("bucketed", "packed"), ("compile", "graphs", "flex")
DEFAULT_RUNGS = {
    # compile only what pays on a GPU: each compiled bucket shape costs minutes of max-autotune
    "cuda": "bucketed,bucketed+compile,packed,packed+compile,packed+compile+graphs,packed+flex+compile",
    # graphs are listed so the run records why they were not measured here
    "cpu": "bucketed,packed,packed+flex,packed+graphs",
}
DEFAULT_COMPILE_MODE = {"cuda": "max-autotune-no-cudagraphs", "cpu": "default"}
PACK_FILL = 0.9  # strings in: texts a packed batch is sent, as a share of what its rows hold on average


@dataclass(frozen=True)
class Rung:
    path: str  # "bucketed" or "packed"
    compile: bool = False
    graphs: bool = False
    attention: str = "sdpa"  # "flex": a BlockMask (packed rows skip other texts' blocks)

    @property
    def name(self) -> str:
        extras = [e for e, on in (("flex", self.attention == "flex"), ("compile", self.compile),
                                  ("graphs", self.graphs)) if on]
        return "+".join([self.path, *extras])


def parse_rungs(value: str) -> list[Rung]:
    """'bucketed,packed+compile+graphs' -> rungs; empty -> none."""
    rungs = []
    for item in filter(None, (i.strip() for i in value.split(","))):
        path, *extras = item.split("+")
        if path not in PATHS or any(e not in EXTRAS for e in extras):
            raise ValueError(f"HF rung {item!r}: expected {' or '.join(PATHS)} followed by any of "
                             f"{', '.join('+' + e for e in EXTRAS)}")
        if "graphs" in extras and "flex" in extras:
            raise ValueError(f"HF rung {item!r}: CUDA graphs are captured with the dense sdpa mask, not flex")
        rungs.append(Rung(path, "compile" in extras, "graphs" in extras, "flex" if "flex" in extras else "sdpa"))
    return rungs


@dataclass(frozen=True)
class RungSetup:
    """What every HF rung of one sweep shares."""

    config: str
    device: str
    batch_size: int  # texts a bucketed batch
    total: int
    max_length: int
    buckets: tuple[int, ...]
    pack_width: int
    compile_mode: str
    cache_dir: str | None
    mean_tokens: float = 32.0  # the texts' mean token length: sizes packed rows like pack_texts texts
    # texts a packed batch holds on average (0: batch_size). Packed batches have no padding, so unlike padded
    # ones they need not stop at the padded sweep's saturation point: larger shapes keep the GPU's GEMMs fuller
    pack_texts: int = 0
    tokenize_mode: str | None = None  # None: no strings-in point
    tokenize_workers: int = 2


def compile_cache(cache_root: str | os.PathLike | None) -> str | None:
    """Inductor's cache under qbench's: compiled kernels and autotuning results kept across runs."""
    return os.path.join(os.fspath(cache_root), "inductor") if cache_root else None


def rung_points(engine, texts: Sequence[str], lengths: Sequence[int], rungs: Sequence[Rung], setup: RungSetup, *,
                is_out_of_memory: Callable[[BaseException], bool]) -> Iterator[Point]:
    """Each rung's points, in order; `engine` is an HfEngine (its model and tokenizer are used)."""
    for rung in rungs:
        base = _point(rung, setup, TOKENS)
        if rung.graphs and setup.device != "cuda":
            base.error = f"skipped: CUDA graphs need a CUDA device (this run's device is {setup.device})"
            yield base
            continue
        runner = None
        try:
            try:
                with tracked(base):
                    runner = hf_paths.FastRunner(engine.model, setup.device, attention=rung.attention,
                                                 compile_mode=setup.compile_mode if rung.compile else None,
                                                 cuda_graphs=rung.graphs, cache_dir=setup.cache_dir)
                    layouts = _token_layouts(engine.tokenizer, texts, lengths, rung, setup)
                    _measure(base, runner, layouts)
            except Exception as exc:  # noqa: BLE001  (a rung that fails is a finding, the sweep goes on)
                yield _failed(base, exc, runner, is_out_of_memory)
                continue
            yield base
            if setup.tokenize_mode:
                strings = _point(rung, setup, STRINGS)
                try:
                    _strings_point(strings, engine, runner, texts, rung, setup, base)
                except Exception as exc:  # noqa: BLE001
                    _failed(strings, exc, None, is_out_of_memory)
                yield strings
        finally:
            if runner is not None:
                runner.close()
            _release(rung, setup.device)


def _failed(point: Point, exc: BaseException, runner, is_out_of_memory: Callable[[BaseException], bool]) -> Point:
    kind = "out of memory" if is_out_of_memory(exc) else "failed"
    point.error = f"{kind}: {type(exc).__name__}: {exc}"[:300]
    if runner is not None:
        point.compile_s = round(runner.compile_s, 3)
    return point


def _point(rung: Rung, setup: RungSetup, input: str) -> Point:
    settings: dict[str, Any] = {"rung": rung.name}
    if rung.path == "bucketed":
        settings["buckets"] = list(setup.buckets)
    else:
        settings["rows"], settings["width"] = _rows(setup), setup.pack_width
    if rung.compile:
        settings["compile_cache"] = setup.cache_dir
    return Point(setup.config, "hf", "engine", input, setup.batch_size,
                 order="length_sorted" if rung.path == "bucketed" else "dataset", path=rung.path,
                 compile_mode=setup.compile_mode if rung.compile else None, cuda_graphs=rung.graphs,
                 attention=rung.attention, path_settings=settings)


def _rows(setup: RungSetup) -> int:
    """Packed rows a batch: about `pack_texts` texts of the mean length (a fixed shape: rows x width)."""
    return max(1, round((setup.pack_texts or setup.batch_size) * setup.mean_tokens / setup.pack_width))


def _token_layouts(tokenizer, texts: Sequence[str], lengths: Sequence[int], rung: Rung,
                   setup: RungSetup) -> list[hf_paths.Layout]:
    """The timed batches, tokenized beforehand. Bucketed: length-sorted batches of batch_size texts,
    each padded to its bucket; packed: the texts in dataset order, packed into full fixed rows."""
    pad = tokenizer.pad_token_id or 0
    if rung.path == "packed":
        ids = tokenizer(list(texts), truncation=True, max_length=setup.max_length)["input_ids"]
        return full_layouts(ids, _rows(setup), setup.pack_width, pad, setup.total)
    batches = batch_indices(lengths, setup.batch_size, setup.total, "length_sorted")
    flat = [i for rows in batches for i in rows]
    ids = tokenizer([texts[i] for i in flat], truncation=True, max_length=setup.max_length)["input_ids"]
    return [hf_paths.bucketed(ids[k : k + setup.batch_size], setup.buckets, setup.max_length, setup.batch_size, pad,
                              indices=flat[k : k + setup.batch_size])
            for k in range(0, len(ids), setup.batch_size)]


class _Cycle(Sequence):
    """`ids` repeated end to end, `length` items long (the dataset order, cycled as batch_indices does)."""

    def __init__(self, ids: Sequence[Sequence[int]], length: int):
        self.ids, self.length = ids, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i):
        return self.ids[i % len(self.ids)]


def full_layouts(ids: Sequence[Sequence[int]], rows: int, width: int, pad: int, total: int) -> list[hf_paths.Layout]:
    """Packed layouts of the texts cycled in order, each filled until the next text does not fit: at
    least `total` texts and MIN_BATCHES layouts. A fixed shape costs the same however many texts it
    holds, so a part-filled last layout would be timed at full cost for a fraction of the texts (on the
    H200 at 200 rows of 512 and 8,192 texts, two of the six timed calls held about 200 texts each)."""
    stream = _Cycle(ids, (max(MIN_BATCHES, total) + 1) * rows * width)  # a layout holds at most rows*width texts
    layouts, start = [], 0
    while len(layouts) < MIN_BATCHES or sum(len(layout.texts) for layout in layouts) < total:
        layout, start = hf_paths.pack(stream, rows, width, pad, start)
        layouts.append(layout)
    return layouts


def _measure(point: Point, runner: hf_paths.FastRunner, layouts: Sequence[hf_paths.Layout]) -> None:
    """Every distinct shape once (compiled, captured: compile_s), then the timed calls."""
    seen = {}
    for layout in layouts:
        seen.setdefault(layout.shape, layout)
    for layout in seen.values():
        runner(layout)
    point.compile_s = round(runner.compile_s, 3)
    samples = timed_calls(runner, layouts)
    texts = sum(len(layout.texts) for layout in layouts)
    point.texts, point.seconds = texts, sum(samples) / 1e9
    point.texts_per_s = texts / point.seconds
    point.batch_size = round(texts / len(layouts))
    point.timed_tokens_per_text = round(sum(layout.tokens for layout in layouts) / texts, 3)
    stats = latency_stats(samples, point.batch_size)
    point.latency_p50_ms, point.latency_p95_ms = stats["latency_p50_ms"], stats["latency_p95_ms"]
    point.path_settings["shapes"] = sorted(f"{r}x{w}" for r, w in seen)


def _strings_point(point: Point, engine, runner: hf_paths.FastRunner, texts: Sequence[str], rung: Rung,
                   setup: RungSetup, tokens: Point) -> None:
    """The same rung from strings: batches tokenized and laid out by the pipeline's workers while the
    device runs the previous one. Bucketed batches are sorted by character length (known before
    tokenizing, as in a deployment); packed batches are sent PACK_FILL of a batch's token capacity."""
    point.overlapped = True
    point.path_settings.update(tokenize_mode=setup.tokenize_mode, tokenize_workers=setup.tokenize_workers)
    pad = engine.tokenizer.pad_token_id or 0
    if rung.path == "bucketed":
        size = setup.batch_size
        layout = functools.partial(_bucket_one, buckets=setup.buckets, max_length=setup.max_length, rows=size, pad=pad)
        order, lengths = "length_sorted", [len(t) for t in texts]
    else:
        mean = tokens.timed_tokens_per_text or setup.mean_tokens
        size = max(1, int(_rows(setup) * setup.pack_width * PACK_FILL / mean))
        layout = functools.partial(hf_paths.pack_all, rows=_rows(setup), width=setup.pack_width, pad_id=pad)
        order, lengths = "dataset", [0] * len(texts)
    batches = [[texts[i] for i in rows] for rows in batch_indices(lengths, size, setup.total, order)]
    task = pretokenize.Tokenize(engine.tokenizer_source, setup.max_length, layout)
    consume = runner if rung.path == "bucketed" else (lambda layouts: [runner(one) for one in layouts])
    with pretokenize.Pipeline(task, setup.tokenize_mode, setup.tokenize_workers) as pipeline:
        pipeline.warm(batches[0])
        consume(task(batches[0]))  # warm: a spilled packed batch's shape is the same, compiled already
        with tracked(point):
            start = time.perf_counter_ns()
            pretokenize.feed(pipeline, batches, [consume])
            elapsed = time.perf_counter_ns() - start
    point.texts, point.seconds = sum(len(b) for b in batches), elapsed / 1e9
    point.texts_per_s, point.batch_size = point.texts / point.seconds, size
    point.compile_s, point.timed_tokens_per_text = tokens.compile_s, tokens.timed_tokens_per_text


def _bucket_one(ids: list[list[int]], *, buckets: Sequence[int], max_length: int, rows: int, pad: int) -> hf_paths.Layout:
    return hf_paths.bucketed(ids, buckets, max_length, rows, pad)


def _release(rung: Rung, device: str) -> None:
    """Between rungs: drop dynamo's compiled frames (every rung compiles the same forward function, and
    its guards would pile up to the recompile limit; inductor's disk cache is kept), and give the
    device back what the rung's graphs, activations or failed attempt held before the next one."""
    import gc

    import torch

    if rung.compile:
        torch._dynamo.reset()
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
