"""Recipes: a YAML file that names a whole run (model, calibration, drop, optional LoRA recovery and AWQ,
evaluation, output directory), and `run_recipe`, which executes it step by step and can resume.

Why steps with a completion record: on a GPU a 7B run is hours of scoring, fine-tuning, quantising and
evaluating; an interruption must not cost the finished parts. Every step writes its outputs atomically
(temp file or staging directory renamed into place) and, only then, records itself in
`<output>/recipe_state.json` (also replaced atomically) together with a *fingerprint* of the recipe
settings it depends on (chained through the steps before it). A rerun skips a step whose record, fingerprint
and outputs are all present, so changing `evaluate.limit` re-runs only the evaluation, while changing
`drop.n` re-runs the drop and everything after it. `resume=False` starts over.

Steps, in order (optional ones only when their section is present):
    score -> evaluate_baseline -> drop -> recover -> quantize -> evaluate -> report
Recovery runs before quantisation (LoRA -> merge -> AWQ): it works with any peft and keeps the merged
checkpoint plain; adapters cannot be merged into 4-bit weights. The schema lives in `recipe_schema.py`.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

from layerdrop_patch import pipeline
from layerdrop_patch.recipe_schema import RecipeError, apply_overrides, validate_recipe

__all__ = ["RecipeError", "load_recipe", "plan_steps", "run_recipe", "STATE_FILE"]

STATE_FILE = "recipe_state.json"
STATE_FORMAT = "layerdrop-recipe-state/1"


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[dict, str]:
    """(validated recipe with defaults, original YAML text); RecipeError names every bad key."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} does not exist; the shipped ones are in recipes/*.yaml.")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError([f"YAML syntax error{where}: {getattr(err, 'problem', err)}"], str(path)) from None
    if data is None:
        raise RecipeError(["the file is empty; a recipe needs at least `model:` and `drop:`"], str(path))
    recipe = validate_recipe(apply_overrides(data, list(overrides)) if overrides else data, str(path))
    if not recipe.get("name"):
        recipe["name"] = path.stem
    if not recipe.get("output"):
        recipe["output"] = str(Path("runs") / recipe["name"])
    return recipe, text


def plan_steps(recipe: dict) -> list[str]:
    steps = []
    if recipe["drop"]["method"] == "importance":
        steps.append("score")
    if recipe["evaluate"]["baseline"]:
        steps.append("evaluate_baseline")
    steps.append("drop")
    steps += [s for s in ("recover", "quantize") if s in recipe]
    return steps + ["evaluate", "report"]


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprints(recipe: dict, steps: list[str]) -> dict[str, str]:
    """Per-step hash of the settings it depends on, chained through the model-producing steps before it."""
    base = {k: recipe.get(k) for k in ("model", "dtype", "device_map")}
    fp: dict[str, str] = {}
    chain = _digest(base)
    if "score" in steps:
        fp["score"] = chain = _digest(chain, recipe["calibration"], recipe["drop"]["metric"])
    fp["evaluate_baseline"] = _digest(base, recipe["evaluate"])
    fp["drop"] = chain = _digest(chain, recipe["drop"], recipe["calibration"])
    for step in ("recover", "quantize"):
        if step in steps:
            fp[step] = chain = _digest(chain, recipe[step], recipe["calibration"])
    fp["evaluate"] = _digest(chain, recipe["evaluate"])
    fp["report"] = _digest(fp["evaluate"], fp["evaluate_baseline"] if "evaluate_baseline" in steps else None)
    return {s: fp[s] for s in steps}


