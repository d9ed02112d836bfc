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

Writes go through `layerdrop_patch.files` (built under a hidden temp name, renamed into place), so an
interrupted export never leaves a half-written model behind.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from layerdrop_patch.architectures import drop_of, get_architecture
from layerdrop_patch.errors import ExportError

__all__ = ["ExportError", "EngineLayer", "kept_sublayers", "pack_layers", "sublayer_tensors", "global_tensors"]


@dataclass(frozen=True)
class EngineLayer:
    """One layer of the exported model: original indices of its attention and MLP sublayers (None = absent)."""

    attn: int | None
    mlp: int | None

    def describe(self) -> str:
        parts = [f"attention {self.attn}" if self.attn is not None else "no attention",
                 f"MLP {self.mlp}" if self.mlp is not None else "no MLP"]
        return " + ".join(parts)


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
