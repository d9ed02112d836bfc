"""Calibration data: turn text into the (n_samples, seq_len) token chunks that importance scoring runs on.

Why packing and not padding: He et al.'s code (like most pretraining pipelines) tokenizes documents, appends EOS
after each, concatenates them and cuts the stream into seq_len chunks. Every position then carries a real token, so
the per-token cosine average is not diluted by padding and needs no mask.

Sources: the bundled C4 sample (``"c4"``, default) and WikiText-2 test (``"wikitext2"``); a local JSON / JSONL /
Parquet / text file or a directory of them; a ``datasets.Dataset``; a list of strings; or a Hugging Face Hub dataset
name (loaded through ``datasets.load_dataset``; where the Hub cannot be reached the error says how to pass a local file).
Documents are shuffled with ``seed`` and taken in that order until there are enough tokens, so only as many documents
as needed are tokenized.
"""

from __future__ import annotations

import json
import os
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from layerdrop_patch.corpora import CORPORA, describe, documents
from layerdrop_patch.embedded import path_exists
from layerdrop_patch.errors import ConfigError, DataError, InputNotFoundError, shorten
from layerdrop_patch.options import StageConfig, option, positive

FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".txt", ".text")
_TOKENIZE_BATCH = 64  # documents tokenized per call; small enough to stop soon after enough tokens are found


@dataclass
class CalibrationConfig(StageConfig):
    """Where the calibration tokens come from and how many: the `calibration` section of a recipe."""

    section = "calibration"
    source: str = option("c4", "c4 | wikitext2 | a local JSON/JSONL/Parquet/text file or directory | a hub dataset.",
                         flag="--calibration")
    n_samples: int = option(32, "Calibration chunks (the paper: 256).", check=positive)
    seq_len: int = option(512, "Tokens per chunk (the paper: 2048).", check=positive)
    seed: int = option(0, "Seed of the document shuffle.")
    batch_size: int = option(1, "Chunks per forward pass while scoring.", check=positive)

    def load(self, tokenizer: Any) -> "Calibration":
        return load_calibration(self.source, tokenizer, self.n_samples, self.seq_len, self.seed)


@dataclass
class Calibration:
    """Token chunks for scoring plus a human-readable account of where they came from."""

    input_ids: torch.Tensor  # LongTensor (n_samples, seq_len)
    description: str
    tokens_used: int
    source: str = ""
    seed: int = 0
    documents_used: int = 0

    @property
    def n_samples(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    def __len__(self) -> int:
        return self.n_samples


# ----------------------------------------------------------------------------------------------- reading documents
def _column_texts(columns: dict[str, list], text_column: str, where: str) -> list[str]:
    if text_column not in columns:
        raise DataError(
            f"{where} has no {text_column!r} column; columns found: {sorted(columns)}. "
            f"Pass text_column=<name> to use another one."
        )
    return [t for t in columns[text_column] if isinstance(t, str)]


def _records_texts(records: list, text_column: str, where: str) -> list[str]:
    """Texts from a list of JSON values: plain strings or objects carrying `text_column`."""
    texts, keys = [], set()
    for rec in records:
        if isinstance(rec, str):
            texts.append(rec)
        elif isinstance(rec, dict):
            keys.update(rec)
            value = rec.get(text_column)
            if isinstance(value, str):
                texts.append(value)
    if not texts and keys:
        raise DataError(
            f"{where} has no {text_column!r} field; fields found: {sorted(keys)}. Pass text_column=<name> to use another one."
        )
    return texts


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not valid UTF-8 text (bad byte at offset {err.start}); re-encode it as UTF-8.") from None


def _read_file(path: Path, text_column: str) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as err:  # pyarrow raises several types for corrupt files
            raise DataError(f"{path} is not a readable Parquet file: {str(err)[:300]}") from None
        if text_column not in table.column_names:
            raise DataError(
                f"{path} has no {text_column!r} column; columns found: {table.column_names}. "
                f"Pass text_column=<name> to use another one."
            )
        return [t for t in table.column(text_column).to_pylist() if isinstance(t, str)]
    text = _read_text(path)
    if suffix == ".jsonl":
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataError(f"{path} line {lineno} is not valid JSON ({err.msg}).") from None
        return _records_texts(records, text_column, str(path))
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}); JSONL files need a .jsonl suffix.") from None
        if isinstance(data, dict):  # column layout {"text": [...], ...} or {"data": [...]}
            if all(isinstance(v, list) for v in data.values()) and text_column in data:
                return _column_texts(data, text_column, str(path))
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) == 1:
                data = lists[0]
            else:
                raise DataError(f"{path}: expected a list of documents; found an object with keys {sorted(data)}.")
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a list of documents (strings or objects), found {type(data).__name__}.")
        return _records_texts(data, text_column, str(path))
    # Plain text: documents are separated by blank lines.
    return [d for d in text.replace("\r\n", "\n").split("\n\n") if d.strip()]