class _Run:
    """Shared state of one run: the model in memory (and where it came from), the completion record."""

    def __init__(self, recipe: dict, out: Path, log: Callable[[str], None], progress: bool):
        self.recipe, self.out, self.log, self.progress = recipe, out, log, progress
        self.state_path = out / STATE_FILE
        self.model = self.tokenizer = None
        self.loaded_from: Any = None  # "base", or the record of the step whose checkpoint is in memory
        self.state = self._read_state()

    def _read_state(self) -> dict:
        if self.state_path.is_file():
            try:
                state = json.loads(self.state_path.read_text())
                if state.get("format") == STATE_FORMAT:
                    return state
            except json.JSONDecodeError:
                pass
        return {"format": STATE_FORMAT, "steps": {}}

    def record(self, step: str, fingerprint: str, result: dict, seconds: float) -> None:
        self.state["steps"][step] = {"fingerprint": fingerprint, "seconds": round(seconds, 2),
                                     "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "result": result}
        pipeline.atomic_write_json(self.state_path, self.state)

    def is_done(self, step: str, fingerprint: str) -> bool:
        rec = self.state["steps"].get(step)
        if not rec or rec.get("fingerprint") != fingerprint:
            return False
        return all((self.out / p).exists() for p in rec["result"].get("outputs", []))

    def result(self, step: str) -> dict:
        return self.state["steps"][step]["result"]

    # ----------------------------------------------------------------------------------- models
    def base_model(self):
        """The unpruned model (reloaded if a pruned one is in memory: drops are in place)."""
        if self.loaded_from != "base":
            self._set(*pipeline.load_any(self.recipe["model"], self.recipe["dtype"], self.recipe["device_map"]), "base")
        return self.model, self.tokenizer

    def current_model(self, steps: list[str], upto: str):
        """The model produced by the last model-producing step before `upto` (from memory or its checkpoint)."""
        producers = [s for s in steps[: steps.index(upto)] if s in ("drop", "recover", "quantize")]
        source = self.result(producers[-1])
        if self.loaded_from is not source:
            model, tok = pipeline.load_any(str(self.out / source["checkpoint"]), self.recipe["dtype"],
                                           self.recipe["device_map"])
            if source.get("adapter"):
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, str(self.out / source["adapter"])).eval()
            self._set(model, tok, source)
        return self.model, self.tokenizer

    def _set(self, model, tokenizer, loaded_from) -> None:
        self.model, self.tokenizer, self.loaded_from = model, tokenizer, loaded_from

    def calibration(self):
        c = self.recipe["calibration"]
        return pipeline.calibration_for(self.tokenizer, c["source"], c["n_samples"], c["seq_len"], c["seed"])


def run_recipe(path: str | Path, resume: bool = True, *, out: str | Path | None = None,
               overrides: list[str] | tuple[str, ...] = (), log: Callable[[str], None] | None = None,
               progress: bool = True) -> dict:
    """Execute a recipe; returns the summary (also written to `<output>/summary.json`).

    `out` overrides the recipe's `output`; `overrides` are `section.key=value` strings; `resume=False` ignores
    the completion record and redoes every step.
    """
    from layerdrop_patch import recipe_steps

    recipe, text = load_recipe(path, overrides)
    if out is not None:
        recipe["output"] = str(out)
    out_dir = Path(recipe["output"])
    out_dir.mkdir(parents=True, exist_ok=True)
    log = log or print
    run = _Run(recipe, out_dir, log, progress)
    if not resume:
        run.state = {"format": STATE_FORMAT, "steps": {}}
    pipeline.atomic_write_text(out_dir / "recipe.yaml", text)  # provenance: the file exactly as given
    pipeline.atomic_write_json(out_dir / "recipe.resolved.json", recipe)  # ... and with every default filled in

    steps = plan_steps(recipe)
    fps = fingerprints(recipe, steps)
    for i, step in enumerate(steps, 1):
        if resume and run.is_done(step, fps[step]):
            log(f"[{i}/{len(steps)}] {step}: already done (recorded in {STATE_FILE}), skipped")
            continue
        log(f"[{i}/{len(steps)}] {step} ...")
        start = time.perf_counter()
        result = recipe_steps.STEPS[step](run, steps)
        seconds = time.perf_counter() - start
        run.record(step, fps[step], result, seconds)
        log(f"[{i}/{len(steps)}] {step}: done in {seconds:.1f} s")
    return json.loads((out_dir / "summary.json").read_text())
