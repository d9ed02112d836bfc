"""`run_recipe`: execute a recipe step by step, resumably, in an output directory it owns.

Why steps with a completion record: on a GPU a 7B run is hours of scoring, fine-tuning, quantising and
evaluating; an interruption must not cost the finished parts. Every step writes its outputs atomically and, only
then, records itself in `<output>/recipe_state.json` together with a *fingerprint* of the settings it depends on
(chained through the steps before it) and the size and hash of every file it wrote. A rerun skips a step only if
its fingerprint matches and every output is still there, unchanged; so changing `evaluate.limit` re-runs only the
evaluation, changing `drop.n` re-runs the drop and everything after it, and a truncated checkpoint is rebuilt.

Why it owns its output directory: it replaces its own earlier outputs as steps re-run, so it refuses to start in a
directory that holds anything else (a user's files) unless told to `overwrite`.

Steps, in order (optional ones only when their section is present):
    score -> evaluate_baseline -> drop -> recover -> quantize -> evaluate -> report
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

from layerdrop_patch.files import atomic_write_json, atomic_write_text, claim_directory, digest
from layerdrop_patch.run.recipe import Recipe, load_recipe
from layerdrop_patch.selection.registry import METHODS

__all__ = ["run_recipe", "plan_steps", "fingerprints", "STATE_FILE", "RunState"]

STATE_FILE = "recipe_state.json"
STATE_FORMAT = "layerdrop-recipe-state/2"
_HASHED_WHOLE = 64 * 1024 * 1024  # larger files are fingerprinted by size plus their first and last MiB


def plan_steps(recipe: Recipe) -> list[str]:
    if recipe.drop.planned:  # a target: planned from scores unless the plan measures losses itself
        needs_scores = (recipe.plan.quality if recipe.plan else "scores") == "scores"
    else:
        needs_scores = "scores" in METHODS[recipe.drop.method].needs
    steps = ["score"] if needs_scores else []
    if recipe.evaluate.baseline:
        steps.append("evaluate_baseline")
    steps.append("drop")
    steps += [s for s in ("recover", "quantize") if getattr(recipe, s) is not None]
    return steps + ["evaluate", "report"]


def fingerprints(recipe: Recipe, steps: list[str]) -> dict[str, str]:
    """Per-step hash of the settings it depends on, chained through the model-producing steps before it."""
    r = recipe.to_dict()
    base = {k: r.get(k) for k in ("model", "dtype", "device_map")}
    fp: dict[str, str] = {}
    chain = digest(base)
    if "score" in steps:
        fp["score"] = chain = digest(chain, r["calibration"], r["drop"]["metric"])
    fp["evaluate_baseline"] = digest(base, r["evaluate"])
    fp["drop"] = chain = digest(chain, r["drop"], r["calibration"], r.get("plan"), r.get("bench"))
    for step in ("recover", "quantize"):
        if step in steps:
            fp[step] = chain = digest(chain, r[step], r["calibration"])
    fp["evaluate"] = digest(chain, r["evaluate"])
    fp["report"] = digest(fp["evaluate"], fp["evaluate_baseline"] if "evaluate_baseline" in steps else None)
    return {s: fp[s] for s in steps}


def _file_fingerprint(path: Path) -> str:
    size = path.stat().st_size
    hashed = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        if size <= _HASHED_WHOLE:
            while block := fh.read(1 << 20):
                hashed.update(block)
        else:
            hashed.update(fh.read(1 << 20))
            fh.seek(-(1 << 20), 2)
            hashed.update(fh.read(1 << 20))
    return hashed.hexdigest()[:24]


def _outputs_manifest(out: Path, outputs: list[str]) -> dict[str, str]:
    """{relative file: fingerprint} for every file under the step's outputs (directories expanded)."""
    manifest = {}
    for rel in outputs:
        path = out / rel
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            manifest[str(file.relative_to(out))] = _file_fingerprint(file)
    return manifest


