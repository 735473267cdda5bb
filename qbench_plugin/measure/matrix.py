"""The session's latency matrix: every selected (config, batch size), timed once in interleaved rounds.

The first latency test that asks for its case triggers the whole matrix (rounds.py) over the engines
the pool holds; every latency test then reports its own case (pytest-benchmark entry, gates). When
not every engine could be resident at once, each group of engines that could is interleaved within
itself, and the groups run in an A B A order: the first group's rounds are split in halves around the
others (its engines restarted for the second half), so drift that grows over the run hits the first
group and the rest alike on average. The run records the groups, the order and why.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import numpy as np

from qbench_plugin.measure.measure import latency_stats
from qbench_plugin.measure.pinning import pinned
from qbench_plugin.measure.pool import EnginePool
from qbench_plugin.engines.memory import engine_pids
from qbench_plugin.measure.starts import config_of, extra_engines, fold
from qbench_plugin.stats.probe import HostProbe, record_round
from qbench_plugin.measure.rounds import Case, CaseTiming, RoundPlan, RoundsInterrupted, run_rounds
from qbench_plugin.record.run import CaseRecord, RunStore
from qbench_plugin.stats.uncertainty import Timed, case_intervals


MEMORY_READINGS = 25  # per config and group; each costs a page-table walk of the engine's processes


@contextmanager
def _adds(totals: dict, key: str) -> Iterator[None]:
    """Adds the block's wall time to totals[key]: what the rounds spent outside the timed calls."""
    began = time.perf_counter()
    try:
        yield
    finally:
        totals[key] += time.perf_counter() - began  # unrounded: a cheap reading takes well under 1 ms


def _switch_cost(design: dict, timings: dict[Case, CaseTiming], visit: str) -> None:
    """Each case's untimed first call of a block over its timed calls (medians): near 1, switching
    engines costs nothing the untimed call needed to absorb; above 1, it kept that cost out of the samples."""
    out = design.setdefault("switch_over_timed", {})
    for t in timings.values():
        if t.switch_ns and t.samples_ns:
            out[f"{t.config}@{t.batch_size}{visit}"] = round(float(np.median(t.switch_ns) / np.median(t.samples_ns)), 3)


