"""What every export format shares: the dropped model's layout, its weights by sublayer, and atomic writes.

Serving engines do not run our skip code, so each format re-expresses a dropped model in terms the engine
already understands. Two facts are needed by all of them, and are computed here once:

* which sublayers remain, in forward order (`kept_sublayers`), and how they pack into engine layers
  (`pack_layers`). A decoder layer computes ``x + attn(norm(x))`` then ``x + mlp(norm(x))``; with some of
  those residual branches gone, the kept branches are still applied in the same order, so any grouping of
  the kept sequence into "(optional attention, then optional MLP)" layers computes exactly the same
  function. Packing greedily gives the fewest layers and turns "MLP i and attention i+1 dropped" into one
  ordinary layer.
* the weights of each kept sublayer under the stock transformers names (`sublayer_tensors`).

Writes are atomic (`atomic_directory`, `atomic_file`): the result is built in a hidden temp path next to
`out` and renamed into place, so an interrupted export never leaves a half-written model behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from layerdrop_patch.architectures import base_model_type, get_architecture
from layerdrop_patch.config import DropConfig

__all__ = ["ExportError", "EngineLayer", "kept_sublayers", "pack_layers", "sublayer_tensors", "global_tensors",
           "drop_of", "atomic_directory", "atomic_file"]


class ExportError(ValueError):
    """The model cannot be written in the requested format without changing what it computes."""


@dataclass(frozen=True)
class EngineLayer:
    """One layer of the exported model: original indices of its attention and MLP sublayers (None = absent)."""

    attn: int | None
    mlp: int | None

    def describe(self) -> str:
        parts = [f"attention {self.attn}" if self.attn is not None else "no attention",
                 f"MLP {self.mlp}" if self.mlp is not None else "no MLP"]
        return " + ".join(parts)


def drop_of(model) -> DropConfig:
    """The model's DropConfig (an empty one for an unpruned model)."""
    return DropConfig.from_model(model) or DropConfig(method="none")


def kept_sublayers(model) -> list[tuple[str, int]]:
    """Kept residual branches in forward order: [("attn", 0), ("mlp", 0), ("mlp", 1), ...]."""
    drop = drop_of(model)
    attn, mlp = set(drop.attn), set(drop.mlp)
    out: list[tuple[str, int]] = []
    for i in range(model.config.num_hidden_layers):
        if i not in attn:
            out.append(("attn", i))
        if i not in mlp:
            out.append(("mlp", i))
    return out


def pack_layers(model) -> list[EngineLayer]:
    """Group the kept branches into the fewest "(attention?, MLP?)" layers, keeping their order.

    A new layer starts at every attention, and at an MLP that already follows an MLP. The result computes
    the same function as the dropped model (each branch keeps its own norm and weights; the residual
    stream passes through unchanged between them).
    """
    layers: list[EngineLayer] = []
    current: dict[str, int | None] | None = None
    for kind, index in kept_sublayers(model):
        if kind == "attn" or current is None or current["mlp"] is not None:
            if current is not None:
                layers.append(EngineLayer(current["attn"], current["mlp"]))
            current = {"attn": None, "mlp": None}
        current[kind] = index
    if current is not None:
        layers.append(EngineLayer(current["attn"], current["mlp"]))
    return layers


def _state_dict(model) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.state_dict().items()}


def sublayer_tensors(model, kind: str, index: int) -> dict[str, torch.Tensor]:
    """Weights of one kept branch, keyed by their name inside the decoder layer (e.g. `self_attn.q_proj.weight`).

    The branch's norm is included (it is part of the branch: `x + module(norm(x))`).
    """
    arch = get_architecture(model)
    part = arch.attn if kind == "attn" else arch.mlp
    prefix = f"model.layers.{index}."
    names = part.attribute_names()
    out = {}
    for key, tensor in _state_dict(model).items():
        if key.startswith(prefix):
            local = key[len(prefix):]
            if local.split(".", 1)[0] in names:
                out[local] = tensor
    if not out:
        raise ExportError(f"layer {index} has no weights for its {kind} branch, although it is not dropped")
    return out


def global_tensors(model) -> dict[str, torch.Tensor]:
    """Weights outside the decoder layers (embeddings, final norm, lm_head unless tied)."""
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    out = {}
    for key, tensor in _state_dict(model).items():
        if key.startswith("model.layers."):
            continue
        if tied and key == "lm_head.weight":
            continue
        out[key] = tensor
    return out


def check_supported(model, formats_for: str, allowed_types: tuple[str, ...]) -> str:
    """The model's base model_type, refusing families the format cannot express."""
    get_architecture(model)
    model_type = base_model_type(model.config)
    if model_type not in allowed_types:
        raise ExportError(
            f"{formats_for} export supports model types {list(allowed_types)}, not {model_type!r}."
        )
    return model_type


def _prepare_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        if out.is_file() or any(out.iterdir()):
            raise FileExistsError(f"{out} exists; pass overwrite=True to replace it.")
    out.parent.mkdir(parents=True, exist_ok=True)


def _swap_into_place(staging: Path, out: Path) -> None:
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp directory next to `out`; on success it replaces `out`, on error it is removed."""
    out = Path(out)
    _prepare_target(out, overwrite)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield staging
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp file path next to `out`; on success it is renamed to `out`, on error deleted."""
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"{out} is a directory; give a file name such as model.gguf")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True to replace it.")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.partial-", dir=out.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
