"""CLI options derived from the stage configs, so that each option's name, default and help exist once.

`@with_configs(calibration=CalibrationConfig, selection=(SelectionConfig, {"only": [...]}))` replaces the
command's `calibration` / `selection` parameters by one Typer option per config field (`--n-samples`, `--kind`,
...), and calls the command with the built config objects. Building validates them, so a bad value is reported
as the config's own one-line error naming the option. Lists are comma-separated (`--protect 0,1`), booleans are
`--flag/--no-flag` unless the field names its own pair (`--merge/--keep-adapter`).

Spec options: `only` / `exclude` (field names), `prefix` (for fields that would collide across configs),
`lazy` (pass a builder instead, for commands where the config is only needed in some modes), `partial` (pass just
the chosen fields, each validated, as a namespace: for a command that takes a few of a stage's options),
`defaults` (a command whose purpose implies another default, e.g. `plan` considers every kind: {"kind": "joint"}).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from typing import Any, Callable, Optional

import typer
from rich.markup import escape

from layerdrop_patch.errors import ConfigError
from layerdrop_patch.options import field_choices, field_type

__all__ = ["with_configs", "int_list", "str_list"]


def int_list(value: str | None, name: str) -> list[int]:
    """'0,1, 5' -> [0, 1, 5]; '' / None -> []; anything else is an error naming the option."""
    if not value:
        return []
    try:
        return [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise ConfigError(f"{name}: expected comma-separated layer indices like 0,1,5; got {value[:80]!r}") from None


def str_list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _members(tp: Any) -> list:
    """The non-None members of a union annotation (`int | None` -> [int]), or [tp]."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return [a for a in typing.get_args(tp) if a is not type(None)]
    return [tp]


def _flag(prefix: str, field: dataclasses.Field) -> str:
    return "--" + (prefix + field.name).replace("_", "-")


def _option(cls: type, field: dataclasses.Field, prefix: str, defaults: dict) -> tuple[Any, Any]:
    """(annotation, typer.Option) for one config field."""
    args = _members(field_type(cls, field))
    kind = args[0] if len(args) == 1 else float  # int | float -> float
    default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
    default = defaults.get(field.name, default)
    help_text = field.metadata.get("help", "")
    choices = field_choices(field)
    if choices:
        help_text += f" One of: {', '.join(map(str, choices))}."
    custom = field.metadata.get("flag")
    decls = (custom,) if isinstance(custom, str) else tuple(custom or ())
    if typing.get_origin(kind) is list:
        shown = ",".join(map(str, default)) if default else None
        return Optional[str], typer.Option(shown, *(decls or (_flag(prefix, field),)), help=escape(help_text))
    if kind is bool:
        decls = decls or (f"{_flag(prefix, field)}/--no-{(prefix + field.name).replace('_', '-')}",)
        return bool, typer.Option(default, *decls, help=escape(help_text))
    annotation = Optional[kind] if default is None or default is dataclasses.MISSING else kind
    return annotation, typer.Option(None if default is dataclasses.MISSING else default,
                                    *(decls or (_flag(prefix, field),)), help=escape(help_text))


def _value(cls: type, field: dataclasses.Field, raw: Any, flag: str) -> Any:
    args = _members(field_type(cls, field))
    if typing.get_origin(args[0]) is list:
        item = typing.get_args(args[0])[0]
        return int_list(raw, flag) if item is int else str_list(raw)
    if isinstance(raw, float) and int in args and raw.is_integer():
        return int(raw)
    return raw


def with_configs(**specs: Any) -> Callable:
    """Decorator: replace the named parameters by the options of their config classes (see the module doc)."""
    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn)
        params = [p for p in signature.parameters.values() if p.name not in specs]
        added: dict[str, tuple[str, type, dataclasses.Field]] = {}
        for name, spec in specs.items():
            cls, opts = spec if isinstance(spec, tuple) else (spec, {})
            for field in dataclasses.fields(cls):
                if field.name in opts.get("exclude", ()) or ("only" in opts and field.name not in opts["only"]):
                    continue
                pname = opts.get("prefix", "") + field.name
                if pname in added or pname in signature.parameters:
                    raise TypeError(f"{fn.__name__}: option --{pname} comes from two configs; give one a prefix "
                                    "or exclude it")
                annotation, default = _option(cls, field, opts.get("prefix", ""), opts.get("defaults", {}))
                params.append(inspect.Parameter(pname, inspect.Parameter.KEYWORD_ONLY, default=default,
                                                annotation=annotation))
                added[pname] = (name, cls, field)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values: dict[str, dict[str, Any]] = {name: {} for name in specs}
            for pname, (name, cls, field) in added.items():
                values[name][field.name] = _value(cls, field, kwargs.pop(pname), "--" + pname.replace("_", "-"))
            for name, spec in specs.items():
                cls, opts = spec if isinstance(spec, tuple) else (spec, {})
                if opts.get("partial"):
                    kwargs[name] = types.SimpleNamespace(**cls.check_fields(**values[name]))
                    continue
                build = functools.partial(cls, **values[name])
                kwargs[name] = build if opts.get("lazy") else build()
            return fn(*args, **kwargs)

        ordered = sorted(params, key=lambda p: p.kind == inspect.Parameter.KEYWORD_ONLY)
        wrapper.__signature__ = signature.replace(parameters=ordered)
        wrapper.__annotations__ = {p.name: p.annotation for p in ordered}  # Typer reads types from here
        return wrapper
    return decorate
