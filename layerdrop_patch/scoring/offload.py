"""Offloaded importance scoring: one decoder layer at a time, for models that do not fit in memory.

The streaming scorer needs the whole model resident. Here the calibration activations are what stays
resident instead (n_samples x seq_len x hidden, on CPU) and the decoder layers take turns: each is
materialised, runs every sample while `LayerScorer` hooks accumulate its scores, and is freed before the next.
Peak memory is about one layer plus the activations (plus the embedding for the first step).

Where a layer's weights come from:
  * a model built on the meta device (`models.empty_model(path)`): read per layer from the checkpoint's safetensors
    files with `safetensors.safe_open`, set with accelerate, and put back on meta afterwards;
  * a model dispatched by accelerate (`device_map="auto"`, CPU/disk offload): its own hooks load and offload;
  * a resident model: moved to `device` (e.g. a CPU-resident model scored one layer at a time on a GPU).

The layers' other inputs (causal mask(s), RoPE position embeddings, position ids) are not rebuilt here: the
model's own forward computes them and a stand-in `forward` on every decoder layer records them, so mask and
RoPE variants of every supported architecture are reproduced exactly. Masks and RoPE depend only on the batch
shape (calibration chunks are packed, never padded), so they are recorded once per batch size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from layerdrop_patch.architectures import decoder_layers
from layerdrop_patch.errors import CheckpointError, ConfigError
from layerdrop_patch.modeling.modeling_layerdrop import CACHE_KWARGS
from layerdrop_patch.scoring.layer_scorer import LayerScorer, batches_of

__all__ = ["score_offloaded", "CheckpointReader"]


class CheckpointReader:
    """Reads named tensors from a safetensors checkpoint (single file or sharded with an index)."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        index = path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.files = {k: path / v for k, v in weight_map.items()}
        elif (path / "model.safetensors").is_file():
            from safetensors import safe_open

            with safe_open(str(path / "model.safetensors"), "pt") as f:
                self.files = {k: path / "model.safetensors" for k in f.keys()}
        else:
            raise CheckpointError(
                f"{path} holds no model.safetensors(.index.json); offloaded scoring reads weights from safetensors "
                "checkpoints (re-save the model with save_pretrained to convert one)."
            )
        self.path = path

    def load_into(self, module: torch.nn.Module, prefix: str, device: torch.device) -> list[str]:
        """Materialise every meta parameter/buffer of `module` from `prefix + name`; returns the names set."""
        from accelerate.utils import set_module_tensor_to_device
        from safetensors import safe_open

        wanted = [(n, t) for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.device.type == "meta"]
        by_file: dict[Path, list[tuple[str, torch.Tensor]]] = {}
        for name, tensor in wanted:
            key = prefix + name
            if key not in self.files:
                raise CheckpointError(f"checkpoint {self.path} has no tensor {key!r} (needed by offloaded scoring); "
                                      "it does not belong to this model's config.")
            by_file.setdefault(self.files[key], []).append((name, tensor))
        for file, items in by_file.items():
            with safe_open(str(file), "pt", device="cpu") as f:
                for name, tensor in items:
                    value = f.get_tensor(prefix + name)
                    set_module_tensor_to_device(module, name, device, value=value, dtype=tensor.dtype)
        return [n for n, _ in wanted]


def _free(module: torch.nn.Module, names: list[str]) -> None:
    from accelerate.utils import set_module_tensor_to_device

    for name in names:
        set_module_tensor_to_device(module, name, "meta")


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


class _Stop(Exception):
    pass


