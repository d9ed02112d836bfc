"""A tiny random Llama + byte-level tokenizer saved to a directory, so CLI and recipe tests pass a *path* as the
model argument exactly as a user would, and a small text file for perplexity (tokenising all of WikiText-2 with
the byte tokenizer takes seconds per call; the tests check plumbing, not language modelling)."""

from __future__ import annotations

from pathlib import Path

from layerdrop_patch.evaluation.toy import byte_tokenizer
from tests.conftest import tiny_model

NUM_LAYERS = 4
PPL_TEXT = ("The quick brown fox jumps over the lazy dog. " * 40).strip()


def save_tiny(directory: Path, num_layers: int = NUM_LAYERS, seed: int = 0) -> Path:
    """Write a tiny Llama (vocab 258 = the byte tokenizer's) and its tokenizer to `directory`."""
    model = tiny_model("llama", num_layers, seed=seed, vocab_size=258, bos_token_id=256, eos_token_id=256,
                       pad_token_id=257)
    model.config._attn_implementation = "sdpa"
    model.save_pretrained(directory)
    byte_tokenizer().save_pretrained(directory)
    return directory


def ppl_file(directory: Path) -> Path:
    path = directory / "ppl.txt"
    path.write_text(PPL_TEXT)
    return path
