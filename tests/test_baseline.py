"""A saved run that measured something else is refused as a perf baseline, with the reason."""
import json
from pathlib import Path

from qbench_plugin.gates.baseline import identity, incompatibility, read_saved, saved_identity

ROOT = Path(__file__).resolve().parents[1]
H200 = ROOT / "results" / "examples" / "h200" / "run-2026-11-28"
HERE = {"model": "embedded", "dataset": "embedded", "split": "test", "max_model_len": 256}


def test_published_h200_run_is_not_a_baseline_for_a_cpu_run_of_another_model():
    _, data = read_saved(H200)
    saved = saved_identity(data)
    assert saved == {"model": "embedded:qwen2.5-0.5b", "dataset": "embedded", "split": "test", "max_model_len": 256,
                     "device": "NVIDIA H200", "engine_core": "own processes"}
    why = incompatibility(identity(HERE, []), saved, strict=False)
    assert why == ("measured something else: model 'embedded:qwen2.5-0.5b' there, 'embedded' here; "
                   "device 'NVIDIA H200' there, 'cpu' here")
    assert incompatibility(identity({**HERE, "model": "embedded:qwen2.5-0.5b"}, ["NVIDIA H200"]), saved,
                           strict=True) is None


def test_each_identity_field_is_checked():
    saved = identity(HERE, [])
    for field, other in (("dataset", "data.csv"), ("split", "validation"), ("max_model_len", 512)):
        assert f"{field} " in incompatibility(identity({**HERE, field: other}, []), saved, strict=False)
    assert incompatibility(identity(HERE, ["NVIDIA H100 80GB HBM3"]), saved, strict=False).endswith(
        "device 'cpu' there, 'NVIDIA H100 80GB HBM3' here")


def test_a_run_that_records_nothing_to_check_passes_unless_strict(tmp_path):
    path = tmp_path / "benchmark.json"
    path.write_text(json.dumps({"benchmarks": []}))  # an older pytest-benchmark file without qbench's record
    saved = saved_identity(read_saved(path)[1])
    assert incompatibility(identity(HERE, []), saved, strict=False) is None
    assert "does not record model, dataset, split, max_model_len, device, engine_core" in incompatibility(
        identity(HERE, []), saved, strict=True)


def test_a_cpu_run_with_vllm_in_process_is_not_compared_with_one_without():
    """In-process vLLM skips the hop to the engine core process: its latencies are not the other mode's.
    A CPU run saved before the option existed ran its engine core in its own processes."""
    older = identity(HERE, [])  # no vllm_inprocess setting recorded
    now = identity({**HERE, "vllm_inprocess": True}, [])
    assert incompatibility(now, older, strict=False) == (
        "measured something else: engine_core 'own processes' there, 'in-process' here")
    assert incompatibility(now, identity({**HERE, "vllm_inprocess": True}, []), strict=True) is None
    # on a GPU the setting does nothing: both runs' engine cores had their own processes
    gpu = ["NVIDIA H200"]
    assert incompatibility(identity({**HERE, "vllm_inprocess": True}, gpu), identity(HERE, gpu), strict=True) is None
