"""The pool's grouping logic on stand-in engines (pure orchestration, no engine claimed): an engine
that cannot start beside the others for memory is measured in a later group, with its reason, never
dropped; a config that fails for another reason fails alone."""
import numpy as np
import pytest

from qbench_plugin.measure import matrix as matrix_module
from qbench_plugin.measure import pool as pool_module
from qbench_plugin.quantize import quantize
from qbench_plugin.config import BenchConfig
from qbench_plugin.measure.matrix import Matrix
from qbench_plugin.measure.rounds import RoundPlan
from qbench_plugin.record.run import RunStore


class _StandIn:
    name = "vllm"

    def __init__(self, config):
        self.config, self.engine_kwargs = config, {}

    def classify(self, texts):
        return np.zeros((len(texts), 2), dtype=np.float32)

    def weights_memory_bytes(self):
        return None

    def close(self):
        pass


class _InstantProbe:
    """The host probe's interface without its seconds of matmuls a round: these tests time no host."""
    components = {"interpreter": None}

    def __init__(self, cuda=False):
        pass

    def measure(self):
        return {"interpreter": 0.001, "total": 0.001}


@pytest.fixture
def pool(monkeypatch, tmp_path):
    monkeypatch.setattr(matrix_module, "HostProbe", _InstantProbe)
    resident: set[str] = set()
    started: list[tuple[str, frozenset]] = []

    def start_engine(spec, labels, extra=None):
        name = spec.config.name
        started.append((name, frozenset(resident)))
        if name == "big" and resident - {"big"}:
            raise RuntimeError("CUDA out of memory: tried to allocate 20 GiB")
        if name == "broken":
            raise ValueError("no such checkpoint")
        resident.add(name)
        engine = _StandIn(name)
        engine.close = lambda: resident.discard(name)
        return engine

    monkeypatch.setattr(pool_module, "start_engine", start_engine)
    monkeypatch.setattr(quantize, "prepare", lambda spec, ctx: quantize.Prepared(model=spec.model))
    monkeypatch.setattr(quantize, "weights_bytes", lambda path: None)
    configs = [BenchConfig(name=n, baseline=n == "a") for n in ("a", "big", "b", "broken")]
    store = RunStore(run_id="t", out_dir=tmp_path, settings={})
    engines = pool_module.EnginePool(configs, model="m", labels=["x", "y"], max_model_len=16, default_engine="vllm",
                                     store=store, quant=None)
    engines.started = started
    return engines


def test_an_engine_that_does_not_fit_is_measured_in_a_later_group(pool):
    cases = [(n, bs) for n in ("a", "big", "b") for bs in (1, 4)]
    matrix = Matrix(pool, cases, ["t1", "t2", "t3"], RoundPlan.from_samples(10, 5, 1, 0), pool.store,
                    is_out_of_memory=lambda exc: False)
    assert matrix.timing(("a", 1)).samples_ns
    design = pool.store.measurement
    assert design["groups"] == [["a", "b"], ["big"]]
    assert "could not start beside a, b: RuntimeError: CUDA out of memory" in design["not_resident"]["big"]
    assert len(matrix.timing(("big", 4)).samples_ns) == 10  # measured, in its own group
    assert {c.config for c in pool.store.cases} == {"a", "b", "big"}
    assert pool.store.configs["broken"].status == "failed" and "no such checkpoint" in pool.store.configs["broken"].reason
    # big started alone the second time: the first group was closed first
    assert ("big", frozenset()) in pool.started
    # A B A: the first group's rounds split around big's, its engines restarted for the second half
    assert design["visits"] == ["group 1, rounds 1-2", "group 2, rounds 1-5", "group 1 again (restarted), rounds 3-5"]
    a1 = matrix.timing(("a", 1))
    assert a1.rounds == sorted(a1.rounds) and set(a1.rounds) == set(range(5)) and len(a1.samples_ns) == 10
    assert [n for n, _ in pool.started].count("a") == 2 and pool.store.configs["a"].info["restarted"]
    assert len(pool.store.cases) == 6  # each case once, with both halves


def test_interleave_off_keeps_one_engine_at_a_time(pool):
    pool.co_resident = False
    for name in ("a", "b"):
        pool.get(pool.members.get(name).config if name in pool.members else BenchConfig(name=name))
        assert pool.resident() == [name]


def test_timed_tokens_stay_with_their_samples_across_both_halves(pool):
    cases = [(n, bs) for n in ("a", "big", "b") for bs in (1, 4)]
    matrix = Matrix(pool, cases, ["t1", "t2", "t3"], RoundPlan.from_samples(10, 5, 1, 0), pool.store,
                    is_out_of_memory=lambda exc: False, token_counts=[2, 4, 6])
    a1 = matrix.timing(("a", 1))  # the first group, measured in two halves around "big"
    assert len(a1.tokens) == len(a1.samples_ns) == 10 and set(a1.tokens) <= {2, 4, 6}
    for case in pool.store.cases:
        assert 2 <= case.metrics["timed_tokens_per_text"] <= 6
