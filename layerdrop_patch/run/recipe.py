"""Recipes: a YAML file naming a whole run, read safely into a typed `Recipe` made of the stage configs.

    model: smollm2-135m              # hub id, local directory or embedded name   (required)
    dtype: float32                   # LoadConfig: dtype, device_map
    calibration: {...}               # CalibrationConfig
    drop: {kind, n | ratio, ...}     # SelectionConfig                             (required)
                                     # ... or a target: {target_speedup: 1.3} (planned, see `plan`, `bench`)
    plan: {...}                      # PlanConfig       (optional: how a target is planned)
    bench: {...}                     # BenchConfig      (optional: the workload a target is planned for)
    recover: {...}                   # RecoveryConfig   (optional: LoRA recovery)
    quantize: {...}                  # QuantizeConfig   (optional: AWQ)
    evaluate: {...}                  # EvaluationConfig
    output: runs/name                # relative to the working directory

Why the care in reading: a recipe may come from anywhere. YAML can nest anchors so that a few hundred bytes expand
to gigabytes, repeat a key so that the last one silently wins, or nest deeply enough to exhaust the stack. The
reader refuses files over `MAX_RECIPE_BYTES`, duplicate keys, nesting deeper than `MAX_DEPTH` and alias expansion
beyond `MAX_EXPANDED_NODES`, each with the line it happened on; values quoted in errors are cut short.
Validation names every bad key ("recover.sptes: unknown key; did you mean 'steps'?") and reports all at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from layerdrop_patch.errors import InputNotFoundError, RecipeError, shorten
from layerdrop_patch.evaluation.bench import BenchConfig
from layerdrop_patch.evaluation.suite import EvaluationConfig
from layerdrop_patch.models import LoadConfig
from layerdrop_patch.planning import PlanConfig
from layerdrop_patch.quantize.awq import QuantizeConfig
from layerdrop_patch.recover.lora import RecoveryConfig
from layerdrop_patch.scoring.calibration import CalibrationConfig
from layerdrop_patch.selection.config import SelectionConfig

__all__ = ["Recipe", "load_recipe", "parse_yaml", "apply_overrides", "MAX_RECIPE_BYTES"]

MAX_RECIPE_BYTES = 256 * 1024
MAX_DEPTH = 32
MAX_EXPANDED_NODES = 20_000
SECTIONS = {"calibration": CalibrationConfig, "drop": SelectionConfig, "plan": PlanConfig, "bench": BenchConfig,
            "recover": RecoveryConfig, "quantize": QuantizeConfig, "evaluate": EvaluationConfig}
OPTIONAL_SECTIONS = ("plan", "bench", "recover", "quantize")
TOP_LEVEL = {"model": "hub id, local directory or `smollm2-135m`", "name": "a name for the run (default: the file "
             "name)", "output": "output directory (default runs/<name>)"}


# ----------------------------------------------------------------------------------------------- safe YAML
class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, deep nesting and alias bombs."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._sizes: dict[int, int] = {}
        self._expanded = 0
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            self._count(self._sizes.get(id(node), 1), node)
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise self._error(f"nesting deeper than {MAX_DEPTH} levels")
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        children = node.value if isinstance(node.value, list) else []
        size = 1 + sum(self._sizes.get(id(c), 1) for pair in children
                       for c in (pair if isinstance(pair, tuple) else (pair,)))
        self._sizes[id(node)] = size
        self._count(1, node)
        return node

    def _count(self, n: int, node) -> None:
        self._expanded += n
        if self._expanded > MAX_EXPANDED_NODES:
            raise self._error(f"more than {MAX_EXPANDED_NODES} values once anchors/aliases are expanded", node)

    def _error(self, what: str, node=None) -> RecipeError:
        mark = getattr(node, "start_mark", None) or self.peek_event().start_mark
        return RecipeError([f"line {mark.line + 1}: {what}; a recipe is a small file of settings, write them out "
                            "plainly"], "recipe")

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise RecipeError([f"line {key_node.start_mark.line + 1}: a key must be a plain name, got "
                                   f"{shorten(key, 60)}"], "recipe")
            if key in seen:
                raise RecipeError([f"line {key_node.start_mark.line + 1}: key {shorten(key, 60)} appears twice (first "
                                   f"on line {seen[key]}); YAML would silently keep only the last one. Keep one."],
                                  "recipe")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, where: str = "recipe") -> Any:
    """Parse YAML text with the limits above; problems raise RecipeError naming `where` and the line."""
    if len(text.encode("utf-8", errors="replace")) > MAX_RECIPE_BYTES:
        raise RecipeError([f"the file is larger than {MAX_RECIPE_BYTES // 1024} KiB; a recipe is a small file of "
                           "settings"], where)
    loader = None
    try:
        loader = _BoundedLoader(text)  # the reader already refuses control characters here
        return loader.get_single_data()
    except RecipeError as err:
        raise RecipeError(err.problems, where) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError([f"YAML syntax error{at}: {str(getattr(err, 'problem', None) or err)[:200]}"],
                          where) from None
    except RecursionError:
        raise RecipeError([f"nesting deeper than {MAX_DEPTH} levels"], where) from None
    finally:
        if loader is not None:
            loader.dispose()


def apply_overrides(data: Any, overrides: list[str]) -> dict:
    """`section.key=value` overrides (values parsed as bounded YAML), e.g. `evaluate.limit=10`; a new dict."""
    import copy

    data = copy.deepcopy(data) if isinstance(data, dict) else {}
    for item in overrides:
        if "=" not in item:
            raise RecipeError([f"--set {shorten(item, 80)}: expected KEY=VALUE, e.g. evaluate.limit=10"], "override")
        key, raw = item.split("=", 1)
        parts = [p.strip() for p in key.strip().split(".")]
        if not all(parts) or len(parts) > 2:
            raise RecipeError([f"--set {shorten(key, 80)}: expected `key` or `section.key`, e.g. drop.n"], "override")
        try:
            value = parse_yaml(raw, f"--set {key}")
        except RecipeError as err:
            raise RecipeError([f"--set {key}: the value {shorten(raw, 80)} is not YAML ({err.problems[0]}); quote a "
                               "string, e.g. --set model='owner/name'"], "override") from None
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError([f"--set {key}: {part} is not a section"], "override")
        node[parts[-1]] = value
    return data


# ----------------------------------------------------------------------------------------------- the recipe
@dataclass
class Recipe:
    """A validated recipe: the stage configs of one run, with every default filled in."""

    model: str
    drop: SelectionConfig
    name: str | None = None
    output: str | None = None
    load: LoadConfig = dataclasses.field(default_factory=LoadConfig)
    calibration: CalibrationConfig = dataclasses.field(default_factory=CalibrationConfig)
    plan: PlanConfig | None = None
    bench: BenchConfig | None = None
    recover: RecoveryConfig | None = None
    quantize: QuantizeConfig | None = None
    evaluate: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)

    @classmethod
    def from_mapping(cls, data: Any, source: str = "recipe") -> "Recipe":
        problems: list[str] = []
        if not isinstance(data, dict):
            raise RecipeError([f"expected a mapping of keys at the top, got {type(data).__name__}"], source)
        load_keys = [f.name for f in dataclasses.fields(LoadConfig)]
        valid = [*TOP_LEVEL, *load_keys, *SECTIONS]
        for key in data:
            if key not in valid:
                import difflib

                close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
                problems.append(f"{str(key)[:60]}: unknown key; "
                                + (f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(valid)}"))
        values: dict[str, Any] = {}
        for key, help_text in TOP_LEVEL.items():
            value = data.get(key)
            if value is not None and not isinstance(value, str):
                problems.append(f"{key}: expected a string, got {shorten(value)}")
            elif value is None and key == "model":
                problems.append(f"model: required key is missing ({help_text})")
            values[key] = value
        values["load"] = LoadConfig.from_mapping({k: data[k] for k in load_keys if k in data}, "", problems)
        for key, config_cls in SECTIONS.items():
            if key in OPTIONAL_SECTIONS and data.get(key) is None:
                values[key] = None
            else:
                values[key] = config_cls.from_mapping(data.get(key), f"{key}.", problems)
        if not problems and values["recover"] is not None and values["quantize"] is not None \
                and not values["recover"].merge:
            problems.append("recover.merge: the recipe runs recover before quantize (LoRA -> merge -> AWQ), so the "
                            "adapter must be merged; set merge: true")
        if problems:
            raise RecipeError(problems, source)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain data (recipe.resolved.json, fingerprints)."""
        out: dict[str, Any] = {"name": self.name, "model": self.model, **self.load.to_dict(), "output": self.output}
        for key in SECTIONS:
            section = getattr(self, key)
            if section is not None:
                out[key] = section.to_dict()
        return out


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[Recipe, str]:
    """(validated Recipe with defaults, the file's text); RecipeError names every bad key."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"recipe {path} does not exist; the shipped ones are in recipes/*.yaml.")
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise RecipeError([f"the file is larger than {MAX_RECIPE_BYTES // 1024} KiB; a recipe is a small file of "
                           "settings"], str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise RecipeError([f"not UTF-8 text (byte {err.start}); save the recipe as UTF-8"], str(path)) from None
    data = parse_yaml(text, str(path))
    if data is None:
        raise RecipeError(["the file is empty; a recipe needs at least `model:` and `drop:`"], str(path))
    recipe = Recipe.from_mapping(apply_overrides(data, list(overrides)) if overrides else data, str(path))
    recipe.name = recipe.name or path.stem
    recipe.output = recipe.output or str(Path("runs") / recipe.name)
    return recipe, text
