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
