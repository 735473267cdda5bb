"""The measurements a benchmark test makes, wired into pytest-benchmark's pedantic mode."""
from __future__ import annotations

import itertools
import os
import time
from typing import Any, Callable

import numpy as np
import pytest

from qbench_plugin.dataset.embedded import default_cache_dir
from qbench_plugin.measure import ceiling, hf_rungs
from qbench_plugin.measure.overlapped import overlapped_point
from qbench_plugin.measure.replica_processes import process_replica_points
from qbench_plugin.dataset.dataset import EvalSet
from qbench_plugin.engines.engine import Engine
from qbench_plugin.measure.measure import (LatencyRecorder, baseline_comparison, classification_metrics, latency_stats,
                                           make_batches)
from qbench_plugin.options import Settings
from qbench_plugin.measure.rounds import CaseTiming
from qbench_plugin.record.run import CaseRecord, RunStore


def measure_latency(benchmark, engine: Engine, texts: list[str], batch_size: int, *, samples: int, warmup: int,
                    store: RunStore, config: str, record: bool = True,
                    before_each: Callable[[list[str]], None] | None = None) -> dict[str, float]:
    """Time `samples` batches of `batch_size` texts after `warmup` untimed ones.

    Tokenization is inside the timed region: a batch goes in as strings, as a user's request would.
    `record=False` keeps the case out of the run's matrix (for measurements about the suite itself);
    `before_each(batch)` runs untimed before every call (warm-up ones included) on the batch it gets."""
    if benchmark.disabled:  # pedantic would call the target once, with no warm-up and no timed batches
        pytest.skip("--benchmark-disable: pytest-benchmark calls the target once, untimed, so there are no "
                    "timed batches to measure latency from")
    smaller = store.out_of_memory.get(config)
    if smaller is not None and batch_size > smaller[0]:
        pytest.skip(f"config {config}: batch size {batch_size} not run: batch size {smaller[0]} ran out of "
                    f"memory ({smaller[1]})")
    batches = make_batches(texts, batch_size, samples + warmup)
    feed = itertools.cycle(batches)
    recorder = LatencyRecorder(engine.classify)
    benchmark.group = config

    def setup() -> tuple[tuple, dict]:
        batch = next(feed)
        if before_each is not None:
            before_each(batch)
        return (batch,), {}

    try:
        benchmark.pedantic(recorder, setup=setup, rounds=samples, warmup_rounds=warmup, iterations=1)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        store.out_of_memory[config] = (batch_size, f"{type(exc).__name__}: {exc}"[:300])
        store.save()
        pytest.fail(f"config {config}: batch size {batch_size} ran out of memory: {type(exc).__name__}: {exc}",
                    pytrace=False)
    timed = recorder.samples_ns[warmup:]
    stats = latency_stats(timed, batch_size)
    benchmark.extra_info.update(
        kind="latency" if record else "suite", config=config, engine=engine.name, batch_size=batch_size, warmup_batches=warmup,
        tokenization_in_timed_region=True, latency_samples_ns=timed, **stats,
    )
    if record:
        store.add_case(CaseRecord(config=config, batch_size=batch_size, metrics=stats, samples_ns=list(timed)))
    return stats


def report_case(benchmark, timing: CaseTiming | None, *, store: RunStore, engine: str) -> dict[str, float]:
    """One matrix case (timed in the interleaved rounds) as this test's pytest-benchmark entry: every
    sample goes into its stats, so `pytest-benchmark compare` and --benchmark-compare-fail see them."""
    if timing is None:
        pytest.skip("case not in the session's matrix (its config did not start)")
    config, batch_size = timing.config, timing.batch_size
    benchmark.group = config
    if timing.error:
        pytest.fail(f"config {config}: batch size {batch_size}: {timing.error}", pytrace=False)
    case = next(c for c in store.cases if (c.config, c.batch_size) == (config, batch_size))
    if not benchmark.disabled:
        stats = benchmark._make_stats(1)  # pytest-benchmark's own store for one entry's durations
        benchmark._mode = "qbench interleaved rounds"
        for ns in timing.samples_ns:
            stats.update(ns / 1e9)
    benchmark.extra_info.update(
        kind="latency", config=config, engine=engine, batch_size=batch_size, tokenization_in_timed_region=True,
        latency_samples_ns=list(timing.samples_ns), latency_sample_rounds=list(timing.rounds),
        intervals=case.intervals, group=timing.group, **case.metrics)
    return case.metrics


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA, host and vLLM out-of-memory errors, recognised by type or message."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return "out of memory" in str(exc).lower()


