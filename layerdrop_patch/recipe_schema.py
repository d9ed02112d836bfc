"""The recipe YAML schema: which keys exist, their types and defaults, and errors that name the bad key.

Why a hand-written schema and not a validation library: the errors are the product. A user who writes
`n_sampels:` must read "calibration.n_sampels: unknown key; did you mean 'n_samples'?", and one who writes
`kind: random` must be told that random is a *method*. Every problem in the file is reported at once.

A recipe (see `recipes/*.yaml`):

    model: smollm2-135m              # hub id, local directory or embedded name   (required)
    calibration: {source, n_samples, seq_len, seed, batch_size}
    drop: {kind, method, n | ratio, metric, mode, protect, keep_last, seed}   (required)
    recover: {steps, lr, rank, alpha, batch_size, seq_len, merge, data, seed, eval_tokens}  (optional: LoRA recovery)
    quantize: {backend, bits, group_size, sym, n_samples, seq_len, max_ppl_ratio} (optional: AWQ)
    evaluate: {tasks, limit, num_fewshot, batch_size, baseline, perplexity, perplexity_tokens, perplexity_seq_len}
    output: runs/name                # relative to the working directory
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["RecipeError", "SCHEMA", "validate_recipe", "apply_overrides"]


class RecipeError(ValueError):
    """A recipe that cannot run; `.problems` lists every problem (each names its key)."""

    def __init__(self, problems: list[str], source: str = "recipe"):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source} is not valid ({len(problems)} problem{'s' * (len(problems) > 1)}):\n{lines}")


@dataclass(frozen=True)
class Field:
    kind: str  # "str", "int", "float", "bool", "int_list", "str_list", "number_or_none"
    default: Any = None
    required: bool = False
    choices: tuple | None = None
    check: Callable[[Any], str | None] | None = None  # returns an error message or None
    doc: str = ""


def _positive(v: Any) -> str | None:
    return None if v is None or v > 0 else "must be > 0"


def _ratio(v: Any) -> str | None:
    return None if v is None or 0 < v <= 1 else "must be in (0, 1]"


def _non_negative(v: Any) -> str | None:
    return None if v is None or v >= 0 else "must be >= 0"


_METHODS = ("importance", "random", "reverse", "last-k")
_KINDS = ("attn", "mlp", "block", "joint")
_METRICS = ("cosine", "angular", "cosine_no_residual", "angular_no_residual")

SCHEMA: dict[str, Any] = {
    "name": Field("str", doc="a name for the run (default: the file name)"),
    "model": Field("str", required=True, doc="hub id, local directory or `smollm2-135m`"),
    "dtype": Field("str", "float32", choices=("float32", "bfloat16", "float16", "auto")),
    "device_map": Field("str", doc="e.g. auto (accelerate), for GPUs"),
    "output": Field("str", doc="output directory (default runs/<name>)"),
    "calibration": {
        "source": Field("str", "c4", doc="c4, wikitext2, a local file/dir, or a hub dataset"),
        "n_samples": Field("int", 32, check=_positive),
        "seq_len": Field("int", 512, check=_positive),
        "seed": Field("int", 0),
        "batch_size": Field("int", 1, check=_positive),
    },
    "drop": {
        "kind": Field("str", required=True, choices=_KINDS),
        "method": Field("str", "importance", choices=_METHODS),
        "n": Field("int", check=_non_negative),
        "ratio": Field("float", check=_ratio),
        "metric": Field("str", "cosine", choices=_METRICS),
        "mode": Field("str", "one-shot", choices=("one-shot", "iterative")),
        "protect": Field("int_list", []),
        "keep_last": Field("bool", False),
        "seed": Field("int", 0),
    },
    "recover": {
        "steps": Field("int", 200, check=_positive),
        "lr": Field("float", 2e-4, check=_positive),
        "rank": Field("int", 8, check=_positive),
        "alpha": Field("int", 16, check=_positive),
        "batch_size": Field("int", 4, check=_positive),
        "seq_len": Field("int", 256, check=_positive),
        "merge": Field("bool", True),
        "data": Field("str", "c4"),
        "seed": Field("int", 0),
        "eval_tokens": Field("int", 8192, check=_non_negative, doc="WikiText-2 tokens for perplexity before/after; 0 skips"),
    },
    "quantize": {
        "backend": Field("str", "gptqmodel", choices=("gptqmodel", "autoawq")),
        "bits": Field("int", 4, choices=(4,)),
        "group_size": Field("int", 64, check=_positive),
        "sym": Field("bool", True),
        "n_samples": Field("int", 128, check=_positive),
        "seq_len": Field("int", 512, check=_positive),
        "max_ppl_ratio": Field("float", 3.0, check=_positive),
    },
    "evaluate": {
        "tasks": Field("str_list", []),
        "limit": Field("number_or_none", check=_positive),
        "num_fewshot": Field("int", check=_non_negative, doc="None = the paper's shots per task"),
        "batch_size": Field("int", 8, check=_positive),
        "baseline": Field("bool", True, doc="also evaluate the unpruned model"),
        "perplexity": Field("bool", True),
        "perplexity_dataset": Field("str", "wikitext2"),
        "perplexity_tokens": Field("int", 8192, check=_positive),
        "perplexity_seq_len": Field("int", 512, check=_positive),
    },
}
OPTIONAL_SECTIONS = ("recover", "quantize")
_HINTS = {("drop", "kind"): "random, reverse and last-k are selection methods: write `method: {v}` and "
                            "`kind: attn|mlp|block|joint`"}


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(valid)}"


def _coerce(kind: str, value: Any) -> tuple[Any, str | None]:
    """(value in the field's type, None) or (None, what was expected)."""
    if value is None:
        return None, None
    if kind == "bool":
        return (value, None) if isinstance(value, bool) else (None, "expected true or false")
    if kind == "str":
        return (value, None) if isinstance(value, str) else (None, "expected a string")
    if kind == "int":
        return (value, None) if isinstance(value, int) and not isinstance(value, bool) else (None, "expected an integer")
    if kind in ("float", "number_or_none"):
        if isinstance(value, bool):
            return None, "expected a number"
        if kind == "number_or_none" and isinstance(value, int):
            return value, None
        try:  # PyYAML reads `2e-4` (no dot) as a string; accept it as the number it obviously is
            return float(value), None
        except (TypeError, ValueError):
            return None, "expected a number"
    if kind == "int_list":
        values = [value] if isinstance(value, int) and not isinstance(value, bool) else value
        if isinstance(values, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return list(values), None
        return None, "expected a list of layer indices, e.g. [0, 1]"
    if kind == "str_list":
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()], None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value), None
        return None, "expected a list of names, e.g. [arc_easy, piqa]"
    raise AssertionError(kind)


