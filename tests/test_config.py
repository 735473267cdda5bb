"""Config files: every shipped one loads; a broken one names the file and the field."""
import json
from pathlib import Path

import pytest

from qbench_plugin.config import METHODS, ConfigError, load_config, load_configs

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_configs_load():
    configs = load_configs(ROOT / "configs")
    names = {c.name for c in configs}
    assert {"cpu_default", "fp16_baseline", "bitsandbytes_int8", "awq_4bit", "gptq_4bit"} <= names
    assert all(c.method in METHODS for c in configs)


def _write(tmp_path, text, name="broken.json"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, field, detail",
    [
        ('{"name": "x", "quantization": {"method": "gptq"', None, "invalid JSON"),
        ('{"name": "x", "batchsize": 4}', "batchsize", "unknown field"),
        ('{"name": "x", "max_num_seqs": "many"}', "max_num_seqs", "integer"),
        ('{"name": "x", "quantization": {"method": "int3"}}', "quantization.method", "valid methods: none, bitsandbytes"),
        ('{"name": "x", "gates": {"min_accuracy": 2}}', "gates.min_accuracy", "less than or equal to 1"),
        ('[1, 2]', None, "expected a JSON object"),
    ],
)
def test_broken_config_names_file_and_field(tmp_path, text, field, detail):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    if field:
        assert f"field '{field}'" in message
    assert detail in message


def test_name_defaults_to_file_stem(tmp_path):
    path = _write(tmp_path, json.dumps({"dtype": "float16"}), name="my_setup.json")
    assert load_config(path).name == "my_setup"


def test_selecting_unknown_config_lists_available(tmp_path):
    _write(tmp_path, json.dumps({"name": "a"}), name="a.json")
    with pytest.raises(ConfigError, match="no config named b; available: a"):
        load_configs(tmp_path, ["b"])


def test_tensor_parallel_size_is_checked_where_it_can_be(tmp_path):
    from qbench_plugin.engines.engine import tensor_parallel_problem
    from qbench_plugin.loadtest.serve import ServerSpec, server_command

    assert load_config(_write(tmp_path, '{"name": "big", "tensor_parallel_size": 2}')).tensor_parallel_size == 2
    for text, detail in (('{"name": "x", "tensor_parallel_size": 0}', "greater than or equal to 1"),
                         ('{"name": "x", "engine": "hf", "tensor_parallel_size": 2}', "vLLM's; engine 'hf'"),
                         ('{"name": "x", "device": "cpu", "tensor_parallel_size": 2}', "needs GPUs")):
        with pytest.raises(ConfigError, match=detail):
            load_config(_write(tmp_path, text))
    # at start, before vLLM is asked: the case is skipped with this, never run on fewer GPUs
    assert tensor_parallel_problem(1, "cpu", 0) is None and tensor_parallel_problem(2, "cuda", 2) is None
    assert tensor_parallel_problem(2, "cuda", 1) == ("tensor_parallel_size 2 needs 2 GPUs; 1 visible here "
                                                     "(CUDA_VISIBLE_DEVICES, or pytest-xdist's share of them)")
    assert "no CUDA device" in tensor_parallel_problem(4, "cpu", 0)
    spec = ServerSpec(model="/m", dtype="bfloat16", max_model_len=256, device="cuda", enforce_eager=False,
                      tensor_parallel_size=2)
    assert server_command(spec, 8000)[-2:] == ["--tensor-parallel-size", "2"]
    assert "--tensor-parallel-size" not in server_command(ServerSpec(model="/m", dtype="bfloat16", max_model_len=256,
                                                                     device="cuda", enforce_eager=False), 8000)
