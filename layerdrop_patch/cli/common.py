"""What every `layerdrop` command shares: user-facing error handling, the consoles, the shared help texts.

Why errors are caught here, and only these: a user who passes a bad layer index, a damaged checkpoint or forgets
an extra should read one line saying what is wrong and how to fix it. The library raises `LayerdropError` (and its
subclasses) for exactly those problems; anything else is a bug and keeps its traceback. `LAYERDROP_TRACEBACK=1`
shows the traceback for the caught ones too.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

import typer
from rich.console import Console
from rich.markup import escape

from layerdrop_patch.errors import LayerdropError

__all__ = ["console", "err_console", "handle_errors", "check_output", "MODEL_HELP"]

console = Console()
err_console = Console(stderr=True)

MODEL_HELP = "Hub id, local directory (also a checkpoint written by layerdrop) or `smollm2-135m` (embedded)."


def handle_errors(fn: Callable) -> Callable:
    """Turn the library's user-facing exceptions into `Error: ...` on stderr and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LayerdropError as err:
            if os.environ.get("LAYERDROP_TRACEBACK"):
                raise
            message = " ".join(str(err).split()) if "\n  - " not in str(err) else str(err)
            err_console.print(f"[bold red]Error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def check_output(out, model: str, overwrite: bool) -> None:
    """Before any model is loaded: refuse an existing output (unless --overwrite) and, always, an output that is
    the input model's directory or one that contains it (replacing it would delete the input)."""
    from pathlib import Path

    from layerdrop_patch.embedded import EMBEDDED_MODELS, path_exists
    from layerdrop_patch.errors import OutputExistsError
    from layerdrop_patch.files import refuse_existing

    source = Path(model).expanduser()
    if model not in EMBEDDED_MODELS and path_exists(source):
        target, source = Path(out).resolve(), source.resolve()
        if target == source or target in source.parents:
            raise OutputExistsError(f"--out {out} is (or contains) the input model {model}; writing there would "
                                    "replace the input. Choose another output path.")
    refuse_existing(out, overwrite)
