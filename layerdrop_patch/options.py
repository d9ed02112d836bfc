"""Typed stage configs: each option of each stage, with its default, type, help and checks, written once.

Every stage (calibration, selection, recovery, quantisation, evaluation, benchmarking, planning, export) keeps its
options in one dataclass deriving from `StageConfig`, declared with `option(...)`. Three surfaces read that one
declaration, so a name or a default cannot drift between them:

* the Python API takes the dataclass (`recover_lora(model, tok, RecoveryConfig(steps=50))`, or keywords that
  build it);
* the CLI derives its options, their defaults and their help from the fields (`cli/options.py`);
* a recipe is a `Recipe` composed of these dataclasses, validated by `from_mapping`, whose errors name the key
  ("recover.sptes: unknown key; did you mean 'steps'?") and report every problem at once.

Types come from the annotations: int, float, bool, str, `X | None`, `list[int]`, `list[str]`, `int | float`.
Choices may be a callable, so that a registry (metrics, selection methods, export formats) is the one list of
valid names and adding an entry needs no edit here.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Callable, ClassVar, Iterable

from layerdrop_patch.errors import ConfigError, RecipeError, shorten

__all__ = ["option", "StageConfig", "field_choices", "field_type"]


def option(default: Any = dataclasses.MISSING, help: str = "", *, choices: Iterable | Callable | None = None,
           check: Callable[[Any], str | None] | None = None, hint: Callable[[Any], str | None] | None = None,
           flag: str | tuple[str, ...] | None = None) -> Any:
    """A StageConfig field. `check(value)` returns a problem ("must be > 0") or None; `hint(value)` adds advice
    to a wrong choice; `flag` overrides the CLI flag name(s) (e.g. ("--n", "-n")); without it the flag is the
    field name (`--n-samples`). Lists default to a fresh copy each time."""
    metadata = {"help": help, "choices": choices, "check": check, "hint": hint, "flag": flag}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda d=default: list(d), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def positive(value: Any) -> str | None:
    return None if value is None or value > 0 else "must be > 0"


def non_negative(value: Any) -> str | None:
    return None if value is None or value >= 0 else "must be >= 0"


def above_one(value: Any) -> str | None:
    return None if value is None or value > 1 else "must be > 1 (a speed-up: 1.3 = 30% faster)"


def fraction(value: Any) -> str | None:
    return None if value is None or 0 < value <= 1 else "must be in (0, 1]"


def field_choices(field: dataclasses.Field) -> tuple | None:
    choices = field.metadata.get("choices")
    if choices is None:
        return None
    return tuple(choices() if callable(choices) else choices)


def field_type(cls: type, field: dataclasses.Field) -> Any:
    return typing.get_type_hints(cls)[field.name]


def _args(tp: Any) -> tuple:
    return typing.get_args(tp) if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union else (tp,)


def _coerce(tp: Any, value: Any) -> tuple[Any, str | None]:
    """(value in type `tp`, None) or (None, what was expected)."""
    options = _args(tp)
    if value is None:
        return (None, None) if type(None) in options else (None, "a value is required")
    for kind in [o for o in options if o is not type(None)]:
        origin = typing.get_origin(kind)
        if kind is bool:
            if isinstance(value, bool):
                return value, None
        elif kind is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value, None
        elif kind is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value), None
            if isinstance(value, str):  # PyYAML reads `2e-4` (no dot) as a string; it is obviously a number
                try:
                    return float(value), None
                except ValueError:
                    pass
        elif kind is str:
            if isinstance(value, str):
                return value, None
        elif origin is list:
            (item,) = typing.get_args(kind)
            if isinstance(value, str) and item is str:
                return [v.strip() for v in value.split(",") if v.strip()], None
            values = [value] if isinstance(value, int) and not isinstance(value, bool) and item is int else value
            if isinstance(values, (list, tuple)) and all(
                    isinstance(v, item) and not (item is int and isinstance(v, bool)) for v in values):
                return list(values), None
    return None, _expected(options)


def _expected(options: tuple) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    parts = []
    for kind in options:
        if kind is type(None):
            continue
        if typing.get_origin(kind) is list:
            item = typing.get_args(kind)[0]
            parts.append("a list of layer indices, e.g. [0, 1]" if item is int else "a list of names, e.g. [a, b]")
        else:
            parts.append(names.get(kind, getattr(kind, "__name__", str(kind))))
    return "expected " + " or ".join(parts)


def _suggest(value: str, valid: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(str(value), [str(v) for v in valid], n=1, cutoff=0.5)
    return f"did you mean {close[0]!r}?" if close else None


@dataclasses.dataclass
class StageConfig:
    """Base of every stage's options. Construction validates (ConfigError naming each bad field);
    `from_mapping` validates a recipe section and collects every problem instead of stopping at the first."""

    section: ClassVar[str] = ""  # the recipe key this config lives under, e.g. "recover"

    def __post_init__(self) -> None:
        problems = self._validate(self.section + "." if self.section else "")
        if problems:
            raise ConfigError("; ".join(problems))

    def checks(self) -> list[str]:
        """Cross-field rules (each problem names its key); overridden where a stage has any."""
        return []

    @classmethod
    def _check_field(cls, field: dataclasses.Field, value: Any, path: str) -> tuple[Any, str | None]:
        """(value coerced to the field's type, None) or (None, the problem, naming `path`)."""
        coerced, error = _coerce(field_type(cls, field), value)
        if error:
            return None, f"{path}: {error}, got {shorten(value)}"
        choices = field_choices(field)
        if choices is not None and coerced is not None and coerced not in choices:
            advice = (field.metadata["hint"] and field.metadata["hint"](coerced)) or _suggest(coerced, choices)
            return None, (f"{path}: {shorten(coerced)} is not one of {', '.join(map(str, choices))}"
                          + (f"; {advice}" if advice else ""))
        message = field.metadata.get("check") and field.metadata["check"](coerced)
        if message:
            return None, f"{path}: {message}, got {shorten(coerced)}"
        return coerced, None

    def _validate(self, prefix: str) -> list[str]:
        problems: list[str] = []
        for field in dataclasses.fields(self):
            value, problem = self._check_field(field, getattr(self, field.name), f"{prefix}{field.name}")
            if problem:
                problems.append(problem)
            else:
                object.__setattr__(self, field.name, value)
        if not problems:
            problems += [f"{prefix}{p}" for p in self.checks()]
        return problems

    @classmethod
    def check_fields(cls, **values: Any) -> dict[str, Any]:
        """Validate some fields on their own (types, choices, checks; no cross-field rules): for a command that
        takes only a few of a stage's options."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        out, problems = {}, []
        for name, value in values.items():
            out[name], problem = cls._check_field(fields[name], value, name)
            if problem:
                problems.append(problem)
        if problems:
            raise ConfigError("; ".join(problems))
        return out

    @classmethod
    def from_mapping(cls, data: Any, prefix: str = "", problems: list[str] | None = None):
        """An instance from a mapping (a recipe section). Unknown keys are named with the closest valid one.
        With `problems` given, every problem is appended there and None returned on failure; without it a
        RecipeError lists them all."""
        own: list[str] = []
        where = prefix.rstrip(".") or cls.section or cls.__name__
        instance = None
        data = {} if data is None else data
        if not isinstance(data, dict):
            own.append(f"{where}: expected a mapping of keys, got {type(data).__name__}")
        else:
            fields = dataclasses.fields(cls)
            names = [f.name for f in fields]
            for key in data:
                if key not in names:
                    advice = _suggest(str(key), names) or f"valid keys: {', '.join(names)}"
                    own.append(f"{prefix}{str(key)[:60]}: unknown key; {advice}")
            missing = [f for f in fields if f.default is dataclasses.MISSING
                       and f.default_factory is dataclasses.MISSING and data.get(f.name) is None]
            own += [f"{prefix}{f.name}: required key is missing ({f.metadata.get('help')})" for f in missing]
            if not missing:
                instance = cls.__new__(cls)
                for field in fields:
                    if data.get(field.name) is not None:
                        value = data[field.name]
                    elif field.default_factory is not dataclasses.MISSING:
                        value = field.default_factory()
                    else:
                        value = field.default
                    object.__setattr__(instance, field.name, value)
                own += instance._validate(prefix)
        if problems is not None:
            problems.extend(own)
            return None if own else instance
        if own:
            raise RecipeError(own, where)
        return instance

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def replace(self, **changes: Any):
        """A copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def build(cls, config: "StageConfig | None" = None, **overrides: Any):
        """`config` with keyword `overrides`, or a default config with them: what API functions accept."""
        if config is None:
            return cls(**overrides)
        if not isinstance(config, cls):
            raise ConfigError(f"expected a {cls.__name__}, got {type(config).__name__}")
        return dataclasses.replace(config, **overrides) if overrides else config
