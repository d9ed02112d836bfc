"""BANKING77 ICL: prompts respect the token budget, cover labels before repeating, long lengths are skipped."""

import pytest

from layerdrop_patch.evaluation.long_context import _read_split, banking77_icl, build_prompt
from layerdrop_patch.evaluation.toy import byte_tokenizer, tiny_llama


def test_prompt_budget_and_label_coverage():
    tok = byte_tokenizer()
    train = _read_split("train")
    prompt, k = build_prompt(tok, train, "Where is my card?", 3000, seed=0)
    assert len(tok(prompt)["input_ids"]) <= 3000
    assert prompt.endswith("Query: Where is my card?\nIntent:")
    labels = [line.split(": ", 1)[1] for line in prompt.split("\n") if line.startswith("Intent: ")]
    assert len(labels) == k and k > 10
    assert len(set(labels)) == len(labels)  # fewer than 77 demos: no label repeats yet
    bigger, k2 = build_prompt(tok, train, "Where is my card?", 6000, seed=0)
    assert k2 > k
    with pytest.raises(ValueError):
        build_prompt(tok, train, "x" * 100, 50, seed=0)


def test_banking77_runs_and_skips_beyond_model_limit():
    model = tiny_llama(num_layers=2, max_position_embeddings=512)
    out = banking77_icl(model, byte_tokenizer(), context_lengths=[256, 1024], n_eval=2, max_new_tokens=4, progress=False)
    assert out["skipped"] == [1024]
    r = out["results"][256]
    assert r["n"] == 2 and 0.0 <= r["accuracy"] <= 1.0 and r["prompt_tokens"] <= 256 - 4
