"""Core pinning of the timed rounds (measure/pinning.py): the plan from a topology, and real affinity
changes on this machine's processes and threads."""
import os
import subprocess
import sys
import threading

import pytest

from qbench_plugin.measure.pinning import physical_cores, pinned, plan


def _topology(tmp_path, siblings: dict[int, str]):
    for cpu, text in siblings.items():
        folder = tmp_path / f"cpu{cpu}" / "topology"
        folder.mkdir(parents=True)
        (folder / "thread_siblings_list").write_text(text + "\n")
    return tmp_path


def test_smt_siblings_make_one_physical_core(tmp_path):
    sys_cpu = _topology(tmp_path, {0: "0,4", 1: "1,5", 2: "2-3", 3: "2-3", 4: "0,4", 5: "1,5"})
    assert physical_cores([0, 1, 2, 3, 4, 5], sys_cpu) == [[0, 4], [1, 5], [2, 3]]
    # a sibling this process may not use is left out; a CPU without topology files is its own core
    assert physical_cores([0, 1, 5, 9], sys_cpu) == [[0], [1, 5], [9]]


def test_the_timing_thread_gets_a_core_nothing_else_uses_and_engines_share_the_rest_round_robin():
    layout = plan([[0, 8], [1, 9], [2, 10]], ["a", "b", "c"])
    assert layout["main"] == [2]  # the last core: the first usually takes the device interrupts
    assert layout["others"] == [0, 1, 8, 9]  # the main thread's SMT sibling stays idle
    assert (layout["a"], layout["b"], layout["c"]) == ([0, 8], [1, 9], [0, 8])
    assert all(10 not in cpus for cpus in layout.values())
    assert "1 physical core" in plan([[0, 1]], ["a"])


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_pinned_moves_threads_and_an_engine_process_and_gives_the_main_thread_its_cores_back():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    before = os.sched_getaffinity(0)
    record: dict = {}
    try:
        with pinned({"engine": [child.pid], "inprocess": []}, record):
            cores = physical_cores(sorted(before))
            assert record["pinned"] and record["main_thread"] == [cores[-1][0]]
            assert os.sched_getaffinity(0) == {cores[-1][0]}  # this (the main) thread
            assert os.sched_getaffinity(child.pid) == set(record["engines"]["engine"]["cpus"])
            assert cores[-1][0] not in os.sched_getaffinity(child.pid)
            assert "inprocess" not in record["engines"]  # lives in this process: nothing of its own to pin
            seen = {}
            worker = threading.Thread(target=lambda: seen.update(mask=os.sched_getaffinity(0)))
            worker.start(), worker.join()  # born inside the block: inherits the main thread's core
            assert seen["mask"] == {cores[-1][0]}
        assert os.sched_getaffinity(0) == before
        assert os.sched_getaffinity(child.pid) == before  # the engine's threads get theirs back too
    finally:
        child.kill()
        child.wait()


def test_off_or_too_few_cores_pins_nothing_and_says_why():
    record: dict = {}
    before = os.sched_getaffinity(0)
    with pinned({"engine": [os.getpid()]}, record, off="off (--qbench-pin-cores off)"):
        assert os.sched_getaffinity(0) == before
    assert record == {"pinned": False, "reason": "off (--qbench-pin-cores off)"}


def test_vcpu_speeds_times_every_allowed_cpu_in_both_phases_and_summarises(tmp_path):
    """scripts/vcpu_speeds.py, the premise of `same`: really run for a short while on this machine."""
    done = subprocess.run([sys.executable, "scripts/vcpu_speeds.py", str(tmp_path), "--seconds", "2"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    import pandas as pd

    frame = pd.read_csv(tmp_path / "vcpu_speeds.csv")
    cpus = set(os.sched_getaffinity(0))
    for phase in ("together", "hopping"):
        rows = frame[frame.phase == phase]
        assert set(rows.cpu) == cpus and (rows.ms > 0).all() and (rows.t_s >= 0).all()
    assert "slowest/fastest median" in done.stdout and (tmp_path / "vcpu_speeds.txt").read_text() == done.stdout
