"""Portable pruned checkpoints: save them, load them (or drop at load time) without remote code, and prove
they load where this package is not installed.

A saved checkpoint is an ordinary transformers directory whose safetensors hold only the weights that remain,
plus the two shipped files (`modeling_layerdrop.py`, `configuration_layerdrop.py`: the one skip implementation,
copied verbatim) and a `config.json` with `drop_config`, `auto_map` and a `layerdrop_<base>` model_type. That
model_type is deliberate: plain transformers refuses the directory unless `trust_remote_code=True` instead of
silently random-initialising the removed weights, and with it the model loads on machines without this package.
The shipped classes make transformers' own `model.save_pretrained` / `push_to_hub` write this layout too;
`save_pretrained` here adds the tokenizer, a model card and an atomic write.

Loading never runs the copy of the code inside the directory: `from_pretrained` uses this package's classes and
checks the weights against the drop_config (missing, extra and wrong-shaped tensors are refused by name).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from layerdrop_patch.architectures import get_architecture, remote_class_for
from layerdrop_patch.config import DropConfig
from layerdrop_patch.errors import CheckpointError, ConfigError, LayerdropError, OutputExistsError
from layerdrop_patch.embedded import read_config, resolve_model
from layerdrop_patch.files import staged_directory

__all__ = ["save_pretrained", "from_pretrained", "shipped_config_and_class", "refuse_source_as_target",
           "run_without_package"]

_HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "subfolder")


def _is_gguf_dequantised(model) -> bool:
    quantizer = getattr(model, "hf_quantizer", None)
    return quantizer is not None and "gguf" in type(quantizer).__name__.lower()


def save_pretrained(model, save_directory: str | os.PathLike, tokenizer=None, *, overwrite: bool = False,
                    max_shard_size: str | int = "5GB", eval_results: dict | None = None,
                    scores_plot: str | os.PathLike | None = None) -> Path:
    """Write a pruned model as a portable checkpoint, atomically (built next to the target, renamed into place).

    The weights of dropped sublayers are not written (they no longer exist in the model). The directory also gets
    the tokenizer (if given), the generation config, the shipped modeling files and a model card. An existing
    non-empty directory is replaced only with `overwrite=True`.
    """
    if DropConfig.from_model(model) is None:
        raise ConfigError("this model has no drop_config: apply_drop(model, DropConfig(...)) first, or save an "
                          "unpruned model with model.save_pretrained().")
    get_architecture(model)
    refuse_source_as_target(model, save_directory)
    with staged_directory(save_directory, overwrite=overwrite) as staging:
        if _is_gguf_dequantised(model):  # the GGUF loader's quantizer cannot be serialised; weights are dense
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
        model.save_pretrained(staging, max_shard_size=max_shard_size)  # the shipped classes write the layout
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        from layerdrop_patch.publish.model_card import write_model_card

        write_model_card(staging, eval_results=eval_results, scores_plot=scores_plot)
    return Path(save_directory)


def refuse_source_as_target(model: Any, target: str | os.PathLike) -> None:
    """Writing over the directory a model was loaded from would destroy the input (even with overwrite)."""
    source = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    if source and Path(source).is_dir() and Path(source).resolve() == Path(target).resolve():
        raise OutputExistsError(f"{target} is the directory this model was loaded from; writing there would replace "
                                "the input. Choose another output directory.")


def shipped_config_and_class(config_dict: dict):
    """(shipped config instance, shipped causal-LM class) for a config.json dict of a base or pruned model."""
    cls = remote_class_for(SimpleNamespace(model_type=config_dict.get("model_type", ""),
                                           architectures=config_dict.get("architectures")))
    fields = {k: v for k, v in config_dict.items() if k not in ("model_type", "auto_map")}
    try:
        return cls.config_class.from_dict(fields), cls
    except (ValueError, TypeError) as err:  # the shipped config's own checks (drop_config rules, types)
        raise CheckpointError(f"config.json is not valid: {str(err)[:600]}") from None


def _as_drop_config(drop_config: Any) -> DropConfig | None:
    if drop_config is None or isinstance(drop_config, DropConfig):
        return drop_config
    if isinstance(drop_config, dict):
        return DropConfig.from_dict(drop_config)
    raise ConfigError(f"drop_config must be a DropConfig or its dict (e.g. {{'attn': [3, 7]}}), got "
                      f"{type(drop_config).__name__}: {str(drop_config)[:80]}")


def _load(cls, path: str, **kwargs):
    """cls.from_pretrained with the loading problems of a damaged checkpoint named as such."""
    try:
        return cls.from_pretrained(path, **kwargs)
    except LayerdropError:
        raise
    except ValueError as err:  # raised by the shipped classes' weight checks
        raise CheckpointError(f"{path}: {str(err)[:1500]}") from None
    except Exception as err:  # safetensors' "incomplete metadata", a truncated shard, a missing index entry
        if type(err).__name__ in ("SafetensorError", "HeaderTooLarge", "HeaderTooSmall", "InvalidHeader") or \
                "safetensors" in type(err).__module__:
            raise CheckpointError(
                f"{path}: a weight file is unreadable ({type(err).__name__}: {str(err)[:300]}); it was cut short or "
                "damaged in a copy or download. Re-download or re-save the checkpoint.") from None
        raise


def from_pretrained(name_or_path: str | os.PathLike, drop_config: DropConfig | dict | None = None, **hf_kwargs):
    """Load a model and drop sublayers at load time, or load a saved pruned checkpoint.

    * Base model + `drop_config`: the model is built on the meta device already pruned, so the dropped
      weights are never materialised; the checkpoint's weights for them are skipped.
    * Saved pruned checkpoint: loaded without `trust_remote_code` (the modelling code is this package's);
      weights that disagree with its drop_config are refused. A `drop_config` given too must include the
      saved one; the extra drops are applied after loading.
    `hf_kwargs` go to transformers' `from_pretrained` (`dtype`, `device_map="auto"`, `revision`, ...).
    """
    from layerdrop_patch.patch import apply_drop

    requested = _as_drop_config(drop_config)
    path = resolve_model(name_or_path)
    config_dict = read_config(path, **{k: hf_kwargs[k] for k in _HUB_KWARGS if k in hf_kwargs})
    config, cls = shipped_config_and_class(config_dict)
    saved = DropConfig.from_model(config)
    if saved is not None:
        model = _load(cls, path, config=config, **hf_kwargs)
        if requested is not None and requested.to_dict() != saved.to_dict():
            apply_drop(model, requested)
        return model
    cfg = (requested or DropConfig(method="none")).validate(config.num_hidden_layers)
    if cfg.base_model is None:
        cfg.base_model = str(name_or_path)
    config.drop_config = cfg.to_dict()
    return _load(cls, path, config=config, layerdrop_allow_dropped_weights=True, **hf_kwargs)


# --------------------------------------------------------------------------- proving portability
_PRELUDE = textwrap.dedent(
    """
    import sys
    sys.path = [p for p in sys.path if p not in ("", {repo!r})]

    class _BlockLayerdrop:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "layerdrop_patch":
                raise ImportError("layerdrop_patch is blocked in this process")

    sys.meta_path.insert(0, _BlockLayerdrop())
    try:
        import layerdrop_patch  # noqa: F401
        raise SystemExit("layerdrop_patch was importable despite the block")
    except ImportError:
        pass
    """
)


def run_without_package(script: str, cwd: str | os.PathLike, timeout: float = 900) -> dict:
    """Run Python `script` (which prints a JSON object as its last line) in a fresh interpreter whose import
    system refuses `layerdrop_patch`, and return that object.

    This is how the demo and the tests prove that a saved checkpoint loads through transformers' remote-code path
    alone. The result also carries `"layerdrop_modules"`: every `layerdrop*` module the subprocess imported
    (expected: none; transformers names its remote-code modules after the checkpoint directory).
    """
    repo = str(Path(__file__).resolve().parents[1])
    epilogue = '\nprint(json.dumps({"layerdrop_modules": sorted(m for m in sys.modules if m.startswith("layerdrop"))}))\n'
    source = _PRELUDE.format(repo=repo) + "import json\n" + textwrap.dedent(script) + epilogue
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, env=env, cwd=str(cwd),
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"the script failed without layerdrop_patch:\n{proc.stderr[-3000:]}")
    lines = [line for line in proc.stdout.strip().splitlines() if line.startswith("{")]
    if len(lines) < 2:
        raise RuntimeError(f"the script printed no JSON result:\n{proc.stdout[-2000:]}")
    return {**json.loads(lines[-2]), **json.loads(lines[-1])}
