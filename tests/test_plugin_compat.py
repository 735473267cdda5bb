"""pytest-benchmark's --benchmark-json changed type in 5.3 (Path); the GPU image has 5.2.3 (file)."""
import importlib.metadata

from qbench_plugin.record import benchjson


def test_benchmark_json_target_follows_the_installed_pytest_benchmark(tmp_path, monkeypatch):
    target = tmp_path / benchjson.PENDING_JSON
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "5.3.1")
    assert benchjson.benchmark_json_target(target) == target
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "5.2.3")
    handle = benchjson.benchmark_json_target(target)
    try:
        assert handle.mode == "wb" and handle.name == str(target)
    finally:
        handle.close()
