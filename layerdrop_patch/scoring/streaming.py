"""Importance scores of every attention, MLP and block, from one streaming pass over calibration tokens.

He et al. (2024) call a sublayer redundant when its output is nearly parallel to its input: for attention,
S_A = 1 - cos(X_A, Y_A) with X_A the residual stream entering the attention pre-norm and
Y_A = X_A + PostNorm(Attention(Norm(X_A))) (PostNorm only in Gemma-style layers); likewise S_M for the MLP and
S_B for the whole decoder layer. The lower the score, the less the sublayer changes the hidden state and the
safer it is to drop. Every registered metric (`metrics.py`) is kept for every (layer, kind), so one pass
serves every experiment.

How it is measured without storing hidden states (the reference code keeps them all: ~8.6 GB per side at
256 x 2048 x 4096): forward hooks see X and Y for one batch at a time, and per-token values are reduced at once
into fp32 running sums. The hooks only *observe* the residual stream (inputs of the MLP pre-norm and of the
decoder layer, outputs of the layer and of the sublayers), so they work on stock layers and on layers patched by
`apply_drop` alike. Large models: ``offload=True`` streams one decoder layer at a time (`offload.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from layerdrop_patch.architectures import check_sequence_length, decoder_layers, get_architecture
from layerdrop_patch.errors import ConfigError
from layerdrop_patch.scoring.calibration import CalibrationConfig, as_token_tensor
from layerdrop_patch.scoring.layer_scorer import LayerScorer, assemble, batches_of
from layerdrop_patch.scoring.metrics import DEFAULT_METRIC, METRICS
from layerdrop_patch.scoring.offload import score_offloaded
from layerdrop_patch.scoring.scores import ImportanceScores

__all__ = ["compute_importance"]


def compute_importance(model: Any, calibration: Any, batch_size: int = CalibrationConfig.batch_size,
                       metric: str = DEFAULT_METRIC, offload: bool = False, progress: bool = True, *,
                       device: str | torch.device | None = None,
                       checkpoint: str | Path | None = None) -> ImportanceScores:
    """Score every decoder layer's attention, MLP and block on `calibration` (one pass over the tokens).

    Args:
        model: a transformers *ForCausalLM (stock, patched by `apply_drop`, or dispatched with `device_map`).
        calibration: a `Calibration` from `load_calibration`, or a LongTensor (n_samples, seq_len).
        batch_size: calibration samples per forward.
        metric: which metric `.attn/.mlp/.block` report (all registered metrics are kept; see `METRICS`).
        offload: stream one decoder layer at a time through stored activations (models larger than memory).
        progress: show a progress bar.
        device: offloaded mode only: where each layer runs (default: cuda if available, else cpu).
        checkpoint: offloaded mode only: safetensors directory to load meta-device weights from (default: the
            model's own `name_or_path` when that is a local directory).
    """
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    ids, description = as_token_tensor(calibration)
    arch = get_architecture(model)
    check_sequence_length(model, ids.shape[1], "calibration seq_len")
    if offload:
        means = score_offloaded(model, ids, arch, batch_size, progress, device=device, checkpoint=checkpoint)
    else:
        means = _score_streaming(model, ids, arch, batch_size, progress)
    return assemble(model, means, description, int(ids.numel()), metric)


@torch.no_grad()
def _score_streaming(model: Any, ids: torch.Tensor, arch: Any, batch_size: int, progress: bool) -> list[torch.Tensor]:
    from tqdm.auto import tqdm

    layers = decoder_layers(model)
    base = model.model
    if any(p.device.type == "meta" for p in base.parameters()) and not hasattr(model, "hf_device_map"):
        raise ConfigError("model weights are on the meta device; use compute_importance(..., offload=True, "
                          "checkpoint=<safetensors dir>).")
    scorers = [LayerScorer(layer, arch) for layer in layers]
    was_training = model.training
    model.eval()
    embed = base.get_input_embeddings()
    target = embed.weight.device if embed.weight.device.type != "meta" else torch.device("cpu")
    try:
        for batch in tqdm(batches_of(ids, batch_size), desc="importance", unit="batch", disable=not progress):
            base(input_ids=batch.to(target), use_cache=False)
    finally:
        for s in scorers:
            s.remove()
        model.train(was_training)
    return [s.means() for s in scorers]
