"""More than one start of each config's engine in one session (`--qbench-engine-starts N`).

Why. Interleaved rounds average the drift inside a session, but every engine is started once per
session, and a start can land faster or slower for the whole session (where its memory and threads
ended up, what it compiled). No number of rounds averages that: on one H200 lease, two identical
sessions moved the bs-32 throughput ratios to fp16_baseline by 7-9% while each session's rounds put
them at 2-3% (results/examples/h200/aa/pinned-2026-12-03/). asv times each benchmark in two processes
by default for the same reason. With N starts, each config's matrix cases are timed on N engines,
interleaved in the same rounds (each start is a case of its own in every round's random order); the
case's samples pool all of them, and the run records each start's own throughput, so the spread
between starts is measured, not assumed.

The extra starts are started after the pool's group (so the config's cold start and memory are its
first start's), at the same GPU share (the pool sizes shares for N starts of every vLLM engine), and
closed after the group's rounds.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

from qbench_plugin.engines.engine import Engine, start_engine
from qbench_plugin.measure.measure import latency_stats
from qbench_plugin.measure.rounds import Case, CaseTiming
from qbench_plugin.stats.uncertainty import Timed, ratio_interval

SEP = "~start"  # an extra start's case name: "<config>~start2"; never a config name (preflight's names are plain)


def start_name(config: str, start: int) -> str:
    return f"{config}{SEP}{start}"


def config_of(name: str) -> str:
    return name.split(SEP)[0]


@contextmanager
def extra_engines(pool, names: Sequence[str], starts: int, progress=lambda line: None) -> Iterator[dict[str, Engine]]:
    """Starts 2..`starts` of these resident configs' engines, by start name, closed on exit (each
    close guarded; an engine is in the dict as soon as it answers, so Ctrl-C midway closes what
    started). Each start gets its config's first start's engine arguments (the same GPU share).
    Engines with processes of their own start concurrently, in-process ones one by one; a start
    that fails is left out (its config is then timed on fewer starts, which the record shows)."""
    engines: dict[str, Engine] = {}
    jobs = []
    for name in names if starts > 1 else ():
        spec, extra = pool.members[name].started
        jobs += [(start_name(name, k), spec, dict(extra)) for k in range(2, starts + 1)]

    def start(job) -> None:
        label, spec, extra = job
        progress(f"qbench: starting {label} (another engine of {config_of(label)})")
        try:
            engine = start_engine(spec, pool.labels, extra)
            engines[label] = engine  # before the warm-up: closed on exit whatever happens next
            engine.classify(["warm-up"])
        except Exception as exc:  # noqa: BLE001  (the config keeps its other starts)
            progress(f"qbench: {label} did not start: {type(exc).__name__}: {exc}"[:300])
            _close(engines.pop(label, None), label, progress)

    try:
        own = [j for j in jobs if not pool.in_process(j[1])]
        if own:
            with ThreadPoolExecutor(max_workers=len(own), thread_name_prefix="qbench-start") as workers:
                list(workers.map(start, own))
        for job in (j for j in jobs if j not in own):
            start(job)
        yield engines
    finally:
        for label in list(engines):
            _close(engines.pop(label), label, progress)


def _close(engine: Engine | None, label: str, progress) -> None:
    if engine is None:
        return
    try:
        engine.close()
    except Exception as exc:  # noqa: BLE001  (one failed close must not keep the others open)
        progress(f"qbench: closing {label} failed: {type(exc).__name__}: {exc}"[:300])


def fold(found: Mapping[Case, CaseTiming], record: dict, visit: str = "") -> dict[Case, CaseTiming]:
    """Every extra start's samples appended to its config's case (same round indices: a round's
    resample takes all starts' blocks of that round); each start's throughput (texts/s over its
    samples) into `record["by_case"]` under "<config>@<batch size><visit>", first start first, and
    each extra start's throughput over the first's, paired by round, with its 95% interval, into
    `record["ratio_to_first"]`: an interval that excludes 1 is a start effect beyond the rounds'
    noise. An extra start that stopped (an error, out of memory) is left out of its config's case,
    which it would otherwise fail, and named in `record["errors"]`."""
    out = {case: t for case, t in found.items() if SEP not in case[0]}
    by_case, ratios = record.setdefault("by_case", {}), record.setdefault("ratio_to_first", {})
    firsts = {case: Timed.of(t.samples_ns, t.batch_size, t.rounds) for case, t in out.items() if t.samples_ns}
    for base in out.values():
        by_case[f"{base.config}@{base.batch_size}{visit}"] = [_throughput(base)]
        ratios[f"{base.config}@{base.batch_size}{visit}"] = []
    for case, timing in sorted((c, t) for c, t in found.items() if SEP in c[0]):
        base = out.get((config_of(case[0]), case[1]))
        if base is None:
            continue
        if timing.error:
            record.setdefault("errors", {})[f"{case[0]}@{case[1]}{visit}"] = timing.error
            continue
        key = f"{base.config}@{base.batch_size}{visit}"
        by_case[key].append(_throughput(timing))
        first = firsts.get((base.config, base.batch_size))
        found_ratio = ratio_interval(Timed.of(timing.samples_ns, timing.batch_size, timing.rounds), first,
                                     "throughput_samples_per_s", paired=True) if first and timing.samples_ns else None
        ratios[key].append([round(x, 4) for x in found_ratio] if found_ratio else None)
        complete = base.tokens and len(base.tokens) == len(base.samples_ns) and len(timing.tokens) == len(timing.samples_ns)
        base.samples_ns += timing.samples_ns
        base.rounds += timing.rounds
        base.tokens = base.tokens + timing.tokens if complete else []
    return out


def _throughput(timing: CaseTiming) -> float | None:
    if not timing.samples_ns:
        return None
    return round(latency_stats(timing.samples_ns, timing.batch_size)["throughput_samples_per_s"], 3)
