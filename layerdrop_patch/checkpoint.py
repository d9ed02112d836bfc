"""Portable pruned checkpoints: save them, and load them (or drop at load time) without remote code.

A saved checkpoint is an ordinary transformers directory whose safetensors hold only the weights that
remain, plus `modeling_layerdrop.py` (the one skip implementation, copied verbatim) and a `config.json`
with `drop_config`, `auto_map` and a `layerdrop_<base>` model_type. That model_type is deliberate: plain
transformers refuses the directory unless `trust_remote_code=True` instead of silently random-initialising
the removed weights, and with it the model loads on machines that do not have this package.

`per_layer_config` with `"skip"` entries (transformers' heterogeneous-config format, >= 5.15) is written as
well, for forward compatibility: transformers 5.23 stores it but no modelling code reads it yet. When
native skip modelling ships, such a checkpoint becomes loadable natively by setting `model_type` back to
the base type; until then the `layerdrop_` model_type keeps it on the verified remote-code path.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from layerdrop_patch.architectures import get_architecture, remote_class_for
from layerdrop_patch.config import DropConfig

__all__ = ["save_pretrained", "from_pretrained"]

_HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "subfolder")


def _is_gguf_dequantised(model) -> bool:
    quantizer = getattr(model, "hf_quantizer", None)
    return quantizer is not None and "gguf" in type(quantizer).__name__.lower()


def save_pretrained(
    model,
    save_directory: str | os.PathLike,
    tokenizer=None,
    *,
    overwrite: bool = False,
    max_shard_size: str | int = "5GB",
    eval_results: dict | None = None,
    scores_plot: str | os.PathLike | None = None,
) -> Path:
    """Write a pruned model as a portable checkpoint; atomic (a temp dir renamed into place at the end).

    The weights of dropped sublayers are not written (they no longer exist in the model). The directory
    also gets the tokenizer (if given), the generation config, `modeling_layerdrop.py` and a model card.
    """
    if DropConfig.from_model(model) is None:
        raise ValueError(
            "this model has no drop_config: apply_drop(model, DropConfig(...)) first, or save an unpruned model "
            "with model.save_pretrained()."
        )
    get_architecture(model)
    target = Path(save_directory)
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{target} exists and is not empty; pass overwrite=True to replace it.")
    target.parent.mkdir(parents=True, exist_ok=True)

    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        if _is_gguf_dequantised(model):  # the GGUF loader's quantizer cannot be serialised; weights are dense
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
        model.save_pretrained(staging, max_shard_size=max_shard_size)  # the shipped classes write the portable layout
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        _write_card(staging, eval_results, scores_plot)
        _replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _write_card(directory: Path, eval_results, scores_plot) -> None:
    try:
        from layerdrop_patch.model_card import write_model_card
    except ImportError:  # pragma: no cover - the model card module ships with the package
        return
    write_model_card(directory, eval_results=eval_results, scores_plot=scores_plot)


def _replace_directory(staging: Path, target: Path) -> None:
    """Move the finished staging dir into place; an existing target is swapped out, then deleted."""
    if not target.exists():
        os.replace(staging, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, old / target.name)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def from_pretrained(name_or_path: str | os.PathLike, drop_config: DropConfig | dict | None = None, **hf_kwargs):
    """Load a model and drop sublayers at load time, or load a saved pruned checkpoint.

    * Base model + `drop_config`: the model is built on the meta device already pruned, so the dropped
      weights are never materialised; the checkpoint's weights for them are skipped.
    * Saved pruned checkpoint: loaded without `trust_remote_code` (the modelling code is this package's);
      weights that disagree with its drop_config are refused. A `drop_config` given too must include the
      saved one; the extra drops are applied after loading.
    `hf_kwargs` go to transformers' `from_pretrained` (`dtype`, `device_map="auto"`, `revision`, ...).
    """
    from transformers import PretrainedConfig

    from layerdrop_patch.models import resolve_model
    from layerdrop_patch.patch import apply_drop

    path = resolve_model(str(name_or_path))
    config_dict, _ = PretrainedConfig.get_config_dict(path, **{k: hf_kwargs[k] for k in _HUB_KWARGS if k in hf_kwargs})
    cls = remote_class_for(SimpleNamespace(model_type=config_dict.get("model_type", ""),
                                           architectures=config_dict.get("architectures")))
    saved = DropConfig.from_dict(config_dict["drop_config"]) if config_dict.get("drop_config") else None
    requested = DropConfig.from_dict(drop_config) if isinstance(drop_config, dict) else drop_config

    fields = {k: v for k, v in config_dict.items() if k not in ("model_type", "auto_map")}
    config = cls.config_class.from_dict(fields)
    num_layers = config.num_hidden_layers
    if saved is not None:
        saved.validate(num_layers)
        config.drop_config = saved.to_dict()
        model = cls.from_pretrained(path, config=config, **hf_kwargs)
        if requested is not None and requested.to_dict() != saved.to_dict():
            apply_drop(model, requested)
        return model
    cfg = (requested or DropConfig(method="none")).validate(num_layers)
    if cfg.base_model is None:
        cfg.base_model = str(name_or_path)
    config.drop_config = cfg.to_dict()
    return cls.from_pretrained(path, config=config, layerdrop_allow_dropped_weights=True, **hf_kwargs)
