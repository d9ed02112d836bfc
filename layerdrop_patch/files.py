"""The one way this package writes files, and the one way it measures and prints their sizes.

Why atomic: scoring, quantising or exporting a 7B model takes long enough to be interrupted. Every file and
directory is built under a hidden temporary name next to its target and renamed into place only when complete,
so an interrupted run leaves either the old result or the new one, never a half-written one that looks whole.

Why the care around that:
* existing outputs are the user's: a non-empty target is replaced only with `overwrite=True`, else
  `OutputExistsError` says how to proceed;
* the temporary names carry the writer's process id (`.NAME.partial-PID-XXXX`); a process killed mid-save leaves
  one behind, and the next write next to the same target removes those whose process is gone, so hundreds of MB
  of dead partial checkpoints do not pile up;
* Python creates temporary files 0600 and directories 0700; results get the permissions the user's umask gives
  any new file (typically 0644 / 0755), as if written directly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from layerdrop_patch.errors import OutputExistsError

__all__ = ["atomic_write_text", "atomic_write_json", "atomic_write_bytes", "save_figure", "staged_directory",
           "staged_file", "remove_stale_partials", "refuse_existing", "claim_directory", "directory_bytes", "checkpoint_bytes",
           "human_bytes", "to_json"]

_PARTIAL = ".partial-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _apply_umask(path: Path) -> None:
    """Give a finished temp file/dir the mode a plain `open()` / `mkdir()` would have given it."""
    mask = _umask()
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            os.chmod(root, 0o777 & ~mask)
            for name in files:
                os.chmod(os.path.join(root, name), 0o666 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_partials(target: str | os.PathLike) -> list[Path]:
    """Delete `.NAME.partial-PID-*` leftovers next to `target` whose writing process no longer runs."""
    target = Path(target)
    removed = []
    if not target.parent.is_dir():
        return removed
    for leftover in target.parent.glob(f".{target.name}{_PARTIAL}*"):
        try:
            pid = int(leftover.name[len(f".{target.name}{_PARTIAL}"):].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


def refuse_existing(target: str | os.PathLike, overwrite: bool) -> None:
    """OutputExistsError if `target` exists (a non-empty directory or a file) and `overwrite` is not set; used
    before expensive work, so that a run does not fail at its very end."""
    target = Path(target)
    if overwrite or not target.exists():
        return
    if target.is_dir() and not any(target.iterdir()):
        return
    raise OutputExistsError(f"{target} already exists; it is left untouched. Choose another output path, or "
                            "replace it explicitly (overwrite=True in Python, --overwrite on the command line).")


def _prefix(target: Path) -> str:
    return f".{target.name}{_PARTIAL}{os.getpid()}-"


@contextlib.contextmanager
def staged_directory(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty hidden directory next to `target`; when the block finishes it becomes `target` (an
    existing one is swapped out, then deleted); if the block raises, it is removed and `target` is untouched."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise OutputExistsError(f"{target} is a file; a directory is written there. Choose another output path.")
    refuse_existing(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target)
    staging = Path(tempfile.mkdtemp(prefix=_prefix(target), dir=target.parent))
    try:
        yield staging
        _apply_umask(staging)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=_prefix(target), dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def staged_file(target: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a hidden temp path next to `target`; renamed to `target` when the block finishes, deleted if it
    raises. `overwrite=False` refuses an existing `target` first."""
    target = Path(target)
    if target.is_dir():
        raise OutputExistsError(f"{target} is a directory; give a file name (e.g. {target / 'model.gguf'}).")
    refuse_existing(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(target), dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _apply_umask(Path(tmp))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = True) -> Path:
    with staged_file(path, overwrite=overwrite) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def _json_default(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _without_nan(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nan(v) for v in value]
    return value


def to_json(data: Any) -> str:
    """JSON text (indented; NaN/inf as null, objects through their `to_dict`)."""
    return json.dumps(_without_nan(json.loads(json.dumps(data, default=_json_default))), indent=2) + "\n"


def digest(*parts: Any) -> str:
    """A short stable key of JSON-able `parts` (keys sorted, other objects by `str`): what a recipe step, a cost
    profile or a recorded greedy order was made from, so that a saved result is reused only for the same inputs."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def atomic_write_json(path: str | os.PathLike, data: Any, overwrite: bool = True) -> Path:
    return atomic_write_text(path, to_json(data), overwrite=overwrite)


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 130) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    try:
        with staged_file(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return Path(path)


OWNER_MARKER = ".layerdrop-output"


def claim_directory(out: str | os.PathLike, owner: str, overwrite: bool = False) -> Path:
    """Make `out` a working directory of `owner` (e.g. "recipe", "demo"), whose outputs it may replace.

    A run replaces its own earlier outputs inside such a directory, so it must not adopt one holding someone
    else's files: an empty or new directory, or one an earlier run of the same owner marked, is claimed (a
    hidden `.layerdrop-output` marker); anything else is refused unless `overwrite`."""
    out = Path(out)
    marker = out / OWNER_MARKER
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output {out} is a file; give a directory.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        claimed = marker.is_file() and marker.read_text(errors="replace").strip() == owner
        if not claimed:
            raise OutputExistsError(
                f"output directory {out} already holds files that no earlier {owner} run wrote; a {owner} run replaces "
                f"its outputs there, so it does not start. Choose an empty or new directory, or pass --overwrite "
                f"(overwrite=True) to let it write into {out} anyway.")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, owner + "\n")
    return out


def directory_bytes(path: str | os.PathLike) -> int:
    """Total size of the files under `path`."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def checkpoint_bytes(path: str | os.PathLike) -> int:
    """Bytes of the weight files (safetensors / bin) directly in a checkpoint directory."""
    return sum(p.stat().st_size for p in Path(path).glob("*") if p.suffix in (".safetensors", ".bin") and p.is_file())


def human_bytes(n: float | None) -> str:
    """1536 -> '1.50 KiB' (binary units, the one formatter for sizes in tables, cards and logs)."""
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1024
    return str(n)