def _read_path(path: Path, text_column: str) -> list[str]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FILE_SUFFIXES)
        if not files:
            raise DataError(f"directory {path} contains no {'/'.join(FILE_SUFFIXES)} files.")
        texts = []
        for f in files:
            texts.extend(_read_file(f, text_column))
        return texts
    return _read_file(path, text_column)


def _read_hub(name: str, text_column: str, split: str, subset: str | None) -> list[str]:
    try:
        import datasets

        ds = datasets.load_dataset(name, subset, split=split)
    except Exception as err:
        raise DataError(
            f"could not load calibration dataset {name!r} from the Hugging Face Hub (it could not be reached or does "
            f"not exist: {type(err).__name__}: {err}). Pass local data instead: a path to a JSON/JSONL/Parquet/text file "
            f"or directory, a datasets.Dataset, a list of strings, or the bundled 'c4' / 'wikitext2'."
        ) from err
    return _dataset_texts(ds, text_column, f"dataset {name!r}")


def _dataset_texts(ds: Any, text_column: str, where: str) -> list[str]:
    if isinstance(getattr(ds, "column_names", None), dict):  # a DatasetDict
        raise DataError(f"{where} has several splits {list(ds.keys())}; pass one split, e.g. ds['train'].")
    columns = list(ds.column_names)
    if text_column not in columns:
        raise DataError(f"{where} has no {text_column!r} column; columns found: {columns}. Pass text_column=<name>.")
    return [t for t in ds[text_column] if isinstance(t, str)]


def read_documents(source: Any, text_column: str = "text", split: str = "train", subset: str | None = None) -> tuple[list[str], str]:
    """The documents of `source` and a short name for it (see the module docstring for the accepted sources)."""
    if isinstance(source, str) and source in CORPORA:  # only the calibration part: the rest is held out
        return documents(source, "calibration"), f"{source} ({describe(source, 'calibration')})"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if path_exists(path):
            return _read_path(path, text_column), str(path)
        if isinstance(source, os.PathLike) or path.suffix.lower() in FILE_SUFFIXES or str(source).startswith((".", "/", "~")):
            raise InputNotFoundError(f"calibration file {str(source)!r} does not exist; give an existing file or directory, a hub dataset name, or the bundled 'c4' / 'wikitext2'.")
        return _read_hub(str(source), text_column, split, subset), f"hub:{source} [{split}]"
    if isinstance(source, Sequence) and not isinstance(source, (bytes, bytearray)):
        bad = [type(d).__name__ for d in source if not isinstance(d, str)]
        if bad:
            raise DataError(f"a calibration list must hold strings only; found {sorted(set(bad))}.")
        return list(source), f"list of {len(source)} strings"
    if hasattr(source, "column_names"):
        return _dataset_texts(source, text_column, "the dataset"), f"datasets.Dataset ({len(source)} rows)"
    raise DataError(
        f"unsupported calibration source of type {type(source).__name__}; expected 'c4', 'wikitext2', a path, a hub "
        f"dataset name, a datasets.Dataset or a list of strings."
    )


