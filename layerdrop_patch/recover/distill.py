"""Distillation for recovery: train the pruned model towards the unpruned model's predictions.

Why: a few hundred LoRA steps on raw text teach the pruned model the data; matching the unpruned model's full
next-token distribution (softened by a temperature, as in Hinton et al.) teaches it what it used to predict,
which is exactly what the drop took away, and carries far more signal per token than one target id. The two
can be mixed. `near_dropped` restricts the adapters to the layers around the removed sublayers, where the
residual stream changed most; everything else stays frozen.
"""

from __future__ import annotations

from typing import Any

import torch

from layerdrop_patch.architectures import drop_of

__all__ = ["LOSSES", "distillation_loss", "training_loss", "near_dropped_layers"]

LOSSES = ("lm", "distill", "lm+distill")


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the temperature-softened next-token distributions, times T^2 (so gradients keep
    their scale across temperatures), averaged over tokens."""
    t = float(temperature)
    teacher = (teacher_logits.float() / t).log_softmax(-1)
    student = (student_logits.float() / t).log_softmax(-1)
    kl = (teacher.exp() * (teacher - student)).sum(-1)
    return kl.mean() * t * t


def training_loss(model: Any, batch: torch.Tensor, loss: str, *, teacher: Any = None, temperature: float = 2.0,
                  distill_weight: float = 0.5) -> torch.Tensor:
    """The recovery objective on one batch: LM cross-entropy, distillation from `teacher`, or their mix
    (1 - distill_weight) * lm + distill_weight * distill."""
    out = model(input_ids=batch, labels=batch if loss != "distill" else None, use_cache=False)
    if loss == "lm":
        return out.loss
    with torch.no_grad():
        teacher_logits = teacher(input_ids=batch.to(teacher.get_input_embeddings().weight.device),
                                 use_cache=False).logits.to(out.logits.device)
    kd = distillation_loss(out.logits, teacher_logits, temperature)
    return kd if loss == "distill" else (1.0 - distill_weight) * out.loss + distill_weight * kd


def near_dropped_layers(model: Any, window: int) -> set[int]:
    """Layers within `window` of a dropped attention or MLP (the dropped layers' own kept sublayers included)."""
    drop = drop_of(model)
    touched = set(drop.attn) | set(drop.mlp)
    num_layers = model.config.num_hidden_layers
    return {layer for d in touched for layer in range(max(0, d - window), min(num_layers, d + window + 1))}
