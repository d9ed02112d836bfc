"""The bundled text corpora and their fixed split into calibration text and held-out evaluation text.

Why a split: scores and greedy selection are computed on calibration tokens, and a perplexity measured on those
same tokens would flatter exactly the drops that were chosen on them. So each bundled corpus is cut once, here,
into two disjoint parts, and every other module asks for one part by name:

* ``c4`` (2000 C4 validation documents): documents 0-1499 calibrate, documents 1500-1999 (about 250k tokens
  with SmolLM2's tokenizer) are held out.
* ``wikitext2`` (the WikiText-2 raw test split, 62 articles): the first 31 articles are held out (so held-out
  perplexity starts at the same text as the standard WikiText-2 protocol, about 156k tokens), the remaining 31
  calibrate.

Perplexity (`evaluation.perplexity`) reads only the held-out part; `load_calibration("c4" | "wikitext2")` only
the calibration part. A user's own file or hub dataset is used whole: keeping it apart is then the user's call.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from layerdrop_patch.errors import ConfigError, DataError

__all__ = ["CORPORA", "SPLITS", "documents", "heldout_text", "describe"]

DATA_DIR = Path(__file__).resolve().parent / "data"
CORPORA = {
    "c4": DATA_DIR / "c4" / "c4_validation_2k.parquet",
    "wikitext2": DATA_DIR / "wikitext2_raw" / "wikitext-2-raw-v1_test.txt",
}
SPLITS = ("calibration", "heldout")
_C4_HELDOUT_FROM = 1500
_ARTICLE = re.compile(r"\n\n = [^=\n][^\n]* = \n")


def _path(name: str) -> Path:
    if name not in CORPORA:
        raise ConfigError(f"unknown bundled corpus {name!r}; bundled: {', '.join(CORPORA)}")
    path = CORPORA[name]
    if not path.is_file():
        raise DataError(f"bundled data file {path} is missing; reinstall layerdrop-patch with its package data.")
    return path


@lru_cache(maxsize=4)
def _c4() -> tuple[str, ...]:
    import pyarrow.parquet as pq

    return tuple(t for t in pq.read_table(_path("c4"), columns=["text"]).column("text").to_pylist()
                 if isinstance(t, str))


@lru_cache(maxsize=2)
def _wikitext_articles() -> tuple[str, ...]:
    text = _path("wikitext2").read_text(encoding="utf-8")
    starts = [m.start() for m in _ARTICLE.finditer(text)] + [len(text)]
    return tuple(text[a:b] for a, b in zip(starts, starts[1:]))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")


def documents(name: str, split: str) -> list[str]:
    """The documents of one part of a bundled corpus (WikiText-2: paragraphs of its articles)."""
    _check_split(split)
    if name == "c4":
        docs = _c4()
        return list(docs[:_C4_HELDOUT_FROM] if split == "calibration" else docs[_C4_HELDOUT_FROM:])
    _path(name)
    articles = _wikitext_articles()
    half = len(articles) // 2
    chosen = articles[half:] if split == "calibration" else articles[:half]
    return [d for article in chosen for d in article.split("\n\n") if d.strip()]


def heldout_text(name: str) -> str:
    """The held-out part as one text, the way perplexity protocols feed it to a tokenizer."""
    if name == "c4":
        return "\n\n".join(documents("c4", "heldout"))
    _path(name)
    articles = _wikitext_articles()
    return "".join(articles[: len(articles) // 2])


def describe(name: str, split: str) -> str:
    if name == "c4":
        return ("bundled C4 validation, documents 0-1499 (calibration part)" if split == "calibration"
                else "bundled C4 validation, documents 1500-1999 (held out)")
    return ("bundled WikiText-2 raw test, articles 32-62 (calibration part)" if split == "calibration"
            else "bundled WikiText-2 raw test, articles 1-31 (held out)")
