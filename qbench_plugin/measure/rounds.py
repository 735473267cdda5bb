"""Interleaved rounds: the latency matrix timed so that drift hits every config alike.

A machine's speed drifts over seconds to minutes (H200: consecutive 50-call blocks of one engine at
944, 1,344, 1,468 and 1,405 texts/s). Timing configs one after another confounds that drift with the
config. Instead, every resident engine stays up, and each of R rounds times a short block of every
(config, batch size) in a fresh random order, seeded and recorded (google/benchmark's random
interleaving; asv's rounds). Each block starts with one untimed call, so the switch from another
engine is not inside the timed region; the garbage collector is off inside a block and memory is
read between blocks (when, is the caller's choice), never during one. Every sample keeps its round index, which is where the
intervals come from (uncertainty.py), and, when the split's token counts are known, the tokens of the
texts it timed (MFU counts what was timed, not the split's mean).

Texts are fed in one fixed shuffled order of the split (ROW_ORDER_SEED, the same for every run and
batch size): in file order a small batch size would time only the first rows, which in a file sorted
by label are one intent's texts, while a large one cycles through all of them.
"""
from __future__ import annotations

import gc
import itertools
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Sequence

import numpy as np

from qbench_plugin.engines.engine import Engine
from qbench_plugin.measure.measure import make_batches

Case = tuple[str, int]  # (config, batch size)
MIN_ROUNDS = 2
# `--qbench-rounds auto`: the most batches a block holds, by device. On an H200 the batches of one
# block are alike (intra-block correlation 0.7-0.8 at bs 32: the host's state lasts about a block,
# not from one engine's block to the next, 0.27-0.32), so a block of 3 tells little more than one
# batch; at the same 300 batches a case, blocks of 1 halved the bs-32 ratios' standard error (2.2-2.8%
# to 1.3-1.5%). On the 2-core CPU the correlation is 0.2-0.5, and a block's untimed call costs more.
AUTO_BLOCK = {"cuda": 1, "cpu": 5}
AUTO_MIN_ROUNDS = 10  # auto keeps at least this many rounds where the samples allow (gates want 5 or more)
ROW_ORDER_SEED = 0  # fixed, not the run's seed: runs compared with each other time the same rows


def row_order(rows: int) -> list[int]:
    """The order in which every case draws the split's rows: one seeded permutation."""
    return [int(i) for i in np.random.default_rng(ROW_ORDER_SEED).permutation(rows)]


