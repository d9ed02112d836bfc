"""What the engine tests share: finding an engine (skip in the main suite, FAIL in the engine stage), one worker
per test module, and the comparison of an engine's greedy tokens with the patched model.

`LAYERDROP_REQUIRE_ENGINES=1` (set by .ci/test_engines.sh) turns a missing engine into a test failure: the stage
that exists to run the engines must not pass by skipping them.

Greedy equality is checked teacher-forced: the engine generates N tokens greedily; the patched model reads the
prompt plus those N tokens in one forward pass. The engine's tokens equal the patched model's greedy tokens
exactly when each of them is the model's argmax after the tokens before it, which is what `agreement` reports,
together with the model's log-probability of each engine token (compared with the engine's own logprob).
"""

from __future__ import annotations

import os

import pytest
import torch

from layerdrop_patch import DropConfig
from layerdrop_patch.errors import MissingDependencyError
from layerdrop_patch.evaluation.engines.registry import get_engine
from layerdrop_patch.evaluation.engines.worker import EngineWorker, engine_python

REQUIRED = os.environ.get("LAYERDROP_REQUIRE_ENGINES") == "1"
# What the SmolLM2-135M engine tests serve: three prompts, and the drop that trips engines most (layer 0's
# attention, attention-only and MLP-only layers)
SMOLLM2_TEXTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, there was a"]
SMOLLM2_HEAVY_DROP = DropConfig(attn=[0, 14, 16, 18, 20, 22], mlp=[21, 25, 27])


def require_engine(name: str) -> str:
    """The interpreter that runs engine `name`; skips the test where it is missing, fails in the engine stage."""
    try:
        return engine_python(get_engine(name))
    except MissingDependencyError as err:
        if REQUIRED:
            pytest.fail(f"LAYERDROP_REQUIRE_ENGINES=1 but {err}", pytrace=False)
        pytest.skip(f"{name} is not installed here (the engine stage, .ci/test_engines.sh, runs this test): {err}")


def start_worker(name: str) -> EngineWorker:
    """A started worker for engine `name` (one thread: stable timings and no spinning on a shared CPU)."""
    require_engine(name)
    return EngineWorker(get_engine(name), threads=1).start()


def agreement(model, prompt: list[int], tokens: list[int], logprobs: list[float] | None = None) -> dict:
    """How the engine's greedy `tokens` after `prompt` compare with `model` (see the module docstring)."""
    ids = torch.tensor([list(prompt) + list(tokens)])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1:-1].float()
    ours = logits.log_softmax(-1)
    chosen = ours.gather(1, torch.tensor(tokens)[:, None])[:, 0]
    top = ours.max(-1)
    disagree = [i for i, (a, b) in enumerate(zip(top.indices.tolist(), tokens)) if a != b]
    report = {"ours": top.indices.tolist(), "theirs": list(tokens), "disagree": disagree,
              "margins": [float(top.values[i] - chosen[i]) for i in disagree]}
    if logprobs is not None:
        report["max_logprob_diff"] = float((chosen - torch.tensor(logprobs)).abs().max())
        report["mean_logprob_diff"] = float((chosen - torch.tensor(logprobs)).abs().mean())
    return report


def assert_greedy_equal(model, prompt: list[int], tokens: list[int], logprobs: list[float] | None = None,
                        logprob_atol: float = 2e-3) -> dict:
    """The engine's greedy tokens are exactly the patched model's, and so (within `logprob_atol`) their logprobs."""
    assert len(tokens) > 0
    report = agreement(model, prompt, tokens, logprobs)
    assert report["theirs"] == report["ours"], f"the engine's greedy tokens differ from the patched model's: {report}"
    if logprobs is not None:
        assert report["max_logprob_diff"] <= logprob_atol, report
    return report


def assert_within_tolerance(model, prompt: list[int], tokens: list[int], logprobs: list[float], *,
                            max_margin: float, max_mean_logprob_diff: float) -> dict:
    """For lossy weight types: every engine token is the model's argmax or within `max_margin` nats of it (a
    near-tie the rounding may flip), and the engine's logprobs are on average within `max_mean_logprob_diff`."""
    report = agreement(model, prompt, tokens, logprobs)
    assert all(m <= max_margin for m in report["margins"]), f"an engine token far from the model's greedy: {report}"
    assert report["mean_logprob_diff"] <= max_mean_logprob_diff, report
    return report
