"""Recipes: validation errors that name the bad key, the shipped recipes, an end-to-end run on a tiny model,
and resume after an injected failure without redoing finished steps (proved by call counts and mtimes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from layerdrop_patch.errors import RecipeError
from layerdrop_patch.evaluation.suite import evaluate_model
from layerdrop_patch.models import load_model
from layerdrop_patch.run import pipeline
from layerdrop_patch.run import steps as recipe_steps
from layerdrop_patch.run.recipe import Recipe, load_recipe
from layerdrop_patch.run.runner import STATE_FILE, plan_steps, run_recipe
from tests.conftest import interrupt_greedy_after
from tests.tiny_checkpoint import ppl_file, save_tiny

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))
MINIMAL = {"model": "smollm2-135m", "drop": {"kind": "attn", "n": 4}}


def _problems(data) -> list[str]:
    with pytest.raises(RecipeError) as info:
        Recipe.from_mapping(data)
    return info.value.problems


# ------------------------------------------------------------------------------------------- validation
def test_minimal_recipe_gets_every_default():
    r = Recipe.from_mapping(MINIMAL)
    assert r.calibration.to_dict() == {"source": "c4", "n_samples": 32, "seq_len": 512, "seed": 0, "batch_size": 1}
    assert r.drop.method == "importance" and r.drop.protect == [] and r.load.dtype == "float32"
    assert r.recover is None and r.quantize is None and "recover" not in r.to_dict()
    assert plan_steps(r) == ["score", "evaluate_baseline", "drop", "evaluate", "report"]


def test_unknown_keys_are_named_with_the_closest_valid_one():
    problems = _problems({**MINIMAL, "calibration": {"n_sampels": 8}, "quantise": {"bits": 4}})
    assert "calibration.n_sampels: unknown key; did you mean 'n_samples'?" in problems
    assert "quantise: unknown key; did you mean 'quantize'?" in problems
    assert len(problems) == 2  # all problems reported at once


def test_bad_values_name_key_and_expected_type():
    problems = _problems({"model": "m", "drop": {"kind": "atn", "n": "four", "protect": "first"},
                          "evaluate": {"limit": -3}, "dtype": "fp8"})
    text = "\n".join(problems)
    assert "drop.kind: 'atn' is not one of attn, mlp, block, joint; did you mean 'attn'?" in text
    assert "drop.n: expected an integer, got 'four'" in text
    assert "drop.protect: expected a list of layer indices" in text
    assert "evaluate.limit: must be > 0, got -3" in text
    assert "dtype: 'fp8' is not one of float32, bfloat16, float16, auto" in text


def test_selection_method_written_as_kind_gets_a_hint():
    (problem,) = _problems({"model": "m", "drop": {"kind": "random", "n": 2}})
    assert problem.startswith("drop.kind: 'random' is not one of") and "write `method: random`" in problem


def test_missing_required_and_inconsistent_keys():
    assert _problems({"drop": {"kind": "attn", "n": 1}}) == [
        "model: required key is missing (hub id, local directory or `smollm2-135m`)"]
    assert any(p.startswith("drop.n / ratio: give exactly one") for p in _problems({"model": "m", "drop": {"kind": "attn"}}))
    assert any(p.startswith("drop.n / ratio: give exactly one") and "both" in p
               for p in _problems({"model": "m", "drop": {"kind": "attn", "n": 1, "ratio": 0.5}}))
    assert any("drop.mode: 'iterative'" in p for p in _problems(
        {"model": "m", "drop": {"kind": "attn", "n": 1, "mode": "iterative", "method": "random"}}))
    assert any(p.startswith("recover.merge:") for p in _problems(
        {**MINIMAL, "recover": {"merge": False}, "quantize": {}}))
    assert any(p.startswith("evaluate.tasks: Unknown task 'arc_eays'") for p in _problems(
        {**MINIMAL, "evaluate": {"tasks": ["arc_eays"]}}))


def test_yaml_numbers_without_a_dot_are_accepted_and_syntax_errors_give_the_line(tmp_path):
    r = Recipe.from_mapping({**MINIMAL, "recover": {"lr": "2e-4"}})
    assert r.recover.lr == pytest.approx(2e-4)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: m\ndrop:\n  kind: attn\n   n: 3\n")
    with pytest.raises(RecipeError, match=r"YAML syntax error at line 4"):
        load_recipe(bad)


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_are_valid(path):
    recipe, text = load_recipe(path)
    assert yaml.safe_load(text)["model"] == recipe.model
    steps = plan_steps(recipe)
    assert steps[-2:] == ["evaluate", "report"]
    for section in ("recover", "quantize"):
        assert (section in steps) == (getattr(recipe, section) is not None)


def test_the_shipped_recipe_set_covers_the_papers_main_settings():
    names = {p.stem for p in RECIPES}
    for setting in ("attn-drop", "joint-drop", "attn-drop-awq", "block-drop-lora"):
        assert {f"smollm2-{setting}", f"mistral7b-{setting}"} <= names, setting
    big = load_recipe(next(p for p in RECIPES if p.stem == "mistral7b-attn-drop"))[0]
    assert (big.calibration.n_samples, big.calibration.seq_len) == (256, 2048)  # the paper's calibration


# ------------------------------------------------------------------------------------------- running
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    save_tiny(root / "model")
    ppl_file(root)
    return root


def _write_recipe(tmp_path: Path, tiny_dir: Path, **sections) -> Path:
    data = {"model": str(tiny_dir / "model"), "calibration": {"n_samples": 4, "seq_len": 32},
            "drop": {"kind": "attn", "n": 2},
            "evaluate": {"tasks": [], "perplexity_dataset": str(tiny_dir / "ppl.txt"), "perplexity_tokens": 256,
                         "perplexity_seq_len": 64},
            "output": str(tmp_path / "run")}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class _Counter:
    """Wraps a module function, counting calls; `fail_first` makes the first call raise."""

    def __init__(self, monkeypatch, owner, name, fail_first=False):
        self.calls, self.fail_first, self.real = 0, fail_first, getattr(owner, name)
        monkeypatch.setattr(owner, name, self)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.fail_first and self.calls == 1:
            raise RuntimeError("injected failure")
        return self.real(*args, **kwargs)


def test_run_writes_every_artifact(tmp_path, tiny_dir):
    path = _write_recipe(tmp_path, tiny_dir)
    summary = run_recipe(path, log=lambda _: None, progress=False)
    out = tmp_path / "run"
    for name in ("scores.json", "importance.png", "drop_order.png", "drop_config.json", "eval_baseline.json",
                 "eval.json", "eval_table.md", "summary.json", "recipe.resolved.json", STATE_FILE,
                 "model-dropped/config.json", "model-dropped/modeling_layerdrop.py"):
        assert (out / name).exists(), name
    assert (out / "recipe.yaml").read_text() == path.read_text()  # provenance: the recipe exactly as given
    assert (out / "importance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the drop is the 2 lowest attention scores, chosen independently of the library's selection code
    attn = json.loads((out / "scores.json").read_text())["metrics"]["cosine"]["attn"]
    expected = sorted(sorted(range(len(attn)), key=lambda i: attn[i])[:2])
    config = json.loads((out / "model-dropped" / "config.json").read_text())
    assert config["drop_config"]["attn"] == expected and config["drop_config"]["mlp"] == []
    table = (out / "eval_table.md").read_text()
    assert "| | baseline | tiny |" in table and "ppl.txt perplexity" in table
    base_ppl, final_ppl = (summary["eval"][k]["perplexity"]["value"] for k in ("baseline", "tiny"))
    assert base_ppl != final_ppl  # the evaluated model really is the dropped one
    assert summary["final_checkpoint"] == "model-dropped"


def test_resume_after_injected_failure_skips_finished_steps(tmp_path, tiny_dir, monkeypatch):
    path = _write_recipe(tmp_path, tiny_dir, recover={"steps": 2, "batch_size": 2, "seq_len": 32, "merge": True, "eval_tokens": 0})
    out = tmp_path / "run"
    score = _Counter(monkeypatch, pipeline, "score_model")
    drop = _Counter(monkeypatch, pipeline, "drop_and_save")
    evaluate = _Counter(monkeypatch, recipe_steps, "evaluate_model")
    real_recover = recipe_steps.STEPS["recover"]
    recover_calls = []
    monkeypatch.setitem(recipe_steps.STEPS, "recover", lambda run, steps: recover_calls.append(1) or real_recover(run, steps))
    failing = {"armed": True}
    real_eval_step = recipe_steps.STEPS["evaluate"]

    def evaluate_step(run, steps):
        if failing.pop("armed", False):
            raise RuntimeError("injected failure in evaluate")
        return real_eval_step(run, steps)

    monkeypatch.setitem(recipe_steps.STEPS, "evaluate", evaluate_step)

    with pytest.raises(RuntimeError, match="injected failure in evaluate"):
        run_recipe(path, log=lambda _: None, progress=False)
    state = json.loads((out / STATE_FILE).read_text())  # the record is whole JSON after a crash
    assert list(state["steps"]) == ["score", "evaluate_baseline", "drop", "recover"]
    assert not (out / "eval.json").exists() and not (out / "summary.json").exists()
    mtimes = {p: (out / p).stat().st_mtime_ns for p in ("scores.json", "model-dropped/model.safetensors",
                                                         "model-recovered/model.safetensors", "eval_baseline.json")}
    assert (score.calls, drop.calls, len(recover_calls), evaluate.calls) == (1, 1, 1, 1)

    lines: list[str] = []
    summary = run_recipe(path, log=lines.append, progress=False)
    assert (score.calls, drop.calls, len(recover_calls)) == (1, 1, 1)  # nothing finished was redone
    assert evaluate.calls == 2  # only the final evaluation ran again
    assert {p: (out / p).stat().st_mtime_ns for p in mtimes} == mtimes
    assert sum("already done" in line for line in lines) == 4
    # the resumed evaluation loaded the recovered checkpoint from disk: it scores exactly what was saved
    assert summary["final_checkpoint"] == "model-recovered"
    model, tok = load_model(str(out / "model-recovered"))
    direct = evaluate_model(model, tok, perplexity_dataset=str(tiny_dir / "ppl.txt"), perplexity_tokens=256,
                            perplexity_seq_len=64, progress=False)
    assert summary["eval"]["tiny"]["perplexity"]["value"] == pytest.approx(direct["perplexity"]["value"], rel=1e-6)


def test_changed_settings_redo_only_the_steps_that_depend_on_them(tmp_path, tiny_dir, monkeypatch):
    path = _write_recipe(tmp_path, tiny_dir)
    run_recipe(path, log=lambda _: None, progress=False)
    score = _Counter(monkeypatch, pipeline, "score_model")
    drop = _Counter(monkeypatch, pipeline, "drop_and_save")
    evaluate = _Counter(monkeypatch, recipe_steps, "evaluate_model")
    run_recipe(path, log=lambda _: None, progress=False, overrides=["evaluate.perplexity_tokens=128"])
    assert (score.calls, drop.calls, evaluate.calls) == (0, 0, 2)  # baseline + final evaluation only
    run_recipe(path, log=lambda _: None, progress=False, overrides=["evaluate.perplexity_tokens=128", "drop.n=1"])
    assert (score.calls, drop.calls, evaluate.calls) == (0, 1, 3)  # scores reused; drop and final eval redone
    assert json.loads((tmp_path / "run" / "drop_config.json").read_text())["attn"].__len__() == 1
    run_recipe(path, resume=False, log=lambda _: None, progress=False)
    assert (score.calls, drop.calls) == (1, 2)


def test_a_missing_quantisation_backend_stops_the_run_after_the_earlier_steps(tmp_path, tiny_dir, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("gptqmodel") is not None:
        pytest.skip("GPTQModel is installed here; this test covers the message shown where it is not")
    path = _write_recipe(tmp_path, tiny_dir, quantize={"group_size": 32}, evaluate={"baseline": False})
    with pytest.raises((ImportError, ValueError)) as info:
        run_recipe(path, log=lambda _: None, progress=False)
    assert "gptqmodel" in str(info.value).lower() or "group_size" in str(info.value)
    state = json.loads((tmp_path / "run" / STATE_FILE).read_text())
    assert list(state["steps"]) == ["score", "drop"]


def test_a_recipe_interrupted_inside_a_greedy_drop_goes_on_from_the_recorded_steps(tmp_path, tiny_dir, monkeypatch):
    """Ctrl-C in the middle of the drop step's greedy selection (minutes per step on a real model): the rerun
    finishes with the uninterrupted run's drop, replaying the recorded steps instead of searching them again."""
    greedy = {"drop": {"kind": "joint", "n": 3, "method": "greedy"}, "evaluate": {"baseline": False}}
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    run_recipe(_write_recipe(reference_dir, tiny_dir, **greedy), log=lambda _: None, progress=False)
    reference = json.loads((reference_dir / "run" / "drop_config.json").read_text())

    path, out = _write_recipe(tmp_path, tiny_dir, **greedy), tmp_path / "run"
    with monkeypatch.context() as patch:
        interrupt_greedy_after(patch, steps=1)
        with pytest.raises(KeyboardInterrupt):
            run_recipe(path, log=lambda _: None, progress=False)
    assert not (out / STATE_FILE).exists()  # the drop is the first step: none finished
    assert not (out / "drop_config.json").exists() and not (out / "model-dropped").exists()
    assert len(json.loads((out / pipeline.SELECTION_HISTORY).read_text())["history"]) == 1

    summary = run_recipe(path, log=lambda _: None, progress=False)
    history = json.loads((out / pipeline.SELECTION_HISTORY).read_text())["history"]
    assert [h.get("resumed", False) for h in history] == [True, False, False]
    assert json.loads((out / "drop_config.json").read_text()) == reference
    assert summary["final_checkpoint"] == "model-dropped"