@dataclass(frozen=True)
class RoundPlan:
    rounds: int
    block: int  # timed batches per case per round
    warmup: int  # untimed batches per case before the first round
    seed: int
    # then one untimed call per distinct shape of the batches the rounds will time (CPU): without it the
    # first case of a batch size in each early round paid for the round's new shapes, as if CPU kernels
    # were built per shape on first use and shared by the process's engines (on the 2-core CPU, rounds
    # 0-4: 1.47x its median against 0.84x for the cases after it; none after round 15; none on an H200)
    every_shape: bool = False

    @classmethod
    def from_samples(cls, samples: int, rounds: int, warmup: int, seed: int) -> "RoundPlan":
        """`samples` timed batches per case, split evenly over `rounds`; the message names the option."""
        if rounds < MIN_ROUNDS:
            raise ValueError(f"--qbench-rounds {rounds}: at least {MIN_ROUNDS} rounds are needed to tell drift from a difference")
        if samples % rounds or samples < rounds:
            raise ValueError(f"--qbench-samples {samples} does not split into --qbench-rounds {rounds} equal blocks of at "
                             f"least one batch; use a multiple of {rounds}")
        return cls(rounds=rounds, block=samples // rounds, warmup=warmup, seed=seed)

    @classmethod
    def auto(cls, samples: int, device: str, warmup: int, seed: int) -> "RoundPlan":
        """`--qbench-rounds auto`: the longest block of at most AUTO_BLOCK[device] batches that divides
        `samples` and leaves AUTO_MIN_ROUNDS rounds (or one batch a round, with fewer samples)."""
        if samples < MIN_ROUNDS:
            raise ValueError(f"--qbench-samples {samples} is too few for --qbench-rounds auto (at least "
                             f"{MIN_ROUNDS} rounds of one batch); give at least {MIN_ROUNDS}")
        fits = [b for b in range(1, AUTO_BLOCK.get(device, AUTO_BLOCK["cpu"]) + 1)
                if samples % b == 0 and samples // b >= min(AUTO_MIN_ROUNDS, samples)]
        return cls.from_samples(samples, samples // max(fits), warmup, seed)

    @classmethod
    def of(cls, samples: int, rounds: int | None, device: str, warmup: int, seed: int) -> "RoundPlan":
        """The plan `--qbench-rounds` asks for: None is auto (by device), a number splits `samples` evenly."""
        plan = (cls.auto(samples, device, warmup, seed) if rounds is None
                else cls.from_samples(samples, rounds, warmup, seed))
        return replace(plan, every_shape=device == "cpu")

    def orders(self, cases: Sequence[Case]) -> list[list[Case]]:
        """Each round's order of cases: a fresh permutation per round, reproducible from the seed."""
        rng = np.random.default_rng(self.seed)
        return [[cases[i] for i in rng.permutation(len(cases))] for _ in range(self.rounds)]

    def as_dict(self) -> dict:
        return {"rounds": self.rounds, "block": self.block, "warmup": self.warmup, "seed": self.seed,
                "warmup_every_shape": self.every_shape}


@dataclass
class CaseTiming:
    config: str
    batch_size: int
    samples_ns: list[int] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)  # round index of each sample
    tokens: list[int] = field(default_factory=list)  # tokens of each sample's texts (when counts are known)
    group: int = 0
    switch_ns: list[int] = field(default_factory=list)  # each block's untimed first call, kept to tell its cost
    error: str | None = None  # why the case stopped (its samples so far are kept)
    out_of_memory: bool = False


def run_rounds(engines: Mapping[str, Engine], cases: Sequence[Case], texts: Sequence[str], plan: RoundPlan, *,
               is_out_of_memory: Callable[[BaseException], bool], group: int = 0,
               between_blocks: Callable[[Case], None] = lambda case: None,
               after_round: Callable[[int], None] = lambda index: None,
               progress: Callable[[str], None] = lambda line: None,
               rounds: range | None = None, token_counts: Sequence[int] | None = None) -> dict[Case, CaseTiming]:
    """Time every case in `plan.rounds` interleaved rounds (or only the round indices in `rounds`,
    each with its own order from the plan); a case that raises stops alone (an
    out-of-memory one also stops its config's larger batch sizes). Ctrl-C keeps the rounds that
    finished: it raises RoundsInterrupted carrying every case's samples up to the last whole round.
    `token_counts` (per text of `texts`) lets each timed sample record its tokens."""
    timings = {case: CaseTiming(*case, group=group) for case in cases}
    order = row_order(len(texts))
    batches = {size: make_batches(order, size, plan.warmup + plan.rounds * (plan.block + 1)) for _, size in cases}
    feeds = {case: itertools.cycle(batches[case[1]]) for case in cases}
    stopped: set[Case] = set()
    last_rows: dict[Case, list[int]] = {}

    def stop(case: Case, exc: BaseException) -> None:
        timing = timings[case]
        timing.error = f"{type(exc).__name__}: {exc}"[:500]
        timing.out_of_memory = is_out_of_memory(exc)
        stopped.add(case)
        if timing.out_of_memory:
            for other in cases:
                if other[0] == case[0] and other[1] > case[1] and other not in stopped:
                    timings[other].error = f"not run: batch size {case[1]} ran out of memory"
                    stopped.add(other)

    def call(case: Case) -> int:
        rows = last_rows[case] = next(feeds[case])
        batch = [texts[i] for i in rows]
        start = time.perf_counter_ns()
        engines[case[0]].classify(batch)
        return time.perf_counter_ns() - start

    shapes = {size: _distinct_shapes(rows[plan.warmup:], token_counts) if plan.every_shape else []
              for size, rows in batches.items()}
    if plan.every_shape:
        progress(f"qbench: warming every batch shape the rounds will time, untimed "
                 f"({sum(len(shapes[size]) for _, size in cases)} calls)")
    for case in cases:  # warm-up once per case, before any round
        if case in stopped:
            continue
        try:
            for _ in range(plan.warmup):
                call(case)
            for rows in shapes[case[1]]:
                engines[case[0]].classify([texts[i] for i in rows])
        except Exception as exc:  # noqa: BLE001
            stop(case, exc)
    # Everything alive now (engines, models, vLLM's own objects: 400k on import alone) is moved out of
    # the collector's reach for the rounds: the full collection after each round then scans only what
    # the rounds made (1.5 ms instead of 260-300 ms here; on the H200 about 0.3 s of each 1.7-s round).
    # An in-process vLLM engine core froze the heap itself (CPU runs): that freeze is left as found
    was_frozen = gc.get_freeze_count() > 0
    gc.collect()
    gc.freeze()
    began = time.perf_counter()
    try:
        def timed(case: Case) -> tuple[int, int | None]:
            took = call(case)  # the sum below is outside the timed region
            return took, None if token_counts is None else sum(token_counts[i] for i in last_rows[case])

        _rounds(plan, cases, timings, stopped, call, timed, stop, between_blocks, after_round, progress, began,
                range(plan.rounds) if rounds is None else rounds)
    except KeyboardInterrupt as exc:
        done = min((max(t.rounds) + 1 if t.rounds else 0) for t in timings.values() if t.error is None) \
            if any(t.error is None for t in timings.values()) else 0
        for t in timings.values():  # a round cut short is dropped for every case, so all keep equal rounds
            keep = [i for i, r in enumerate(t.rounds) if r < done]
            t.samples_ns, t.rounds = [t.samples_ns[i] for i in keep], [t.rounds[i] for i in keep]
            t.tokens = [t.tokens[i] for i in keep if i < len(t.tokens)]
        raise RoundsInterrupted(timings, done, how="SIGTERM" if "SIGTERM" in str(exc) else "Ctrl-C") from None
    finally:
        if not was_frozen:
            gc.unfreeze()
    return timings


def _distinct_shapes(batches: Sequence[list[int]], token_counts: Sequence[int] | None) -> list[list[int]]:
    """One batch of each shape among `batches`: its texts' token counts, sorted (every batch where they
    are not known)."""
    if token_counts is None:
        return list(batches)
    return list({tuple(sorted(token_counts[i] for i in rows)): rows for rows in batches}.values())


class RoundsInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, which status.py turns into the same KeyboardInterrupt, naming it) during the
    rounds, with what the finished rounds measured."""

    def __init__(self, timings: dict[Case, CaseTiming], rounds_done: int, how: str = "Ctrl-C"):
        super().__init__(f"interrupted ({how}) after {rounds_done} whole rounds")
        self.timings, self.rounds_done, self.how = timings, rounds_done, how


def _rounds(plan, cases, timings, stopped, call, timed, stop, between_blocks, after_round, progress, began,
            which) -> None:
    for index, order in enumerate(plan.orders(list(cases))):
        if index not in which:
            continue
        for case in order:
            if case in stopped:
                continue
            timing = timings[case]
            try:
                switch = call(case)  # outside the samples: the first call after another engine ran
                gc_was_on = gc.isenabled()
                gc.disable()
                try:
                    block = [timed(case) for _ in range(plan.block)]
                finally:
                    if gc_was_on:
                        gc.enable()
            except Exception as exc:  # noqa: BLE001  (a failing case fails alone)
                stop(case, exc)
                continue
            timing.switch_ns.append(switch)
            timing.samples_ns.extend(ns for ns, _ in block)
            timing.rounds.extend([index] * len(block))
            timing.tokens.extend(tokens for _, tokens in block if tokens is not None)
            between_blocks(case)
        gc.collect()
        after_round(index)
        progress(f"qbench: round {index + 1}/{plan.rounds} done ({time.perf_counter() - began:.0f} s, "
                 f"{len(cases) - len(stopped)} cases)")