class _Placement:
    """Brings one module's weights to where it runs and takes them away again, whatever the model's layout."""

    def __init__(self, reader: CheckpointReader | None, device: torch.device, prefixes: dict[int, str]) -> None:
        self.reader, self.device, self.prefixes = reader, device, prefixes

    def enter(self, module: torch.nn.Module) -> tuple[str, Any]:
        if hasattr(module, "_hf_hook"):  # accelerate moves weights and inputs itself
            return "hooked", None
        if any(t.device.type == "meta" for t in list(module.parameters()) + list(module.buffers())):
            if self.reader is None:
                raise ConfigError(
                    "model weights are on the meta device and no checkpoint is known: pass checkpoint=<safetensors dir> "
                    "(or build the model with layerdrop_patch.models.empty_model(path))."
                )
            return "loaded", self.reader.load_into(module, self.prefixes[id(module)], self.device)
        home = next(iter(list(module.parameters()) + list(module.buffers())), torch.empty(0)).device
        module.to(self.device)
        return "moved", home

    def leave(self, module: torch.nn.Module, state: tuple[str, Any]) -> None:
        how, info = state
        if how == "loaded":
            _free(module, info)
        elif how == "moved":
            module.to(info)


def _default_device(model: Any, device: Any) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def score_offloaded(model: Any, ids: torch.Tensor, arch: Any, batch_size: int, progress: bool,
                    device: Any = None, checkpoint: Any = None) -> list[torch.Tensor]:
    """Per-layer (3, 4) score means, computed layer by layer (see the module docstring)."""
    from tqdm.auto import tqdm

    layers = decoder_layers(model)
    base = model.model
    device = _default_device(model, device)
    if checkpoint is None:
        guess = Path(str(getattr(model, "name_or_path", "") or ""))
        checkpoint = guess if guess.is_dir() and any(guess.glob("*.safetensors")) else None
    reader = CheckpointReader(checkpoint) if checkpoint is not None else None
    names = {id(m): n + "." for n, m in model.named_modules()}
    place = _Placement(reader, device, names)
    was_training = model.training
    model.eval()

    # 1. Embeddings for every batch, and the per-layer keyword inputs for every batch size.
    acts: list[torch.Tensor] = []
    layer_kwargs: dict[int, list[dict]] = {}
    capturing: dict[str, Any] = {}

    def stand_in(index: int):
        def forward(hidden_states, *args, **kwargs):
            if index == 0:
                acts.append(hidden_states.to("cpu"))
            if capturing["record"]:
                capturing["kwargs"].append({k: v for k, v in kwargs.items() if k not in CACHE_KWARGS})
            if index == len(layers) - 1 or not capturing["record"]:
                raise _Stop
            return hidden_states
        return forward

    others = [m for n, m in base.named_children() if m is not layers]
    saved = [layer.__dict__.get("forward") for layer in layers]
    states = [place.enter(m) for m in others]
    try:
        for i, layer in enumerate(layers):
            layer.forward = stand_in(i)
        for batch in batches_of(ids, batch_size):
            n = batch.shape[0]
            capturing.update(record=n not in layer_kwargs, kwargs=[])
            target = device if not hasattr(model, "hf_device_map") else torch.device("cpu")
            try:
                base(input_ids=batch.to(target), use_cache=False)
            except _Stop:
                pass
            if capturing["record"]:
                layer_kwargs[n] = [_to(kw, torch.device("cpu")) for kw in capturing["kwargs"]]
    finally:
        for layer, fwd in zip(layers, saved):
            if fwd is None:
                layer.__dict__.pop("forward", None)
            else:
                layer.forward = fwd
        for m, st in zip(others, states):
            place.leave(m, st)

    # 2. Layer by layer: materialise, run all batches through it while scoring, free.
    means = []
    bar = tqdm(total=len(layers) * len(acts), desc="importance (offloaded)", unit="batch", disable=not progress)
    try:
        for i, layer in enumerate(layers):
            state = place.enter(layer)
            scorer = LayerScorer(layer, arch)
            run_on = device if state[0] != "hooked" else torch.device("cpu")
            kw_cache = {n: _to(kws[i], run_on) for n, kws in layer_kwargs.items()}
            try:
                for b, hidden in enumerate(acts):
                    out = layer(hidden.to(run_on), **kw_cache[hidden.shape[0]])
                    acts[b] = (out[0] if isinstance(out, (tuple, list)) else out).to("cpu")
                    bar.update(1)
            finally:
                scorer.remove()
                place.leave(layer, state)
            means.append(scorer.means())
    finally:
        bar.close()
        model.train(was_training)
    return means
