"""Strings-in points with tokenization overlapped, for engines that take token ids (vLLM's
TokensPrompts): one engine, or several replicas on one device fed from one tokenizer pipeline.

The timed region runs from the first string batch handed to the pipeline to the last batch's
probabilities, so it holds every tokenization the device did not hide; set next to the tokens-in
point and the tokenizer alone, it says which of the three bounds the strings-in rate.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from qbench_plugin.engines.engine import tokens_prompts
from qbench_plugin.measure import pretokenize
from qbench_plugin.measure.ceiling import STRINGS, Point, batch_indices, tracked


def overlapped_point(engines: Sequence[Any], texts: Sequence[str], batch_size: int, total: int, *, config: str,
                     mode: str, workers: int, settings: dict[str, Any] | None = None,
                     is_out_of_memory: Callable[[BaseException], bool] = lambda exc: False) -> Point:
    """`engines` (vLLM: classify_encoded on TokensPrompts) fed batches of `batch_size` strings in dataset
    order, tokenized by `workers` pipeline workers; texts/s over the wall time. A failure is the point's
    error, not raised: the tokens-in points of the same engines are already recorded."""
    first = engines[0]
    point = Point(config, first.name, "engine", STRINGS, batch_size, replicas=len(engines), overlapped=True,
                  engine_settings=dict(settings or {}),
                  path_settings={"tokenize_mode": mode, "tokenize_workers": workers})
    rows = batch_indices([0] * len(texts), batch_size, total * len(engines), "dataset")
    batches = [[texts[i] for i in r] for r in rows]
    task = pretokenize.Tokenize(first.tokenizer_source, first.max_length, tokens_prompts)
    try:
        with pretokenize.Pipeline(task, mode, workers) as pipeline:
            pipeline.warm(batches[0])
            for engine in engines:
                engine.classify_encoded(task(batches[0]))  # warm-up, untimed
            with tracked(point):
                start = time.perf_counter_ns()
                pretokenize.feed(pipeline, batches, [e.classify_encoded for e in engines])
                elapsed = time.perf_counter_ns() - start
    except Exception as exc:  # noqa: BLE001
        kind = "out of memory" if is_out_of_memory(exc) else "failed"
        point.error = f"{kind}: {type(exc).__name__}: {exc}"[:300]
        return point
    point.texts, point.seconds = sum(len(b) for b in batches), elapsed / 1e9
    point.texts_per_s = point.texts / point.seconds
    return point
