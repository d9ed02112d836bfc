"""evaluate(): task resolution, subsampling, and one end-to-end offline run on a tiny random model."""

import math

import pytest

pytest.importorskip("lm_eval")

from layerdrop_patch.evaluation import EvalResult, TaskScore, evaluate, resolve_tasks  # noqa: E402
from layerdrop_patch.evaluation.harness import subsample_indices  # noqa: E402
from layerdrop_patch.evaluation.toy import byte_tokenizer, tiny_llama  # noqa: E402


def test_paper_settings_are_table5():
    specs = {s.name: s for s in resolve_tasks("paper")}
    assert list(specs) == ["arc_challenge", "boolq", "hellaswag", "mmlu", "openbookqa", "piqa", "rte", "winogrande"]
    shots = {n: s.num_fewshot for n, s in specs.items()}
    assert shots == {"arc_challenge": 25, "boolq": 0, "hellaswag": 10, "mmlu": 5, "openbookqa": 0, "piqa": 0,
                     "rte": 0, "winogrande": 5}
    assert {n for n, s in specs.items() if s.metric == "acc_norm"} == {"arc_challenge", "hellaswag", "openbookqa", "piqa"}
    gsm = resolve_tasks(["gsm8k"])[0]
    assert (gsm.num_fewshot, gsm.metric, gsm.filter) == (5, "exact_match", "strict-match")


def test_unknown_task_lists_known_ones():
    with pytest.raises(ValueError, match="Known tasks: .*arc_challenge.*task sets: paper"):
        resolve_tasks(["arc_challenge", "hellaswg"])
    assert [s.name for s in resolve_tasks("obqa,arc_e,ldp_rte")] == ["openbookqa", "arc_easy", "rte"]


def test_subsample_indices_reproducible_and_independent():
    a = subsample_indices({"x": 100, "y": 7}, 10, seed=1)
    assert a == subsample_indices({"x": 100, "y": 7}, 10, seed=1)
    assert a["x"] == subsample_indices({"x": 100}, 10, seed=1)["x"]  # other tasks do not shift the draw
    assert a["x"] != subsample_indices({"x": 100}, 10, seed=2)["x"]
    assert len(a["x"]) == 10 and len(set(a["x"])) == 10 and a["x"] == sorted(a["x"])
    assert a["y"] == list(range(7))
    with pytest.raises(ValueError):
        subsample_indices({"x": 3}, 0, seed=1)


def test_limit_and_subsample_are_exclusive():
    with pytest.raises(ValueError, match="either limit"):
        evaluate(None, None, tasks=["rte"], limit=2, subsample=2, offline=True)


def test_evaluate_end_to_end_offline_tiny_model():
    model, tok = tiny_llama(num_layers=2), byte_tokenizer()
    res = evaluate(model, tok, tasks=["rte", "piqa"], subsample=3, offline=True, num_fewshot={"rte": 1}, seed=7)
    assert list(res.scores) == ["rte", "piqa"]
    assert res.scores["rte"].num_fewshot == 1 and res.scores["piqa"].num_fewshot == 0
    assert res.scores["piqa"].metric == "acc_norm" and res.scores["rte"].metric == "acc"
    for s in res.scores.values():
        assert s.n_samples == 3
        assert s.value in (0.0, 1 / 3, 2 / 3, 1.0)
    assert res.average == pytest.approx((res["rte"] + res["piqa"]) / 2)
    assert res.settings["offline"] is True and res.settings["subsample"] == 3
    again = EvalResult.from_dict(res.to_dict())
    assert again.average == res.average
    md = res.to_markdown()
    assert "| rte | 1 | acc |" in md and "subsample=3" in md


def test_result_average_and_markdown():
    r = EvalResult(scores={"a": TaskScore("a", "acc", 0.5, 0.1, 0, "a"), "b": TaskScore("b", "acc_norm", 0.25, None, 5, "b")})
    assert r.average == pytest.approx(0.375)
    assert "**37.50**" in r.to_markdown()
    assert math.isnan(EvalResult(scores={}).average)
    with pytest.raises(KeyError, match="this result has a, b"):
        r["c"]
