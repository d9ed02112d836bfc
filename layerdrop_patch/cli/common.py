"""What every `layerdrop` command shares: user-facing error handling, option parsing helpers, the console.

Why errors are caught here: a user who passes a bad layer index or forgets to install an extra should read one
line saying what is wrong and how to fix it, not a traceback. Only the library's deliberate error types are
caught (they carry such messages); anything else is a bug and keeps its traceback. `LAYERDROP_TRACEBACK=1`
shows the traceback for the caught ones too.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)

MODEL_HELP = "Hub id, local directory (also a checkpoint written by layerdrop) or `smollm2-135m` (embedded)."
DTYPE_HELP = "Weights dtype: float32 (default, CPU), bfloat16, float16 or auto (the checkpoint's own)."
DEVICE_MAP_HELP = "Passed to from_pretrained, e.g. `auto` to spread a large model over GPUs/CPU (accelerate)."


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ValueError, FileNotFoundError, FileExistsError, ImportError,
                                         NotImplementedError, PermissionError]
    try:
        from layerdrop_patch.quantize import QuantizationQualityError

        errors.append(QuantizationQualityError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def handle_errors(fn: Callable) -> Callable:
    """Turn the library's user-facing exceptions into `Error: ...` on stderr and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _user_errors() as err:
            if os.environ.get("LAYERDROP_TRACEBACK"):
                raise
            err_console.print(f"[bold red]Error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def int_list(value: str | None, name: str) -> list[int]:
    """'0,1, 5' -> [0, 1, 5]; '' / None -> []; anything else is a BadParameter naming the option."""
    if not value:
        return []
    try:
        return [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated layer indices like 0,1,5; got {value!r}",
                                 param_hint=name) from None


def str_list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def human_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1024
    return str(n)


def ratio(new: float | None, old: float | None, fmt: str = "{:.2f}x") -> str:
    if not new or not old:
        return "–"
    return fmt.format(new / old)
