"""A run's status: complete only when every selected test ran; partial, with the reason, otherwise.

The status has to be final before pytest-benchmark writes its JSON, which it does in the first part
of its own sessionfinish wrapper, so that `benchmark.json` says what `qbench.json` says: decided in
a sessionfinish wrapper that runs ahead of pytest-benchmark's (tryfirst).

Ctrl-C and SIGTERM (what a CI runner or `timeout` sends) keep what finished. A terminal's Ctrl-C
also reaches vLLM's engine processes, which may die first: the test in flight then fails with
EngineDeadError rather than KeyboardInterrupt, and pytest would go on to the next case. So the
handler also asks the session to stop after the current test, and marks the run partial before
pytest-html and the JSON are written at session finish. SIGTERM is turned into the same
KeyboardInterrupt, so pytest's own interrupt path writes every output and the report.
"""
from __future__ import annotations

import signal
import threading

import pytest

from qbench_plugin.record.run import RunStore

SIGNALS = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


class RunStatus:
    """Registered as a plugin for the session: signal handlers, the tests that ran, the final status."""

    def __init__(self, store: RunStore):
        self.store = store
        self.session: pytest.Session | None = None
        self.finished = 0  # tests whose run ended (passed, failed or skipped)
        self._previous: dict[int, object] = {}

    def _mark(self, reason: str) -> None:
        if self.store.status != "partial":  # the first reason is the cause; later ones are its echoes
            self.store.status, self.store.status_reason = "partial", reason

    def _on_signal(self, signum, frame) -> None:
        how = SIGNALS.get(signum, f"signal {signum}")
        self._mark(f"interrupted before the matrix finished ({how}); results hold the finished cases")
        if self.session is not None:
            self.session.shouldstop = f"interrupted by {how}"
        raise KeyboardInterrupt(f"qbench: {how}")  # pytest's interrupt path, as for a plain Ctrl-C

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.session = session
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._on_signal)

    def pytest_runtest_logfinish(self, nodeid, location) -> None:
        self.finished += 1

    def pytest_keyboard_interrupt(self, excinfo) -> None:
        self._mark("interrupted before the matrix finished (Ctrl-C); results hold the finished cases")
        # the case cut short has an empty sample list, on which pytest-benchmark's JSON writer fails
        bench_session = getattr(self.session.config if self.session else None, "_benchmarksession", None)
        if bench_session is not None:
            bench_session.benchmarks[:] = [b for b in bench_session.benchmarks if b.stats.data]

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)  # ahead of pytest-benchmark, which writes its JSON
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int):
        self.decide(session)
        yield

    def decide(self, session: pytest.Session) -> None:
        """complete, or partial when pytest stopped before every selected test ran (-x, --maxfail)."""
        if self.store.status != "running":
            return
        left = len(session.items) - self.finished
        stopped = session.shouldfail or session.shouldstop
        if stopped and left > 0:
            flag = " (-x or --maxfail)" if session.shouldfail else ""
            self._mark(f"pytest stopped early{flag}: {stopped}; {left} of {len(session.items)} selected tests did "
                       "not run; results hold the finished cases")
        else:
            self.store.status = "complete"

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
