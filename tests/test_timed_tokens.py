"""MFU counts the tokens each case timed, and every batch size draws rows in one fixed shuffled order
(issue 18, item 14). Pure logic: stand-in engines record what they were given."""
import numpy as np
import pandas as pd
import pytest

from qbench_plugin.measure.rounds import RoundPlan, row_order, run_rounds
from qbench_plugin.report.summary import add_derived


class _Recorder:
    name = "vllm"

    def __init__(self):
        self.calls: list[list[str]] = []

    def classify(self, texts):
        self.calls.append(list(texts))
        return np.zeros((len(texts), 2), dtype=np.float32)


def test_each_sample_records_the_tokens_of_the_texts_it_timed():
    texts = [f"t{i}" for i in range(40)]
    counts = [i + 1 for i in range(40)]  # every text a different length
    plan = RoundPlan.from_samples(samples=6, rounds=2, warmup=2, seed=7)
    engines = {"a1": _Recorder(), "a4": _Recorder()}
    cases = [("a1", 1), ("a4", 4)]
    timings = run_rounds(engines, cases, texts, plan, is_out_of_memory=lambda exc: False, token_counts=counts)
    for case in cases:
        calls, timing = engines[case[0]].calls, timings[case]
        # warm-up, then per round one untimed call and a timed block
        timed = [calls[plan.warmup + r * (plan.block + 1) + 1 + k] for r in range(plan.rounds) for k in range(plan.block)]
        assert timing.tokens == [sum(counts[int(t[1:])] for t in batch) for batch in timed]
        assert len(timing.tokens) == len(timing.samples_ns) == 6
    # both batch sizes draw the split in the same seeded order, not file order
    order = row_order(len(texts))
    assert order != list(range(len(texts))) and sorted(order) == list(range(len(texts)))
    assert [int(t[1:]) for batch in engines["a1"].calls for t in batch] == order[:len(engines["a1"].calls)]
    assert [int(t[1:]) for t in engines["a4"].calls[0]] == order[:4]
    assert row_order(len(texts)) == order  # the same for every run


def test_a_cpu_plan_sends_every_timed_shape_once_before_the_rounds():
    # on a CPU the first call of a new input shape costs more (seen in early rounds): not inside the rounds
    texts = [f"t{i}" for i in range(12)]
    counts = [1 + i % 3 for i in range(12)]  # three lengths: at bs 1, three shapes
    plan = RoundPlan.of(samples=10, rounds=None, device="cpu", warmup=1, seed=3)
    assert plan.every_shape and plan.as_dict()["warmup_every_shape"]
    assert not RoundPlan.of(samples=10, rounds=None, device="cuda", warmup=1, seed=3).every_shape
    engines = {"a": _Recorder(), "b": _Recorder()}
    cases = [("a", 1), ("b", 1), ("b", 2)]
    run_rounds(engines, cases, texts, plan, is_out_of_memory=lambda exc: False, token_counts=counts)
    calls_before_rounds = plan.warmup + 3  # warm-up, then one call per bs-1 shape
    first = engines["a"].calls[:calls_before_rounds]
    assert sorted({counts[int(t[1:])] for batch in first[plan.warmup:] for t in batch}) == [1, 2, 3]
    assert len(engines["a"].calls[calls_before_rounds:]) == plan.rounds * (plan.block + 1)  # the rounds are unchanged
    # without token counts every batch the rounds will send is its own shape
    engine = {"a": _Recorder()}
    run_rounds(engine, [("a", 2)], texts, plan, is_out_of_memory=lambda exc: False)
    assert len(engine["a"].calls) == plan.warmup + 2 * plan.rounds * (plan.block + 1)


def test_mfu_uses_each_cases_timed_tokens():
    table = pd.DataFrame({"config": ["c", "c", "c"], "batch_size": [1, 8, 32],
                          "throughput_samples_per_s": [100.0, 100.0, 100.0],
                          "timed_tokens_per_text": [10.0, 30.0, None]})
    derived = add_derived(table, {"mean_tokens_per_text": 20.0, "non_embedding_params": 1e9}, 100.0)
    assert list(derived["tokens_per_s"]) == pytest.approx([1000.0, 3000.0, 2000.0])  # no record: the split's mean
    assert derived["mfu"][1] == pytest.approx(2 * 1e9 * 3000.0 / 1e12 / 100.0)


def test_the_split_tokenized_once_gives_the_engines_truncated_counts(embedded_model):
    """The over-length check and the per-text counts read one tokenization; truncating its lengths gives
    what the tokenizer's own truncation does."""
    from transformers import AutoTokenizer

    from qbench_plugin.dataset.workload import over_length_rows, token_counts, token_lengths, truncated

    texts = ["where is my order", "refund " * 40, "", "cancel it please, it never came " * 3]
    lengths = token_lengths(str(embedded_model), texts)
    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model))
    for limit in (4, 16, 256):
        expected = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=limit)["input_ids"]]
        assert truncated(lengths, limit) == token_counts(str(embedded_model), texts, limit) == expected
        assert over_length_rows(lengths, limit) == [i for i, n in enumerate(lengths) if n > limit]
    assert over_length_rows(lengths, 16) == [1, 3]


class _Interrupted(_Recorder):
    """Answers `after` calls, then is interrupted as status.py's signal handler interrupts a run."""

    def __init__(self, after: int, message: str):
        super().__init__()
        self.after, self.message = after, message

    def classify(self, texts):
        if len(self.calls) == self.after:
            raise KeyboardInterrupt(self.message)
        return super().classify(texts)


@pytest.mark.parametrize("message, how", [("qbench: SIGTERM", "SIGTERM"), ("qbench: Ctrl-C (SIGINT)", "Ctrl-C"),
                                          ("", "Ctrl-C")])
def test_an_interruption_keeps_whole_rounds_and_names_the_signal(message, how):
    from qbench_plugin.measure.rounds import RoundsInterrupted

    plan = RoundPlan.from_samples(samples=6, rounds=3, warmup=1, seed=3)
    # warm-up, then two whole rounds of (one untimed call + a block of 2), then the third round's first call
    engine = _Interrupted(after=plan.warmup + 2 * (plan.block + 1) + 1, message=message)
    with pytest.raises(RoundsInterrupted) as caught:
        run_rounds({"a": engine}, [("a", 1)], [f"t{i}" for i in range(20)], plan, is_out_of_memory=lambda exc: False)
    assert caught.value.how == how and caught.value.rounds_done == 2
    assert f"interrupted ({how}) after 2 whole rounds" in str(caught.value)
    assert caught.value.timings[("a", 1)].rounds == [0, 0, 1, 1]