class RunState:
    """Shared state of one run: the model in memory (and where it came from), the completion record."""

    def __init__(self, recipe: Recipe, out: Path, log: Callable[[str], None], progress: bool):
        self.recipe, self.out, self.log, self.progress = recipe, out, log, progress
        self.state_path = out / STATE_FILE
        self.model = self.tokenizer = None
        self.loaded_from: Any = None  # "base", or the record of the step whose checkpoint is in memory
        self.state = self._read_state()

    def _read_state(self) -> dict:
        try:
            state = json.loads(self.state_path.read_text())
            if state.get("format") == STATE_FORMAT and isinstance(state.get("steps"), dict):
                return state
        except (OSError, ValueError):
            pass
        return {"format": STATE_FORMAT, "steps": {}}

    def record(self, step: str, fingerprint: str, result: dict, seconds: float) -> None:
        self.state["steps"][step] = {"fingerprint": fingerprint, "seconds": round(seconds, 2),
                                     "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "result": result,
                                     "files": _outputs_manifest(self.out, result.get("outputs", []))}
        atomic_write_json(self.state_path, self.state)

    def is_done(self, step: str, fingerprint: str) -> bool:
        """Finished with these settings, and every file it wrote is still there, unchanged."""
        rec = self.state["steps"].get(step)
        if not rec or rec.get("fingerprint") != fingerprint or not isinstance(rec.get("files"), dict):
            return False
        try:
            return all(_file_fingerprint(self.out / rel) == fp for rel, fp in rec["files"].items())
        except OSError:
            return False

    def result(self, step: str) -> dict:
        return self.state["steps"][step]["result"]

    # ----------------------------------------------------------------------------------- models
    def base_model(self):
        """The unpruned model (reloaded if a pruned one is in memory: drops are in place)."""
        from layerdrop_patch.models import load_model

        if self.loaded_from != "base":
            self.set_model(*load_model(self.recipe.model, self.recipe.load), "base")
        return self.model, self.tokenizer

    def current_model(self, steps: list[str], upto: str):
        """The model produced by the last model-producing step before `upto` (from memory or its checkpoint)."""
        from layerdrop_patch.models import load_model

        producers = [s for s in steps[: steps.index(upto)] if s in ("drop", "recover", "quantize")]
        source = self.result(producers[-1])
        if self.loaded_from is not source:
            model, tok = load_model(str(self.out / source["checkpoint"]), self.recipe.load)
            if source.get("adapter"):
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, str(self.out / source["adapter"])).eval()
            self.set_model(model, tok, source)
        return self.model, self.tokenizer

    def set_model(self, model, tokenizer, loaded_from) -> None:
        self.model, self.tokenizer, self.loaded_from = model, tokenizer, loaded_from

    def calibration(self):
        return self.recipe.calibration.load(self.tokenizer)


def run_recipe(path: str | Path, resume: bool = True, *, out: str | Path | None = None,
               overrides: list[str] | tuple[str, ...] = (), log: Callable[[str], None] | None = None,
               progress: bool = True, overwrite: bool = False) -> dict:
    """Execute a recipe; returns the summary (also written to `<output>/summary.json`).

    `out` overrides the recipe's `output`; `overrides` are `section.key=value` strings; `resume=False` ignores
    the completion record and redoes every step; `overwrite=True` lets the run use a directory that holds other
    files (its own outputs in it are replaced).
    """
    from layerdrop_patch.run import steps as recipe_steps

    recipe, text = load_recipe(path, overrides)
    if out is not None:
        recipe.output = str(out)
    out_dir = claim_directory(recipe.output, "recipe", overwrite)
    log = log or print
    run = RunState(recipe, out_dir, log, progress)
    if not resume:
        run.state = {"format": STATE_FORMAT, "steps": {}}
    atomic_write_text(out_dir / "recipe.yaml", text)  # provenance: the file exactly as given
    atomic_write_json(out_dir / "recipe.resolved.json", recipe.to_dict())  # ... and with every default filled in

    steps = plan_steps(recipe)
    fps = fingerprints(recipe, steps)
    for i, step in enumerate(steps, 1):
        if resume and run.is_done(step, fps[step]):
            log(f"[{i}/{len(steps)}] {step}: already done (recorded in {STATE_FILE}, outputs verified), skipped")
            continue
        log(f"[{i}/{len(steps)}] {step} ...")
        start = time.perf_counter()
        result = recipe_steps.STEPS[step](run, steps)
        seconds = time.perf_counter() - start
        run.record(step, fps[step], result, seconds)
        log(f"[{i}/{len(steps)}] {step}: done in {seconds:.1f} s")
    return json.loads((out_dir / "summary.json").read_text())