# ----------------------------------------------------------------------------------------------- packing
def load_calibration(
    source: Any = CalibrationConfig.source,
    tokenizer: Any = None,
    n_samples: int = CalibrationConfig.n_samples,
    seq_len: int = CalibrationConfig.seq_len,
    seed: int = CalibrationConfig.seed,
    *,
    text_column: str = "text",
    split: str = "train",
    subset: str | None = None,
) -> Calibration:
    """Tokenize, pack and cut `source` into `n_samples` chunks of `seq_len` tokens.

    Documents are shuffled with `seed`, each is followed by EOS, and they are concatenated until
    ``n_samples * seq_len`` tokens are collected. If the data holds at least one but fewer than `n_samples`
    chunks, all complete chunks are used and a warning says so; with less than one chunk a ValueError says how
    many tokens were found. `split` / `subset` only apply to hub datasets.
    """
    if tokenizer is None:
        raise ConfigError("load_calibration needs the model's tokenizer: load_calibration(source, tokenizer, ...).")
    if not isinstance(n_samples, int) or n_samples < 1 or not isinstance(seq_len, int) or seq_len < 1:
        raise ConfigError(f"n_samples and seq_len must be positive integers, got {shorten(n_samples)}, {shorten(seq_len)}.")
    docs, name = read_documents(source, text_column=text_column, split=split, subset=subset)
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise DataError(f"calibration source {name} holds no non-empty text documents.")

    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        warnings.warn("tokenizer has no EOS token; documents are concatenated without a separator.", stacklevel=2)
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)

    need = n_samples * seq_len
    stream: list[int] = []
    used_docs = 0
    for start in range(0, len(order), _TOKENIZE_BATCH):
        batch = [docs[i] for i in order[start : start + _TOKENIZE_BATCH]]
        encoded = tokenizer(batch, add_special_tokens=False)["input_ids"]
        for ids in encoded:
            stream.extend(ids)
            if eos is not None:
                stream.append(int(eos))
            used_docs += 1
            if len(stream) >= need:
                break
        if len(stream) >= need:
            break

    n_chunks = min(n_samples, len(stream) // seq_len)
    if n_chunks == 0:
        raise DataError(
            f"calibration source {name} is too short: it holds {len(stream)} tokens (with EOS separators) but one "
            f"sample needs seq_len={seq_len}. Use a smaller seq_len or more text."
        )
    if n_chunks < n_samples:
        warnings.warn(
            f"calibration source {name} holds only {len(stream)} tokens: using {n_chunks} samples of {seq_len} "
            f"tokens instead of the {n_samples} requested ({need} tokens needed). Use more text, a smaller "
            f"seq_len or fewer n_samples to silence this.",
            stacklevel=2,
        )
    used = n_chunks * seq_len
    input_ids = torch.tensor(stream[:used], dtype=torch.long).view(n_chunks, seq_len)
    description = (
        f"{name}: {n_chunks} x {seq_len} tokens = {used} tokens from {used_docs} of {len(docs)} documents "
        f"(EOS-joined, packed), seed {seed}"
    )
    return Calibration(input_ids, description, used, source=name, seed=seed, documents_used=used_docs)


def as_token_tensor(calibration: Any) -> tuple[torch.Tensor, str]:
    """Accept a Calibration or a LongTensor (n_samples, seq_len); return the tensor and a description."""
    if isinstance(calibration, Calibration):
        return calibration.input_ids, calibration.description
    if isinstance(calibration, torch.Tensor):
        if calibration.dim() != 2 or calibration.dtype not in (torch.long, torch.int32, torch.int64):
            raise DataError(
                f"calibration tensor must be integer token ids shaped (n_samples, seq_len), got "
                f"{tuple(calibration.shape)} {calibration.dtype}."
            )
        n, t = calibration.shape
        if n == 0 or t == 0:
            raise DataError("calibration tensor is empty.")
        return calibration.long(), f"token tensor: {n} x {t} tokens = {n * t} tokens"
    raise DataError(f"calibration must be a Calibration (from load_calibration) or a LongTensor, got {type(calibration).__name__}.")
