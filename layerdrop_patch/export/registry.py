"""Export formats, registered by name: what each writes, for which families, and how to pick another.

Adding a format is one `@register_format` writer (see `standard.py`, `decilm.py`, `gguf.py`); `export()`, the
CLI's `--format` choices and the refusal advice ("use format X instead") all read `FORMATS`, so advice can only
name formats that really accept the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from layerdrop_patch.architectures import base_model_type, get_architecture
from layerdrop_patch.errors import ExportError

__all__ = ["ExportFormat", "FORMATS", "register_format", "check_supported", "alternatives"]


@dataclass(frozen=True)
class ExportFormat:
    name: str
    write: Callable[..., Any]  # write(model, out, tokenizer, **options) -> Path
    target: str  # "directory" or "file"
    families: tuple[str, ...] | None  # model types it accepts; None = every supported family
    engines: str  # who runs it, for help texts
    description: str

    def accepts(self, model_type: str) -> bool:
        return self.families is None or model_type in self.families


FORMATS: dict[str, ExportFormat] = {}


def register_format(name: str, *, target: str, families: tuple[str, ...] | None, engines: str, description: str):
    def decorate(write):
        FORMATS[name] = ExportFormat(name, write, target, families, engines, description)
        return write
    return decorate


def alternatives(model: Any, besides: str) -> str:
    """'format='x' (engines), ...' for the other formats that accept this model's family."""
    model_type = base_model_type(model.config)
    others = [f"format='{f.name}' ({f.engines})" for f in FORMATS.values() if f.name != besides and f.accepts(model_type)]
    return " or ".join(others) if others else "no other export format (this family is served through transformers)"


def check_supported(model: Any, format_name: str) -> str:
    """The model's base model_type, refusing families the format cannot express (with the formats that can)."""
    get_architecture(model)
    model_type = base_model_type(model.config)
    fmt = FORMATS[format_name]
    if not fmt.accepts(model_type):
        raise ExportError(f"the {format_name} export supports model types {list(fmt.families)}, not {model_type!r}; "
                          f"use {alternatives(model, format_name)}.")
    return model_type