class Matrix:
    def __init__(self, pool: EnginePool, cases: Sequence[Case], texts: Sequence[str], plan: RoundPlan,
                 store: RunStore, *, is_out_of_memory: Callable[[BaseException], bool],
                 progress: Callable[[str], None] = lambda line: None, token_counts: Sequence[int] | None = None,
                 pin_cores: bool = False, starts: int = 1):
        self.pool, self.cases, self.texts, self.plan = pool, list(dict.fromkeys(cases)), list(texts), plan
        self.token_counts = token_counts  # per text: each case's MFU counts the tokens it timed
        self.store, self.is_out_of_memory, self.progress = store, is_out_of_memory, progress
        self.timings: dict[Case, CaseTiming] | None = None
        self._all_measured = False
        self._probe: HostProbe | None = None
        self.pin_cores = pin_cores
        self.starts = starts  # engines of each config timed in the rounds (starts.py)

    def timing(self, case: Case) -> CaseTiming | None:
        """The case's timing; the first call measures every case (interleaved), or with
        --qbench-interleave off every case of the asked config (its engine alone)."""
        if self.timings is None:
            self.timings = {}
            design = self.store.measurement
            design.update(self.plan.as_dict(), groups=[], orders=[], seconds=0.0, device=self.pool.device_name,
                          design="interleaved rounds" if self.pool.co_resident else "one config at a time, in rounds")
        measured = self._all_measured if self.pool.co_resident else any(c[0] == case[0] for c in self.timings)
        if case not in self.timings and not measured:
            began = time.perf_counter()
            try:
                if self.pool.co_resident:
                    self._all_measured = True
                    self._measure_groups()
                else:
                    self.pool.get(self.pool.members[case[0]].config)
                    self._measure_group([c for c in self.cases if c[0] == case[0]], [case[0]])
            finally:  # an interrupted matrix still says how long its finished rounds took
                design = self.store.measurement
                design["not_resident"] = dict(self.pool.group_reasons)
                design["seconds"] = round(design["seconds"] + time.perf_counter() - began, 3)
                self.store.save()
        return self.timings.get(case)

    def _measure_groups(self) -> None:
        first = self.pool.start()
        first_cases = [c for c in self.cases if c[0] in first and c not in self.timings]

        def waiting() -> list[str]:
            names = self.pool.waiting()
            return names if any(c[0] in names for c in self.cases) else []

        if not waiting():
            self._measure_group(first_cases, first)
            return
        half, visits = self.plan.rounds // 2, self.store.measurement.setdefault("visits", [])
        self._measure_group(first_cases, first, range(half))
        visits.append(f"group 1, rounds 1-{half}")
        while waiting():
            names = waiting()
            self.pool.close_all(f"closed after its group's rounds, to start {', '.join(names)}")
            resident = self.pool.start(names)
            self._measure_group([c for c in self.cases if c[0] in resident and c not in self.timings], resident)
            visits.append(f"group {len(self.store.measurement['groups'])}, rounds 1-{self.plan.rounds}")
        self.pool.close_all("closed to restart the first group for its second half of rounds")
        again = self.pool.reopen(first)
        self._record(self.timings[c] for c in first_cases if c[0] not in again)  # could not restart: first half only
        self._measure_group([c for c in first_cases if c[0] in again], again, range(half, self.plan.rounds), group=0)
        visits.append(f"group 1 again (restarted), rounds {half + 1}-{self.plan.rounds}")

    def _measure_group(self, todo: list[Case], resident: list[str], rounds: range | None = None,
                       group: int | None = None) -> None:
        if not todo:
            return
        names = sorted({c[0] for c in todo})
        starts = self.store.measurement.setdefault("starts", {"count": self.starts}) if self.starts > 1 else None
        if starts is not None:  # in-process engines' memory is this process's growth, which extra starts inflate
            shared = [n for n in names if not self.pool.members[n].memory.pids]
            self.pool.sample_memory(shared)
            starts["memory_before_extras"] = sorted(set(starts.get("memory_before_extras", [])) | set(shared))
        with extra_engines(self.pool, names, self.starts, self.progress) as extra:
            self._time_group(todo, resident, rounds, group, extra, starts)

    def _time_group(self, todo: list[Case], resident: list[str], rounds: range | None, group: int | None,
                    extra: dict, starts: dict | None) -> None:
        design = self.store.measurement
        cases = list(todo) + [(label, bs) for label in extra for config, bs in todo if config == config_of(label)]
        if group is None:
            group = len(design["groups"])
            design["groups"].append(sorted({c[0] for c in todo}))
            design["orders"].append([[f"{c[0]}@{c[1]}" for c in order] for order in self.plan.orders(cases)])
        parked = self.pool.park_neighbours()
        if parked:
            design.setdefault("neighbours", {}).update(parked)
        self.progress(f"qbench: timing {len(todo)} cases in {self.plan.rounds} rounds of {self.plan.block} "
                      f"batches each, order shuffled per round (seed {self.plan.seed})")
        if self._probe is None:
            self._probe = HostProbe(cuda=self.pool.device == "cuda")
            design["host_probe"] = {}

        overhead = design.setdefault("overhead_s", {"memory": 0.0, "host_probe": 0.0, "save": 0.0})
        now = {"round": rounds.start if rounds is not None else 0}

        def after_round(index: int) -> None:
            design["rounds_done"], now["round"] = index + 1, index + 1
            with _adds(overhead, "host_probe"):
                record_round(design["host_probe"], self._probe, index)  # after the round: no engine is working
            with _adds(overhead, "save"):
                self.store.save()

        # A config's memory is read after its largest batch's block (where its peak is), in about
        # MEMORY_READINGS rounds spread over the run and the last: reading a vLLM engine walks its
        # processes' page tables (50-130 ms on a 2-core CPU; after every block that cost ~12 s of a
        # default CPU run, and once a round ~0.6 s a round of an H200 run with three vLLM engines).
        largest = {config: max(bs for c, bs in todo if c == config) for config, _ in todo}
        every = max(1, self.plan.rounds // MEMORY_READINGS)
        shared = set((starts or {}).get("memory_before_extras") or []) if extra else set()

        def between_blocks(case: tuple[str, int]) -> None:
            if now["round"] % every and now["round"] != self.plan.rounds - 1:
                return
            if case[1] == largest.get(case[0]) and case[0] not in shared:  # an extra start's memory is not its config's
                with _adds(overhead, "memory"):
                    self.pool.sample_memory([case[0]])

        placement = design.setdefault("pinning", [])
        placement.append({"group": group})
        engines = {**{n: self.pool.members[n].engine for n in resident}, **extra}
        visit = f" (rounds {rounds.start + 1}-{rounds.stop})" if rounds is not None and rounds.start > 0 else ""
        pids = {**{n: self.pool.members[n].memory.pids for n in resident},
                **{label: engine_pids(engine) for label, engine in extra.items()}}
        try:
            with pinned(pids, placement[-1], off=self._pin_off()):
                found = run_rounds(engines, cases, self.texts, self.plan,
                                   is_out_of_memory=self.is_out_of_memory, group=group, after_round=after_round,
                                   between_blocks=between_blocks, progress=self.progress,
                                   rounds=rounds, token_counts=self.token_counts)
            _switch_cost(design, found, visit)
        except RoundsInterrupted as stopped:
            _switch_cost(design, stopped.timings, visit)
            design["interrupted"] = f"{stopped.how} after {stopped.rounds_done} of {self.plan.rounds} rounds"
            timings = fold(stopped.timings, starts, visit) if starts is not None else stopped.timings
            self._record(self._merged(timings).values(), status="partial")  # whole rounds are kept
            raise
        found = self._merged(fold(found, starts, visit) if starts is not None else found)
        self.timings.update(found)
        if rounds is None or rounds.stop == self.plan.rounds:  # a first half waits for its second
            self._record(found.values())

    def _pin_off(self) -> str | None:
        if not self.pin_cores:
            return "off (--qbench-pin-cores off)"
        if self.pool.device != "cuda":
            return "not pinned on a CPU run (in-process engines bind their own OpenMP threads)"
        return None

    def _merged(self, found: dict[Case, CaseTiming]) -> dict[Case, CaseTiming]:
        """A second visit's samples appended to the first's (the first group's halves)."""
        for case, timing in found.items():
            before = self.timings.get(case)
            if before is not None and before is not timing:
                timing.samples_ns[:0], timing.rounds[:0] = before.samples_ns, before.rounds
                timing.tokens[:0] = before.tokens
                timing.error = timing.error or before.error
        return found

    def _record(self, timings, status: str = "passed") -> None:
        for t in timings:
            if t.out_of_memory:
                self.store.out_of_memory[t.config] = (t.batch_size, t.error or "out of memory")
            if not t.samples_ns or t.error:
                continue
            stats = latency_stats(t.samples_ns, t.batch_size)
            if t.tokens and len(t.tokens) == len(t.samples_ns):
                stats["timed_tokens_per_text"] = sum(t.tokens) / (len(t.samples_ns) * t.batch_size)
            intervals = case_intervals(Timed.of(t.samples_ns, t.batch_size, t.rounds))
            self.store.cases.append(CaseRecord(config=t.config, batch_size=t.batch_size, metrics=stats,
                                               samples_ns=list(t.samples_ns), sample_rounds=list(t.rounds),
                                               intervals=intervals, group=t.group, status=status))
        self.store.save()
