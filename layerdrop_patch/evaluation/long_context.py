"""Long-context check: BANKING77 in-context intent classification at several context lengths (paper Table 11).

Why: dropping attention layers removes exactly the modules that move information across positions, so a
short-prompt benchmark can hide a long-context loss. Here the model sees as many labelled examples as fit in
a token budget and must name the intent of a new query; accuracy is tracked as the budget grows.

Protocol (this project's, sized for small models and CPUs; LongICLBench-style):
- demonstrations "Query: <text>\\nIntent: <label>\\n\\n" are drawn from the train split with `seed`, round-robin
  over the 77 labels in a shuffled order (so that every label appears before any repeats), until adding the
  next one would exceed `context_length - max_new_tokens` tokens together with the query;
- the query "Query: <text>\\nIntent:" comes from the test split (`n_eval` of them, drawn with `seed`, the same
  queries at every length);
- the model generates greedily up to `max_new_tokens`; the prediction is the first line, stripped; the
  score is exact match with the label name (labels are snake_case, e.g. `card_arrival`).
Context lengths above the model's `max_position_embeddings` are skipped and reported as such.
"""

from __future__ import annotations

import csv
import random
from typing import Any, Sequence

import torch

from layerdrop_patch.errors import ConfigError
from layerdrop_patch.evaluation.local_data import data_path


def _read_split(split: str) -> list[tuple[str, str]]:
    with open(data_path("banking77", f"{split}.csv"), encoding="utf-8", newline="") as fh:
        return [(r["text"].strip(), r["category"].strip()) for r in csv.DictReader(fh)]


def _demo(text: str, label: str) -> str:
    return f"Query: {text}\nIntent: {label}\n\n"


def build_prompt(tokenizer: Any, train: Sequence[tuple[str, str]], query: str, budget: int, seed: int) -> tuple[str, int]:
    """(prompt, number of demonstrations) with the prompt at most `budget` tokens long."""
    rng = random.Random(seed)
    by_label: dict[str, list[str]] = {}
    for text, label in train:
        by_label.setdefault(label, []).append(text)
    labels = sorted(by_label)
    rng.shuffle(labels)
    pools = {lab: rng.sample(texts, len(texts)) for lab, texts in by_label.items()}
    tail = f"Query: {query}\nIntent:"
    used = len(tokenizer(tail, add_special_tokens=False)["input_ids"])
    if used > budget:
        raise ConfigError(f"The query alone needs {used} tokens, more than the budget {budget}.")
    demos: list[str] = []
    rounds = 0
    while True:
        for lab in labels:
            if rounds >= len(pools[lab]):
                continue
            d = _demo(pools[lab][rounds], lab)
            n = len(tokenizer(d, add_special_tokens=False)["input_ids"])
            if used + n > budget:
                return "".join(demos) + tail, len(demos)
            demos.append(d)
            used += n
        rounds += 1
        if all(rounds >= len(p) for p in pools.values()):
            return "".join(demos) + tail, len(demos)


@torch.inference_mode()
def banking77_icl(model: Any, tokenizer: Any, context_lengths: Sequence[int] = (512, 1024, 2048), n_eval: int = 50,
                  seed: int = 0, max_new_tokens: int = 12, progress: bool = True) -> dict[str, Any]:
    """Accuracy of BANKING77 in-context classification per context length (see the module docstring).

    Returns {"results": {length: {"accuracy", "n", "demonstrations", "prompt_tokens"}}, "skipped": [lengths
    beyond the model's limit], "settings": {...}}.
    """
    from tqdm.auto import tqdm

    limit = getattr(model.config, "max_position_embeddings", None)
    train, test = _read_split("train"), _read_split("test")
    queries = random.Random(seed).sample(test, min(n_eval, len(test)))
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    results, skipped = {}, []
    for length in context_lengths:
        if limit is not None and length > limit:
            skipped.append(length)
            continue
        correct, demos, tokens = 0, [], []
        for i, (text, label) in enumerate(tqdm(queries, desc=f"BANKING77 @ {length}", disable=not progress)):
            prompt, k = build_prompt(tokenizer, train, text, length - max_new_tokens, seed + i)
            ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=eos if isinstance(eos, int) else 0)
            answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip().split("\n")[0].strip()
            correct += int(answer == label)
            demos.append(k)
            tokens.append(int(ids.shape[1]))
        results[length] = {"accuracy": correct / len(queries), "n": len(queries),
                           "demonstrations": sum(demos) / len(demos), "prompt_tokens": max(tokens)}
    return {"results": results, "skipped": skipped,
            "settings": {"n_eval": len(queries), "seed": seed, "max_new_tokens": max_new_tokens,
                         "max_position_embeddings": limit}}
