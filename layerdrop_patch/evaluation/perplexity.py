"""Sliding-window perplexity on WikiText-2 / C4 / any text: the fast accuracy proxy.

Why: a full lm-eval run takes hours on a CPU; perplexity on a few thousand tokens ranks drop configurations
in minutes.

Method (the standard strided evaluation): the token stream is cut into windows of `seq_len` tokens whose
starts are `stride` apart. In each window only the tokens not already scored by the previous window (its
"tail", at most `stride` tokens) are scored, so every token is scored exactly once and with up to
`seq_len - stride` tokens of extra left context. The very first token of the stream has no context and is
never scored. With `stride == seq_len` the windows do not overlap (the GPTQ/ShortGPT convention): the first
token of every window is then not scored either, because nothing inside the window predicts it.
Log-probabilities are computed in fp32 whatever the model dtype, and the negative log-likelihoods are
summed in float64: ppl = exp(Σ NLL / number of scored tokens).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from layerdrop_patch.errors import ConfigError, DataError

DATASETS = ("wikitext2", "c4")
_ALIASES = {"wikitext": "wikitext2", "wikitext-2": "wikitext2", "wikitext2_raw": "wikitext2",
            "wikitext-2-raw-v1": "wikitext2", "c4_validation": "c4"}


def load_text(dataset: str | Path) -> str:
    """Text for a dataset name (the held-out part of the bundled "wikitext2" or "c4", never the calibration
    part: see `layerdrop_patch.corpora`), a `pathlib.Path` to a UTF-8 file, or the text itself.

    A short string without whitespace that is not a known name is treated as a typo, not as text.
    """
    from layerdrop_patch.corpora import heldout_text

    if isinstance(dataset, Path):
        try:
            return dataset.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"perplexity text {dataset} is not a readable UTF-8 file ({err}).") from None
    name = _ALIASES.get(dataset.strip().lower(), dataset.strip().lower())
    if name in DATASETS:
        return heldout_text(name)
    if len(dataset) < 64 and not any(ch.isspace() for ch in dataset):
        raise ConfigError(f"Unknown perplexity dataset {dataset!r}; use one of {', '.join(DATASETS)}, a "
                         f"pathlib.Path to a text file, or pass the text itself.")
    return dataset


def window_plan(n_tokens: int, seq_len: int, stride: int) -> list[tuple[int, int, int]]:
    """[(begin, end, first_scored)] for each window; tokens first_scored..end-1 are scored in it."""
    if seq_len < 2:
        raise ConfigError(f"seq_len must be >= 2, got {seq_len}")
    if not 1 <= stride <= seq_len:
        raise ConfigError(f"stride must be in [1, seq_len={seq_len}], got {stride}")
    plan, prev_end, begin = [], 0, 0
    while prev_end < n_tokens:
        end = min(begin + seq_len, n_tokens)
        first = max(prev_end, begin + 1)
        if first < end:
            plan.append((begin, end, first))
        prev_end = end
        begin += stride
    return plan


_TOKENS_CACHE: dict[tuple[int, str], torch.Tensor] = {}


def _token_stream(tokenizer: Any, dataset: str | Path) -> torch.Tensor:
    """Token ids of the whole text; bundled corpora are tokenized once per tokenizer (benchmarks call this often)."""
    key = (id(tokenizer), dataset) if isinstance(dataset, str) and dataset in DATASETS + tuple(_ALIASES) else None
    if key in _TOKENS_CACHE:
        return _TOKENS_CACHE[key]
    ids = tokenizer(load_text(dataset), return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    if key is not None:
        _TOKENS_CACHE.clear()  # one entry: a different tokenizer or corpus replaces it
        _TOKENS_CACHE[key] = ids
    return ids


@torch.inference_mode()
def perplexity(
    model: Any,
    tokenizer: Any,
    dataset: str | Path = "wikitext2",
    seq_len: int = 1024,
    stride: int | None = 512,
    max_tokens: int | None = None,
    progress: bool = True,
    return_details: bool = False,
    batch_size: int = 4,
) -> float | dict[str, Any]:
    """Strided perplexity of `model` on `dataset` (see the module docstring for exactly what is scored).

    Args:
        dataset: "wikitext2", "c4" (their held-out parts, `layerdrop_patch.corpora`), a `Path` to a text file,
            or the text itself.
        seq_len: window length in tokens (capped at the model's max_position_embeddings).
        stride: distance between window starts; None = seq_len (non-overlapping windows).
        max_tokens: only the first `max_tokens` tokens of the stream (quick runs); None = all.
        return_details: also return the number of scored tokens, the summed NLL, the settings, and the NLL and
            token count of every window (what paired comparisons of two models resample).
        batch_size: windows of equal length per forward pass.
    """
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if limit is not None and seq_len > limit:
        seq_len = int(limit)
    stride = seq_len if stride is None else min(int(stride), seq_len)
    ids = _token_stream(tokenizer, dataset)
    if max_tokens is not None:
        ids = ids[: int(max_tokens)]
    if ids.numel() < 2:
        raise DataError("The text is shorter than 2 tokens; nothing to score.")
    device = next(model.parameters()).device
    plan = window_plan(ids.numel(), seq_len, stride)
    batches: list[list[tuple[int, int, int]]] = []
    for window in plan:  # consecutive windows of one length share a forward pass
        if batches and len(batches[-1]) < batch_size and \
                batches[-1][0][1] - batches[-1][0][0] == window[1] - window[0]:
            batches[-1].append(window)
        else:
            batches.append([window])

    window_nll: list[float] = []
    window_tokens: list[int] = []
    from tqdm.auto import tqdm

    for batch in tqdm(batches, desc=f"perplexity ({seq_len}/{stride})", disable=not progress):
        windows = torch.stack([ids[begin:end] for begin, end, _ in batch]).to(device)
        logits = model(input_ids=windows, use_cache=False).logits
        for row, (begin, end, first) in enumerate(batch):
            # logits at position p predict token p+1; scored tokens are first..end-1 (window-relative offsets)
            pred = logits[row, first - begin - 1 : end - begin - 1].float()
            targets = windows[row, first - begin : end - begin]
            window_nll.append(float(torch.nn.functional.cross_entropy(pred, targets, reduction="sum").double()))
            window_tokens.append(int(targets.numel()))
    total_nll, total_tokens = math.fsum(window_nll), sum(window_tokens)
    ppl = math.exp(total_nll / total_tokens)
    if not return_details:
        return ppl
    return {"perplexity": ppl, "nll_sum": total_nll, "scored_tokens": total_tokens, "total_tokens": int(ids.numel()),
            "seq_len": seq_len, "stride": stride, "windows": len(plan), "window_nll": window_nll,
            "window_tokens": window_tokens,
            "dataset": dataset if isinstance(dataset, str) and len(dataset) < 64 else "<text>"}


def quick_perplexity(model, tokenizer, max_tokens: int = 8192, seq_len: int = 512) -> float:
    """WikiText-2 perplexity on the first `max_tokens` tokens (non-overlapping windows): the quality gate."""
    return float(perplexity(model, tokenizer, "wikitext2", seq_len=seq_len, stride=seq_len,
                            max_tokens=max_tokens, progress=False))