def _check_section(data: Any, schema: dict, prefix: str, problems: list[str]) -> dict:
    out: dict[str, Any] = {}
    if not isinstance(data, dict):
        problems.append(f"{prefix.rstrip('.') or 'recipe'}: expected a mapping of keys, got {type(data).__name__}")
        return out
    for key in data:
        if key not in schema:
            problems.append(f"{prefix}{key}: unknown key; {_suggest(str(key), list(schema))}")
    for key, spec in schema.items():
        path = f"{prefix}{key}"
        if isinstance(spec, dict):
            if key in data and data[key] is not None:
                out[key] = _check_section(data[key], spec, f"{path}.", problems)
            elif key not in OPTIONAL_SECTIONS:
                out[key] = _check_section({}, spec, f"{path}.", problems)
            continue
        if key not in data or data[key] is None:
            if spec.required:
                problems.append(f"{path}: required key is missing ({spec.doc or spec.kind})")
            out[key] = copy.deepcopy(spec.default)
            continue
        value, error = _coerce(spec.kind, data[key])
        if error:
            problems.append(f"{path}: {error}, got {data[key]!r}")
            continue
        if spec.choices and value not in spec.choices:
            hint = _HINTS.get(tuple(path.split(".")), "").format(v=value) if value in _METHODS else ""
            close = difflib.get_close_matches(str(value), [str(c) for c in spec.choices], n=1, cutoff=0.5)
            extra = hint or (f"did you mean {close[0]!r}?" if close else "")
            problems.append(f"{path}: {value!r} is not one of {', '.join(map(str, spec.choices))}"
                            + (f"; {extra}" if extra else ""))
            continue
        message = spec.check(value) if spec.check else None
        if message:
            problems.append(f"{path}: {message}, got {value!r}")
            continue
        out[key] = value
    return out


def _cross_checks(r: dict, problems: list[str]) -> None:
    drop = r.get("drop", {})
    if drop.get("n") is None and drop.get("ratio") is None:
        problems.append("drop.n / drop.ratio: give exactly one of them (how many units, or what fraction, to drop)")
    elif drop.get("n") is not None and drop.get("ratio") is not None:
        problems.append("drop.ratio: give either drop.n or drop.ratio, not both")
    if drop.get("mode") == "iterative" and drop.get("method") not in (None, "importance"):
        problems.append(f"drop.mode: 'iterative' re-scores by importance; it cannot be used with method "
                        f"{drop.get('method')!r} (set method: importance or mode: one-shot)")
    if drop.get("method") == "last-k" and drop.get("kind") == "joint":
        problems.append("drop.kind: last-k drops attn, mlp or block units; 'joint' has no meaning for it")
    if "recover" in r and "quantize" in r and r["recover"].get("merge") is False:
        problems.append("recover.merge: the recipe runs recover before quantize (LoRA -> merge -> AWQ), so the adapter "
                        "must be merged; set merge: true")
    ev = r.get("evaluate", {})
    if ev.get("tasks"):
        try:
            from layerdrop_patch.evaluation.settings import resolve_tasks

            resolve_tasks(ev["tasks"])
        except ValueError as err:
            problems.append(f"evaluate.tasks: {err}")


def validate_recipe(data: Any, source: str = "recipe") -> dict:
    """The recipe with every default filled in, or RecipeError listing all problems (each naming its key)."""
    problems: list[str] = []
    resolved = _check_section(data, SCHEMA, "", problems)
    if not problems:
        _cross_checks(resolved, problems)
    if problems:
        raise RecipeError(problems, source)
    return resolved


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`section.key=value` overrides (values parsed as YAML), e.g. `evaluate.limit=10`; returns a new dict."""
    import yaml

    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise RecipeError([f"--set {item!r}: expected KEY=VALUE, e.g. evaluate.limit=10"], "override")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError([f"--set {key}: {part} is not a section"], "override")
        node[parts[-1]] = yaml.safe_load(raw)
    return data
