"""The one error family for problems with what the user gave us: `LayerdropError` and its subclasses.

Why one family: the CLI prints a `LayerdropError` as one line and exits non-zero, and lets every other exception
keep its traceback, because anything else is a bug. So every input problem the library detects (a bad option, a
corrupt checkpoint, a missing extra, an output that already exists) raises one of these, with a message that
names the input, says what is wrong and how to fix it.

Each subclass also derives from the built-in exception a caller would naturally catch (`FileNotFoundError`,
`ImportError`, ...), and the base from `ValueError`, so `except ValueError:` written against earlier releases
keeps working. Messages are bounded (`MAX_MESSAGE` characters): a value quoted in an error is cut, never
pasted whole, so a hostile input cannot turn an error into megabytes of output.
"""

from __future__ import annotations

__all__ = ["LayerdropError", "ConfigError", "ResumeError", "RecipeError", "CheckpointError", "UnsupportedModelError",
           "DataError", "OutputExistsError", "InputNotFoundError", "MissingDependencyError", "QualityGateError",
           "ExportError", "EngineError", "MAX_MESSAGE", "shorten"]

MAX_MESSAGE = 4000


def shorten(value: object, limit: int = 120) -> str:
    """`repr(value)` cut to `limit` characters, for quoting user input inside a message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " ...)"


class LayerdropError(ValueError):
    """A problem with the user's input, stated as: what was given, what is wrong, how to fix it."""

    def __init__(self, message: str):
        message = str(message)
        if len(message) > MAX_MESSAGE:
            message = message[: MAX_MESSAGE - 40] + f" ... ({len(message) - MAX_MESSAGE + 40} characters cut)"
        super().__init__(message)


class ConfigError(LayerdropError, TypeError):
    """An option, a DropConfig or a stage config with a value it cannot take."""


class ResumeError(ConfigError):
    """An earlier run's selection order that this run cannot go on from (another kind, a protected or dropped
    layer, longer than n); a class of its own so a caller that read the order from a file can name the file."""


class RecipeError(ConfigError):
    """A recipe that cannot run; `.problems` lists every problem found, each naming its key."""

    def __init__(self, problems: list[str], source: str = "recipe"):
        self.problems = [p if len(p) <= 500 else p[:480] + " ... (cut)" for p in problems[:50]]
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        count = f"{len(problems)} problem{'s' * (len(problems) > 1)}"
        super().__init__(f"{source} is not valid ({count}):\n{lines}{more}")


class CheckpointError(LayerdropError):
    """A checkpoint that is not what it claims: truncated or unreadable files, weights that disagree with its
    drop_config, shapes that do not fit its config."""


class UnsupportedModelError(LayerdropError, NotImplementedError):
    """A model family (or a feature of one) this release cannot drop, export or quantise."""


class DataError(LayerdropError):
    """Calibration, training or evaluation data that is missing, empty, too short or unreadable."""


class OutputExistsError(LayerdropError, FileExistsError):
    """An output path that already holds something of the user's; nothing is replaced without `overwrite`."""


class InputNotFoundError(LayerdropError, FileNotFoundError):
    """A model, recipe or data path that does not exist (and is not a hub id either)."""


class MissingDependencyError(LayerdropError, ImportError):
    """An optional extra that this feature needs is not installed; the message says what to install."""


class QualityGateError(LayerdropError, RuntimeError):
    """A step finished but its result failed a quality check (e.g. AWQ perplexity); nothing was saved."""


class ExportError(LayerdropError):
    """The model cannot be written in the requested format without changing what it computes."""


class EngineError(LayerdropError, RuntimeError):
    """A serving engine (vLLM, llama.cpp) is unavailable or refused the model; the message says which and why."""
