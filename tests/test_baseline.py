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
                     "device": "NVIDIA H200"}
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
    assert "does not record model, dataset, split, max_model_len, device" in incompatibility(
        identity(HERE, []), saved, strict=True)
