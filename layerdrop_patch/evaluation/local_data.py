"""Load the bundled benchmark files into the Hugging Face schemas that lm-eval's standard tasks expect.

Why this module exists: offline (no hub) the project's local lm-eval task definitions
(`evaluation/tasks/*.yaml`) must build exactly the prompts of lm-eval's standard tasks. The easiest way to
guarantee that is to hand those YAMLs documents with the *same field names and value conventions* as the
hub datasets (`allenai/ai2_arc`, `Rowan/hellaswag`, `cais/mmlu`, ...) and then copy the standard Jinja
templates unchanged. Each loader below converts one bundled file layout (see `data/SOURCES.md`) to that
schema and returns a `datasets.DatasetDict`; the YAMLs reference them through `custom_dataset`.

Paths are resolved at run time from this file's location, so the tasks work from a source checkout and
after `pip install .` alike (the data ship as package data).

Known, documented differences from the hub versions (the bundled files are what could be obtained):
- HellaSwag: the bundled text export has `ctx` already joined and preprocessed, *without* the harness'
  `ctx_b.capitalize()`; few-shot examples come from the validation split (train was not bundled), with
  the evaluated item excluded by lm-eval's sampler.
- WinoGrande: few-shot pool is `train_m` (the harness uses `winogrande_xl` train, not bundled).
- GSM8K: only the test split is bundled; few-shot examples come from test with the evaluated item excluded.
- BoolQ / PIQA: only validation is bundled; their paper setting is 0-shot, so no few-shot pool is needed
  (if you ask for shots anyway, they are drawn from validation minus the evaluated item).
"""

from __future__ import annotations

import bz2
import csv
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from layerdrop_patch.errors import ConfigError, DataError

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def data_path(*parts: str) -> Path:
    """Absolute path of a bundled data file; a clear error if the package was installed without data."""
    path = DATA_DIR.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
            f"Bundled evaluation data file is missing: {path}. Reinstall layerdrop-patch with its package "
            f"data (`pip install .` from a full checkout), or run online (unset HF_HUB_OFFLINE / "
            f"HF_DATASETS_OFFLINE) to use lm-eval's standard hub tasks."
        )
    return path


def _jsonl(*parts: str) -> list[dict[str, Any]]:
    with open(data_path(*parts), encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _lines(*parts: str) -> list[str]:
    with open(data_path(*parts), encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip()]


def _dataset_dict(splits: dict[str, list[dict[str, Any]]]):
    import datasets

    return datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items()})


# --------------------------------------------------------------------------- row converters (pure)
def arc_row(raw: dict[str, Any]) -> dict[str, Any]:
    """Original ARC jsonl record -> `allenai/ai2_arc` row (question str, choices {text, label}, answerKey)."""
    choices = raw["question"]["choices"]
    return {
        "id": raw["id"],
        "question": raw["question"]["stem"],
        "choices": {"text": [c["text"] for c in choices], "label": [c["label"] for c in choices]},
        "answerKey": raw["answerKey"],
    }


def openbookqa_row(raw: dict[str, Any]) -> dict[str, Any]:
    """Original OBQA jsonl record -> `allenai/openbookqa` (main) row."""
    choices = raw["question"]["choices"]
    return {
        "id": raw["id"],
        "question_stem": raw["question"]["stem"],
        "choices": {"text": [c["text"] for c in choices], "label": [c["label"] for c in choices]},
        "answerKey": raw["answerKey"],
    }


