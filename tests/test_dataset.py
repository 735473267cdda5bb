"""Dataset and model loading through datasets/transformers, on local paths (the hub code path)."""
import json

import datasets
import pytest

from qbench_plugin.dataset.dataset import DataError, load_eval_set, model_labels
from qbench_plugin.dataset.embedded import DATA_DIR, read_jsonl

LABELS = ["cancel_order", "order_status", "refund_request"]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_embedded_dataset_shape():
    train, test = read_jsonl(DATA_DIR / "train.jsonl"), read_jsonl(DATA_DIR / "test.jsonl")
    assert len({r["label"] for r in train}) == 23 == len({r["label"] for r in test})
    assert len(train) >= 2000 and len(test) >= 500
    assert not {r["text"] for r in train} & {r["text"] for r in test}


def test_string_labels_map_through_model_labels(tmp_path):
    _jsonl(tmp_path / "test.jsonl", [{"text": "where is it", "label": "order_status"},
                                     {"text": "stop my order", "label": "cancel_order"}])
    ev = load_eval_set(str(tmp_path), "test", "text", "label", LABELS)
    assert ev.texts == ["where is it", "stop my order"]
    assert ev.label_ids.tolist() == [1, 0]


def test_class_label_ids_map_by_name_not_position(tmp_path):
    # the dataset's own order differs from the model's: mapping must go through the names
    features = datasets.Features({"utterance": datasets.Value("string"),
                                  "intent": datasets.ClassLabel(names=["refund_request", "cancel_order"])})
    ds = datasets.Dataset.from_dict({"utterance": ["money back", "cancel"], "intent": [0, 1]}, features=features)
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "saved"))
    ev = load_eval_set(str(tmp_path / "saved"), "test", "utterance", "intent", LABELS)
    assert ev.label_ids.tolist() == [2, 0]


def test_unknown_label_is_a_clear_error(tmp_path):
    _jsonl(tmp_path / "test.jsonl", [{"text": "hi", "label": "teleport_package"}])
    with pytest.raises(DataError, match="labels the model does not know: 'teleport_package' \\(line 1 of test.jsonl\\)"):
        load_eval_set(str(tmp_path), "test", "text", "label", LABELS)


def test_missing_column_names_columns(tmp_path):
    _jsonl(tmp_path / "test.jsonl", [{"utterance": "hi", "label": "order_status"}])
    with pytest.raises(DataError, match="no column 'text'; columns: utterance, label"):
        load_eval_set(str(tmp_path), "test", "text", "label", LABELS)


def test_empty_split_is_an_error(tmp_path):
    (tmp_path / "empty.csv").write_text("text,label\n")
    with pytest.raises(DataError, match="empty"):
        load_eval_set(str(tmp_path / "empty.csv"), "test", "text", "label", LABELS)


def test_label_id_out_of_range(tmp_path):
    _jsonl(tmp_path / "test.jsonl", [{"text": "hi", "label": 7}])
    with pytest.raises(DataError, match=r"outside the model's 0..2"):
        load_eval_set(str(tmp_path), "test", "text", "label", LABELS)


def test_model_labels_from_local_folder(embedded_model):
    labels = model_labels(str(embedded_model))
    assert len(labels) == 23 and "order_status" in labels


def test_embedded_model_reaches_target_accuracy(embedded_model):
    meta = json.loads((embedded_model / "qbench_model.json").read_text())
    assert meta["test_accuracy"] >= 0.90