def predict(engine: Engine, texts: list[str], batch_size: int) -> np.ndarray:
    """Probabilities for all texts, in batches."""
    parts = [engine.classify(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    return np.concatenate(parts, axis=0)


def measure_accuracy(benchmark, engine: Engine, eval_set: EvalSet, batch_size: int, *, store: RunStore,
                     config: str) -> dict[str, Any]:
    """Classify the whole split once (timed as one round) and score it against the labels."""
    benchmark.group = config
    began = time.perf_counter_ns()
    probs = benchmark.pedantic(predict, args=(engine, eval_set.texts, batch_size), rounds=1, iterations=1)
    if benchmark.disabled:  # pytest-benchmark kept no time (under xdist it is off): qbench keeps its own
        benchmark.extra_info["pass_ns"] = [time.perf_counter_ns() - began]
    if probs.shape != (len(eval_set.texts), len(eval_set.labels)):
        raise AssertionError(f"engine returned probabilities of shape {probs.shape}, expected "
                             f"({len(eval_set.texts)}, {len(eval_set.labels)})")
    preds = probs.argmax(axis=1)
    scores = classification_metrics(eval_set.label_ids, preds, len(eval_set.labels))
    record = store.config(config)
    record.metrics.update(scores)
    record.predictions, record.probabilities = preds, probs
    base = store.baseline()
    if base is not None and base is not record:
        scores.update(baseline_comparison(probs, scores, base.probabilities, base.metrics))
        scores["baseline"] = base.name
        record.metrics.update({k: v for k, v in scores.items() if k != "baseline"})
        record.info["baseline"] = base.name
    benchmark.extra_info.update(kind="accuracy", config=config, engine=engine.name, batch_size=batch_size,
                                rows=len(eval_set.texts), split=eval_set.split, **scores)
    store.save()
    return scores


def measure_ceiling(benchmark, engine: Engine, texts: list[str], *, settings: Settings, store: RunStore,
                    config: str) -> list[ceiling.Point]:
    """The tokenizer alone, then batch sizes raised until throughput saturates, from strings and from
    tokens (HF also length-sorted), then each engine-settings variant and replica count.

    Closes `engine` once its own sweep is done: variants and replicas need its memory. pytest runs
    this module last among a config's tests (file order), so no later test of the config needs it."""
    benchmark.group = config
    points: list[ceiling.Point] = []

    def run() -> list[ceiling.Point]:
        tokenizer = engine.tokenizer
        lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=settings.max_model_len)["input_ids"]]
        sizes = ceiling.sweep_batch_sizes(max(settings.batch_sizes), settings.sweep_max_batch)
        orders = ("dataset", "length_sorted") if engine.name == "hf" else ("dataset",)
        common = dict(config=config, is_out_of_memory=is_out_of_memory)
        points.extend(ceiling.sweep(engine, texts, lengths, sizes, settings.sweep_texts,
                                    inputs=(ceiling.STRINGS, ceiling.TOKENS), orders=orders, **common))
        top = ceiling.best(points) or ceiling.Point(config, engine.name, "engine", ceiling.TOKENS, sizes[0])
        points.extend(ceiling.tokenizer_points(tokenizer, texts, top.batch_size, settings.sweep_texts,
                                               settings.max_model_len, config, engine.name))
        store.ceiling.extend(p.as_dict() for p in points)
        store.save()

        def keep(found: ceiling.Point) -> None:  # every point saved as it lands: a crash keeps the ones before
            points.append(found)
            store.ceiling.append(found.as_dict())
            store.save()

        mode, workers = settings.sweep_tokenize, _tokenize_workers(settings)
        tokens_top = ceiling.best([p for p in points if p.input == ceiling.TOKENS]) or top
        if engine.name == "hf":
            for found in hf_rungs.rung_points(engine, texts, lengths, _hf_rungs(settings, engine.device),
                                              _rung_setup(settings, engine.device, tokens_top, lengths, config),
                                              is_out_of_memory=is_out_of_memory):
                keep(found)
        elif mode != "off":
            keep(overlapped_point([engine], texts, tokens_top.batch_size, settings.sweep_texts, config=config, mode=mode,
                                  workers=workers, is_out_of_memory=is_out_of_memory))
        variants = settings.sweep_engine_settings if engine.name == "vllm" else ()
        if not variants and not settings.sweep_replicas:
            return points
        engine.close()
        for found in ceiling.variant_ladder(engine, variants, texts, lengths, sizes, settings.sweep_texts, points,
                                            **common):
            keep(found)
        # replicas at the best padded point (the fast HF paths have no replicas; vLLM's points are all padded)
        top = ceiling.best([p for p in points if p.path == "padded" and not p.overlapped])
        for count in settings.sweep_replicas if top is not None else ():
            def strings_in(replicas, top=top):  # the same replicas from strings, one tokenizer pipeline feeding them
                return overlapped_point(replicas, texts, top.batch_size, settings.sweep_texts, config=config,
                                        mode=mode, workers=workers, settings=ceiling.replica_settings(engine, top),
                                        is_out_of_memory=is_out_of_memory)

            if "threads" in settings.sweep_replica_feed:
                also = strings_in if engine.name == "vllm" and mode != "off" else None
                found = ceiling.replica_point(engine, count, top, texts, lengths, settings.sweep_texts, config=config,
                                              also=also)
                for one in found if isinstance(found, list) else [found]:
                    keep(one)
            if "processes" in settings.sweep_replica_feed and engine.name == "vllm":
                for one in process_replica_points(engine, count, top, texts, lengths, settings.sweep_texts, config=config):
                    keep(one)
        if top is not None and settings.sweep_replicas and settings.sweep_replica_feed == ("processes",) \
                and engine.name != "vllm":
            # an HF replica has no settings another process could start it from: one point says so, not one a count
            keep(process_replica_points(engine, settings.sweep_replicas[0], top, texts, lengths, settings.sweep_texts,
                                        config=config)[0])
        return points

    benchmark.pedantic(run, rounds=1, iterations=1)
    top = ceiling.best(points)
    benchmark.extra_info.update(kind="saturation", config=config, engine=engine.name,
                                points=[p.as_dict() for p in points],
                                best=top.as_dict() if top else None)
    return points


