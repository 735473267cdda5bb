"""The host probe's record and what a comparison makes of it. Pure logic except the one real timing."""
import pytest

from qbench_plugin.stats.probe import HOST_SPREAD, VERSION, HostCheck, HostProbe, probe_seconds, record_round


def test_a_round_appends_each_components_time_and_the_total():
    record: dict = {}
    probe = HostProbe()
    for index in range(3):
        record_round(record, probe, index)
    assert record["rounds"] == [0, 1, 2] and len(record["seconds"]) == 3
    for i, total in enumerate(record["seconds"]):
        assert total == pytest.approx(sum(record["by_component"][c][i] for c in probe.components), rel=1e-6)
    assert probe_seconds(record) == record["seconds"]
    # the diagnostics sit beside the components, outside the total: on-CPU share of the interpreter
    # part (this process has a core to itself here, so near 1) and the host's steal share (Linux: known)
    assert len(record["interpreter_on_cpu"]) == 3 and all(0.3 < x <= 1.05 for x in record["interpreter_on_cpu"])
    assert len(record["steal_share"]) == 3 and all(x is None or 0 <= x <= 1 for x in record["steal_share"])


def test_steal_share_is_the_steal_jiffies_over_all_jiffies_between_two_readings():
    from qbench_plugin.stats.probe import steal_share

    before = [100, 0, 50, 800, 0, 0, 0, 50, 0, 0]
    after = [200, 0, 100, 1550, 0, 0, 0, 150, 0, 0]  # 1000 jiffies passed, 100 of them stolen
    assert steal_share(before, after) == pytest.approx(0.1)
    assert steal_share(None, after) != steal_share(None, after)  # NaN without a reading


def test_probes_of_another_workload_or_too_few_rounds_are_not_used():
    assert probe_seconds({"version": VERSION - 1, "seconds": [0.1, 0.1, 0.1]}) is None
    assert probe_seconds({"version": VERSION, "seconds": [0.1]}) is None
    assert probe_seconds(None) is None


def test_a_host_differs_only_beyond_the_probes_own_spread():
    base = [0.060, 0.061, 0.059, 0.062, 0.060, 0.058, 0.061, 0.060]
    same = HostCheck.of([x * 1.05 for x in base], base)
    assert not same.differs and "beyond" not in same.note("B", "A")
    busy = HostCheck.of([x * (1 + 2 * HOST_SPREAD) for x in base], base)
    assert busy.differs and "B's machine was slower than A's" in busy.note("B", "A")
    fast = HostCheck.of([x / (1 + 2 * HOST_SPREAD) for x in base], base)
    assert fast.differs and "faster" in fast.note("B", "A")
    assert HostCheck.of(None, base).note("B", "A") == ""