def hellaswag_rows(text: str) -> list[dict[str, Any]]:
    """llama.cpp HellaSwag text export (6 lines per item) -> rows with the fields the harness' process_docs
    produces (`query`, `choices`, `gold`) plus `label`."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]
    if len(lines) % 6:
        raise DataError(f"HellaSwag export has {len(lines)} lines, not a multiple of 6; the file is corrupt.")
    rows = []
    for i in range(0, len(lines), 6):
        query, label, *endings = lines[i : i + 6]
        rows.append({"query": query, "choices": endings, "gold": int(label), "label": label})
    return rows


def winogrande_row(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: raw[k] for k in ("sentence", "option1", "option2", "answer")}


def truthfulqa_row(raw: dict[str, Any]) -> dict[str, Any]:
    """TruthfulQA v0 `mc_task.json` record (targets as {answer: 0/1} dicts, correct answers first) ->
    `truthfulqa/truthful_qa` multiple_choice row (targets as {choices: [...], labels: [...]})."""

    def targets(d: dict[str, int]) -> dict[str, list]:
        return {"choices": list(d.keys()), "labels": [int(v) for v in d.values()]}

    return {"question": raw["question"], "mc1_targets": targets(raw["mc1_targets"]),
            "mc2_targets": targets(raw["mc2_targets"])}


# --------------------------------------------------------------------------- raw split loaders (cached)
@lru_cache(maxsize=None)
def _arc(name: str) -> dict[str, list]:
    return {split: [arc_row(r) for r in _jsonl("arc", f"ARC-{name}-{fname}.jsonl")]
            for split, fname in (("train", "Train"), ("validation", "Dev"), ("test", "Test"))}


@lru_cache(maxsize=None)
def _hellaswag_validation() -> list[dict[str, Any]]:
    with bz2.open(data_path("hellaswag", "hellaswag_val_full.txt.bz2"), "rt", encoding="utf-8") as fh:
        return hellaswag_rows(fh.read())


def _with_labels(rows_file: tuple[str, str], labels_file: tuple[str, str]) -> list[dict[str, Any]]:
    rows, labels = _jsonl(*rows_file), _lines(*labels_file)
    if len(rows) != len(labels):
        raise DataError(f"{rows_file} has {len(rows)} rows but {labels_file} has {len(labels)} labels.")
    return [dict(r, label=int(lab)) for r, lab in zip(rows, labels)]


MMLU_SUBJECTS: tuple[str, ...] = tuple(sorted(
    p.name[: -len("_test.csv")] for p in (DATA_DIR / "mmlu" / "test").glob("*_test.csv")
))


def _mmlu_csv(split: str, subject: str) -> list[dict[str, Any]]:
    path = data_path("mmlu", split, f"{subject}_{split}.csv")
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)  # csv, not pandas: answers like "None" must stay strings
        return [{"question": r["question"], "subject": subject,
                 "choices": [r[f"choice{i}"] for i in range(4)], "answer": int(r["answer"])} for r in reader]


# --------------------------------------------------------------------------- custom_dataset hooks
# lm-eval calls custom_dataset(**metadata, **dataset_kwargs); the kwargs are not needed here.
def arc_challenge(**_: Any):
    return _dataset_dict(_arc("Challenge"))


def arc_easy(**_: Any):
    return _dataset_dict(_arc("Easy"))


def hellaswag(**_: Any):
    return _dataset_dict({"validation": _hellaswag_validation()})


def piqa(**_: Any):
    return _dataset_dict({"validation": _with_labels(("piqa", "valid.jsonl"), ("piqa", "valid-labels.lst"))})


def boolq(**_: Any):
    rows = [dict(r, label=int(bool(r["answer"]))) for r in _jsonl("boolq", "dev.jsonl")]
    return _dataset_dict({"validation": rows})


def rte(**_: Any):
    import pandas as pd

    splits = {}
    for split in ("train", "validation"):
        frame = pd.read_parquet(data_path("rte", f"{split}.parquet"))
        splits[split] = [{"sentence1": str(a), "sentence2": str(b), "label": int(lab), "idx": int(i)}
                         for a, b, lab, i in zip(frame.sentence1, frame.sentence2, frame.label, frame.idx)]
    return _dataset_dict(splits)


def openbookqa(**_: Any):
    return _dataset_dict({split: [openbookqa_row(r) for r in _jsonl("openbookqa", f"{fname}.jsonl")]
                          for split, fname in (("train", "train"), ("validation", "dev"), ("test", "test"))})


def winogrande(**_: Any):
    return _dataset_dict({
        "train": [winogrande_row(r) for r in _jsonl("winogrande", "train_m.jsonl")],
        "validation": [winogrande_row(r) for r in _jsonl("winogrande", "dev.jsonl")],
    })


def mmlu(subject: str | None = None, **_: Any):
    if subject not in MMLU_SUBJECTS:
        raise ConfigError(f"Unknown MMLU subject {subject!r}; known: {', '.join(MMLU_SUBJECTS)}")
    return _dataset_dict({"test": _mmlu_csv("test", subject), "dev": _mmlu_csv("dev", subject)})


def lambada_openai(**_: Any):
    return _dataset_dict({"test": _jsonl("lambada", "lambada_test.jsonl")})


def truthfulqa(**_: Any):
    with open(data_path("truthfulqa", "mc_task_v0.json"), encoding="utf-8") as fh:
        rows = [truthfulqa_row(r) for r in json.load(fh)]
    return _dataset_dict({"validation": rows})


def gsm8k(**_: Any):
    return _dataset_dict({"test": _jsonl("gsm8k", "test.jsonl")})