def _tokenize_workers(settings: Settings) -> int:
    """--qbench-sweep-tokenize-workers, 0 meaning half the CPUs (the engine's own processes want the rest), at most 8."""
    return settings.sweep_tokenize_workers or max(1, min(8, (os.cpu_count() or 2) // 2))


def _hf_rungs(settings: Settings, device: str) -> list[hf_rungs.Rung]:
    value = settings.sweep_hf_rungs
    return hf_rungs.parse_rungs(hf_rungs.DEFAULT_RUNGS.get(device, hf_rungs.DEFAULT_RUNGS["cpu"]) if value == "auto" else value)


def _rung_setup(settings: Settings, device: str, top: ceiling.Point, lengths: list[int], config: str) -> hf_rungs.RungSetup:
    mode = settings.sweep_compile_mode
    return hf_rungs.RungSetup(
        config=config, device=device, batch_size=top.batch_size, total=settings.sweep_texts,
        max_length=settings.max_model_len, buckets=settings.sweep_buckets, pack_width=settings.sweep_pack_width,
        pack_texts=settings.sweep_pack_texts or top.batch_size,
        compile_mode=hf_rungs.DEFAULT_COMPILE_MODE.get(device, "default") if mode == "auto" else mode,
        cache_dir=hf_rungs.compile_cache(settings.cache_dir or default_cache_dir()),
        mean_tokens=sum(lengths) / max(1, len(lengths)),
        tokenize_mode=None if settings.sweep_tokenize == "off" else settings.sweep_tokenize,
        tokenize_workers=_tokenize_workers(settings))
