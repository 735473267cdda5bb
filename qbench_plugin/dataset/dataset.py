"""The dataset: the model's label set and the evaluation split, from hub ids, local folders, or the embedded
default. (Named dataset, not load: in qbench "load" is the load tests.)

Hub ids (e.g. codefactory4791/intent-classification-qwen, codefactory4791/amazon_test) go through
transformers and datasets unchanged; the same code takes local paths, which is how it is tested.
"""
from __future__ import annotations

import csv
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from qbench_plugin.dataset.embedded import DATA_DIR, EMBEDDED


class DataError(ValueError):
    """A dataset that cannot be evaluated against the model; the message says what and where."""


@dataclass(frozen=True)
class EvalSet:
    texts: list[str]
    label_ids: np.ndarray  # indices into `labels`
    labels: list[str]  # the model's id2label, in id order
    source: str
    split: str
    facts: dict = field(default_factory=dict)  # rows, duplicates, non-ASCII rows, ... (shown in the report)


def model_labels(model: str) -> list[str]:
    """The model's class names in id order, from its config's id2label."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model)
    id2label = {int(k): v for k, v in (config.id2label or {}).items()}
    if not id2label or sorted(id2label) != list(range(len(id2label))):
        raise DataError(f"model {model}: config.id2label must map 0..N-1 to class names, got {config.id2label}")
    return [id2label[i] for i in range(len(id2label))]


def _load_split(dataset: str, split: str):
    try:
        return _read_split(dataset, split)
    except ValueError as exc:
        if isinstance(exc, DataError):
            raise
        text = str(exc)
        if "corresponds to no data" in text:
            raise DataError(f"dataset {dataset} split {split}: the split is empty") from None
        if "split" in text.lower():
            raise DataError(f"dataset {dataset}: {text}") from None
        raise


def _read_split(dataset: str, split: str):
    import datasets

    if dataset == EMBEDDED:
        dataset = str(DATA_DIR)
    path = Path(dataset)
    if path.is_file():
        kind = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(path.suffix)
        if kind is None:
            raise DataError(f"dataset {dataset}: unsupported file type {path.suffix!r} (csv, jsonl, json, parquet)")
        return datasets.load_dataset(kind, data_files={split: str(path)}, split=split)
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataError(f"dataset {dataset}: no split {split!r}; splits: {', '.join(loaded)}")
            return loaded[split]
        return loaded
    return datasets.load_dataset(str(path) if path.is_dir() else dataset, split=split)


def same_rows_for_every_split(dataset: str) -> str | None:
    """Why every split name of `dataset` reads the same rows (one file; one saved Dataset, not a
    DatasetDict), or None when splits are separate. Then no split can calibrate without being the
    evaluated rows."""
    path = Path(str(DATA_DIR) if dataset == EMBEDDED else dataset)
    if path.is_file():
        return "is one file"
    if path.is_dir() and (path / "state.json").exists() and not (path / "dataset_dict.json").exists():
        return "is one saved Dataset (no splits)"
    return None


def normalized(text: str) -> str:
    """A text as compared across calibration and evaluation: case and runs of whitespace do not count."""
    return " ".join(text.split()).casefold()


LINE_FILES = (".jsonl", ".json", ".csv")


def _split_file(dataset: str, split: str) -> Path | None:
    """The one local file a split was read from, when there is one (a file, or a folder's <split>.<ext>)."""
    path = Path(str(DATA_DIR) if dataset == EMBEDDED else dataset)
    if path.is_file():
        return path if path.suffix in LINE_FILES else None
    found = [path / f"{split}{ext}" for ext in LINE_FILES if (path / f"{split}{ext}").is_file()]
    return found[0] if len(found) == 1 else None


def _line_numbers(path: Path) -> list[int]:
    """1-based line number where each row starts: JSON lines skip blank lines, CSV skips its header and
    may span lines inside quotes (csv.reader counts them)."""
    with open(path, encoding="utf-8", newline="") as fh:
        if path.suffix != ".csv":
            return [n for n, line in enumerate(fh, 1) if line.strip()]
        reader = csv.reader(fh)
        starts, previous = [], 0
        for record in reader:
            if record:
                starts.append(previous + 1)
            previous = reader.line_num
        return starts[1:]  # the header


def row_places(dataset: str, split: str, rows: int) -> Callable[[Sequence[int]], str]:
    """A function that names rows (0-based indices of the split) as a person finds them: the lines of the
    file they came from, or 1-based row numbers where there is no such file (hub, parquet, saved). The
    file is read only when a message needs it."""

    @functools.cache
    def lines() -> tuple[Path, list[int]] | None:
        path = _split_file(dataset, split)
        if path is None:
            return None
        try:
            found = _line_numbers(path)
        except (OSError, UnicodeDecodeError, csv.Error):
            return None
        return (path, found) if len(found) == rows else None  # not the file datasets read: do not guess

    def name(indices: Sequence[int]) -> str:
        more = " ..." if len(indices) > 10 else ""
        plural = len(indices) != 1
        if (where := lines()) is None:
            return f"{'rows' if plural else 'row'} {', '.join(str(i + 1) for i in indices[:10])}{more}"
        path, numbers = where
        return f"{'lines' if plural else 'line'} {', '.join(str(numbers[i]) for i in indices[:10])}{more} of {path.name}"

    return name


def load_texts(dataset: str, split: str, text_column: str) -> list[str]:
    """Just the texts of a split (calibration data)."""
    ds = _load_split(dataset, split)
    if text_column not in ds.column_names:
        raise DataError(f"dataset {dataset} split {split}: no column {text_column!r}; columns: {', '.join(ds.column_names)}")
    return list(ds[text_column])


def load_eval_set(dataset: str, split: str, text_column: str, label_column: str, labels: list[str]) -> EvalSet:
    """Texts and label ids of one split, with labels mapped through the model's label names."""
    ds = _load_split(dataset, split)
    for column in (text_column, label_column):
        if column not in ds.column_names:
            raise DataError(
                f"dataset {dataset} split {split}: no column {column!r}; columns: {', '.join(ds.column_names)}"
            )
    if len(ds) == 0:
        raise DataError(f"dataset {dataset} split {split}: the split is empty")
    texts = ds[text_column]
    place = row_places(dataset, split, len(texts))
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise DataError(f"dataset {dataset} split {split}: column {text_column!r} has non-text values at {place(bad)}")
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:  # vLLM rejects an empty prompt; better to say so before any engine starts
        raise DataError(f"dataset {dataset} split {split}: {len(empty)} rows have empty text in column "
                        f"{text_column!r} ({place(empty)}); remove them")
    raw = ds[label_column]
    feature = ds.features[label_column]
    names = getattr(feature, "names", None)
    if names is not None:  # a ClassLabel column stores ids of its own name list
        raw = [names[i] for i in raw]
    label2id = {name: i for i, name in enumerate(labels)}
    if all(isinstance(v, str) for v in raw):
        unknown = sorted({v for v in raw if v not in label2id})
        if unknown:
            missing = set(unknown)
            first = {v: i for i, v in reversed(list(enumerate(raw))) if v in missing}  # earliest row wins
            named = ", ".join(f"{v!r} ({place([first[v]])})" for v in unknown[:10])
            raise DataError(
                f"dataset {dataset} split {split}: column {label_column!r} has labels the model does not know: "
                f"{named}{' ...' if len(unknown) > 10 else ''}; the model's labels: {', '.join(labels)}"
            )
        ids = [label2id[v] for v in raw]
    elif all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in raw):
        outside = [i for i, v in enumerate(raw) if not 0 <= v < len(labels)]
        if outside:
            out_of_range = sorted({int(raw[i]) for i in outside})
            raise DataError(
                f"dataset {dataset} split {split}: column {label_column!r} has label ids {out_of_range[:10]} "
                f"outside the model's 0..{len(labels) - 1} ({place(outside)})"
            )
        ids = [int(v) for v in raw]
    else:
        raise DataError(f"dataset {dataset} split {split}: column {label_column!r} mixes label types")
    facts = {"rows": len(texts), "duplicate_rows": len(texts) - len(set(texts)),
             "non_ascii_rows": sum(not t.isascii() for t in texts)}
    return EvalSet(texts=list(texts), label_ids=np.asarray(ids, dtype=np.int64), labels=labels,
                   source=dataset, split=split, facts=facts)

