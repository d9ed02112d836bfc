"""AWQ 4-bit quantisation of dropped (or intact) models, with a perplexity gate before anything is saved.

Why GPTQModel and not AutoAWQ: measured on SmolLM2-135M with transformers 5.23 (2026-11), AutoAWQ 0.2.9
(archived upstream) took ~15 min on CPU and produced an unusable model (perplexity ~1e6), while GPTQModel
7.6.0 (`backend=AWQ_TORCH`) wrote an AutoAWQ-format GEMM checkpoint in ~2 min that transformers 5.x loads
natively (transformers itself loads AWQ checkpoints only through GPTQModel). So GPTQModel is the default
backend (`pip install 'layerdrop-patch[awq]'`) and `backend="autoawq"` is refused with the reason and the fix.

Why dropped models need care: quantisers walk every decoder layer's attention and MLP from a per-architecture
module list and stop at the first one that is missing. After `apply_drop` the dropped sublayers (and their
norms) are deleted from the module tree, so we hand GPTQModel an in-memory model wrapped in a subclass of its
architecture definition with `layer_modules_strict = False`: modules that do not exist are skipped, the ones
that exist are quantised, and calibration activations flow layer by layer through the decoder layers' own
(patched) forward, so a dropped sublayer is never executed nor needed. `quantize_awq` checks both: that the
module tree after quantisation still matches the DropConfig and that every decoder layer ran its patched
forward during calibration.

Why the perplexity gate: a quantiser can finish "successfully" and leave a model that outputs garbage.
`quantize_awq` measures WikiText-2 perplexity before and after, and raises `QuantizationQualityError`
instead of saving when the ratio exceeds `max_ppl_ratio`.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from layerdrop_patch.architectures import decoder_layers, drop_of, get_architecture
from layerdrop_patch.errors import ConfigError, MissingDependencyError, QualityGateError, UnsupportedModelError
from layerdrop_patch.evaluation.perplexity import quick_perplexity
from layerdrop_patch.files import directory_bytes
from layerdrop_patch.options import StageConfig, option, positive

__all__ = ["BACKENDS", "QuantizeConfig", "QuantizeResult", "QuantizationQualityError", "quantize_awq", "save_model",
           "load_quantized", "check_awq_shapes"]

BACKENDS = ("gptqmodel", "autoawq")
QuantizationQualityError = QualityGateError  # the name 0.1.0 exported
AWQ_INSTALL_HINT = (
    "pip install 'layerdrop-patch[awq]'  (= gptqmodel==7.6.0 and optimum; gptqmodel pins numpy==2.2.6, so "
    "consider a separate virtualenv: python -m venv --system-site-packages ENV && "
    "ENV/bin/pip install -c constraints.txt gptqmodel==7.6.0 optimum, with torch pinned in constraints.txt)"
)
_CLIP_ROWS = 64  # GPTQModel's AWQ clip search processes output rows in blocks of 64 (or 256)


@dataclass
class QuantizeConfig(StageConfig):
    """AWQ settings: the `quantize` section of a recipe and the options of `layerdrop quantize`."""

    section = "quantize"
    backend: str = option("gptqmodel", "gptqmodel (AutoAWQ GEMM format) | autoawq (refused, with the reason).",
                          choices=BACKENDS)
    bits: int = option(4, "Weight bits (AWQ: 4).", choices=(4,))
    group_size: int = option(64, "Quantisation group size; must divide every input width.", check=positive)
    sym: bool = option(True, "Symmetric (no zero points) or asymmetric.", flag="--sym/--asym")
    n_samples: int = option(128, "Calibration chunks.", check=positive)
    seq_len: int = option(512, "Tokens per calibration chunk.", check=positive)
    batch_size: int = option(1, "Calibration chunks per forward.", check=positive)
    max_ppl_ratio: float = option(3.0, "Refuse to save if WikiText-2 perplexity grows by more than this factor.",
                                  check=positive)
    eval_tokens: int = option(8192, "WikiText-2 tokens for the before/after perplexity gate.", check=positive)


@dataclass
class QuantizeResult:
    """What `quantize_awq` did, for tables and JSON (`benchmarks/quantize_backends.py`)."""

    backend: str
    bits: int
    group_size: int
    sym: bool
    ppl_before: float
    ppl_after: float
    seconds: float
    out_dir: str | None = None
    checkpoint_bytes: int | None = None
    calibration: str = ""
    drop_config: dict | None = None
    layers_run: dict[int, int] = field(default_factory=dict)

    @property
    def ppl_ratio(self) -> float:
        return self.ppl_after / self.ppl_before

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ppl_ratio"] = self.ppl_ratio
        return d


# ----------------------------------------------------------------------------------------------- helpers
def _decoder_linears(model) -> dict[str, torch.nn.Linear]:
    return {n: m for n, m in decoder_layers(model).named_modules() if isinstance(m, torch.nn.Linear)}


def check_awq_shapes(model, group_size: int) -> None:
    """Refuse shapes GPTQModel's AWQ cannot handle, naming the module and what to change."""
    for name, lin in _decoder_linears(model).items():
        if group_size > 0 and lin.in_features % group_size:
            raise ConfigError(
                f"AWQ group_size={group_size} does not divide the input width {lin.in_features} of layers.{name}; "
                f"choose a group_size that divides every input width (e.g. 32 or 64 for SmolLM2's 576)."
            )
        if lin.out_features % _CLIP_ROWS:
            raise UnsupportedModelError(
                f"layers.{name} has {lin.out_features} output features; GPTQModel's AWQ clip search needs a "
                f"multiple of {_CLIP_ROWS}. This model cannot be AWQ-quantised by GPTQModel 7.6."
            )


def _token_rows(calibration: Any, tokenizer: Any, n_samples: int, seq_len: int) -> tuple[torch.Tensor, str]:
    """Calibration as a (n, seq_len) LongTensor: a Calibration, a tensor, a list of texts or a source name."""
    from layerdrop_patch.scoring.calibration import as_token_tensor, load_calibration

    if isinstance(calibration, (str, Path, list, tuple)):
        calibration = load_calibration(calibration if not isinstance(calibration, tuple) else list(calibration),
                                       tokenizer, n_samples=n_samples, seq_len=seq_len)
    return as_token_tensor(calibration)


def _check_structure(model) -> None:
    """Every dropped sublayer is still absent and every kept one present (the quantiser recreated nothing)."""
    arch = get_architecture(model)
    drop = drop_of(model)
    for i, layer in enumerate(decoder_layers(model)):
        for part, dropped in ((arch.attn, i in drop.attn), (arch.mlp, i in drop.mlp)):
            present = part.module in layer._modules
            if present == dropped:
                raise RuntimeError(
                    f"after quantisation layer {i}'s {part.module} is {'present' if present else 'missing'} but the "
                    f"DropConfig says it is {'dropped' if dropped else 'kept'}; the quantiser changed the module tree."
                )


# ----------------------------------------------------------------------------------------------- backends
def _require_gptqmodel():
    try:
        import gptqmodel  # noqa: F401
    except ImportError as err:
        raise MissingDependencyError(f"backend='gptqmodel' needs GPTQModel, which is not installed ({err}). Fix: "
                          f"{AWQ_INSTALL_HINT}") from err
    return gptqmodel


def _refuse_autoawq() -> None:
    """AutoAWQ cannot produce a sane model on the transformers this package needs; say so and how to fix."""
    import transformers

    try:
        import awq  # noqa: F401
        installed = "installed"
    except ImportError:
        installed = "not installed"
    raise UnsupportedModelError(
        f"backend='autoawq' ({installed}) cannot produce a usable model with transformers "
        f"{transformers.__version__}: AutoAWQ 0.2.9 is archived upstream, imports on transformers 5.x only via a "
        "compatibility alias, and its output measured perplexity ~1e6 on SmolLM2-135M (loaded either way); its "
        "own CPU inference also needs intel-extension-for-pytorch. Fix: use backend='gptqmodel' (the default), "
        f"which writes the same AutoAWQ GEMM checkpoint format: {AWQ_INSTALL_HINT}"
    )


def _gptqmodel_quantize(model, tokenizer, rows: torch.Tensor, bits: int, group_size: int, sym: bool,
                        batch_size: int) -> tuple[Any, dict]:
    """Quantise `model` (bf16, in place) with GPTQModel AWQ; returns (quantize config, {layer: forward calls})."""
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(min(2, os.cpu_count() or 1)))
    _require_gptqmodel()
    from gptqmodel import BACKEND
    from gptqmodel.models.auto import MODEL_MAP
    from gptqmodel.quantization.config import AWQConfig
    from gptqmodel.utils.importer import auto_select_device

    from layerdrop_patch.architectures import base_model_type

    model_type = base_model_type(model.config)
    if model_type not in MODEL_MAP:
        raise UnsupportedModelError(f"GPTQModel 7.6 has no definition for model_type {model_type!r}.")
    # Skip modules that a drop removed instead of failing on them (see module docstring).
    definition = type(f"LayerDrop{MODEL_MAP[model_type].__name__}", (MODEL_MAP[model_type],),
                      {"layer_modules_strict": False})
    qcfg = AWQConfig(bits=bits, group_size=group_size, sym=sym, offload_to_disk=False)
    qcfg.device = auto_select_device(None, None)  # what GPTQModel's own loader does; None is rejected later
    model.seqlen = int(getattr(model.config, "max_position_embeddings", rows.shape[1]))

    calls: dict[int, int] = {}
    hooks = [layer.register_forward_hook(lambda *_a, i=i: calls.__setitem__(i, calls.get(i, 0) + 1))
             for i, layer in enumerate(decoder_layers(model))]
    try:
        wrapped = definition(model, quantized=False, quantize_config=qcfg, tokenizer=tokenizer, model_local_path=None)
        data = [{"input_ids": r.tolist(), "attention_mask": [1] * len(r)} for r in rows]
        wrapped.quantize(data, batch_size=batch_size, backend=BACKEND.AWQ_TORCH)
    finally:
        for h in hooks:
            h.remove()
    # Every layer but the last must have run its own (patched) forward on each calibration batch.
    n_batches = -(-rows.shape[0] // batch_size)
    short = [i for i in range(len(decoder_layers(model)) - 1) if calls.get(i, 0) < n_batches]
    if short:
        raise RuntimeError(f"calibration did not run through decoder layers {short}: forward calls {calls}, "
                           f"expected >= {n_batches} each. The quantiser bypassed the patched forward.")
    return qcfg, calls


# ----------------------------------------------------------------------------------------------- public API
def quantize_awq(model: Any, tokenizer: Any, calibration: Any = "c4", out_dir: str | os.PathLike | None = None,
                 config: QuantizeConfig | None = None, *, inplace: bool = False, overwrite: bool = False,
                 **overrides: Any) -> tuple[Any, QuantizeResult]:
    """AWQ-quantise `model` (dropped or not), check its WikiText-2 perplexity, and save it to `out_dir`.

    Args:
        calibration: a `Calibration`, a (n, seq_len) LongTensor, a list of texts, or a source name for
            `load_calibration` ("c4" by default: calibrating on the WikiText-2 test text would leak into the gate).
        out_dir: where to save (a checkpoint that reloads with its DropConfig); None = keep in memory only.
        config: a QuantizeConfig; keyword `overrides` (group_size=..., sym=...) build or change one.
        inplace: quantise `model` itself; by default a deep copy is quantised and `model` is left untouched.
        overwrite: replace an existing non-empty `out_dir`.

    Returns: (quantised model in bf16 with packed AWQ linears, QuantizeResult). Raises `QualityGateError`, saving
    nothing, if ppl_after / ppl_before exceeds `max_ppl_ratio`.
    """
    q = QuantizeConfig.build(config, **overrides)
    if q.backend == "autoawq":
        _refuse_autoawq()
    check_awq_shapes(model, q.group_size)
    rows, description = _token_rows(calibration, tokenizer, q.n_samples, q.seq_len)

    ppl_before = quick_perplexity(model, tokenizer, q.eval_tokens)
    work = model if inplace else copy.deepcopy(model)
    work = work.to(torch.bfloat16).eval()  # GPTQModel's AWQ_TORCH kernels accept only fp16/bf16
    start = time.perf_counter()
    qcfg, calls = _gptqmodel_quantize(work, tokenizer, rows, q.bits, q.group_size, q.sym, q.batch_size)
    seconds = time.perf_counter() - start
    _check_structure(work)
    work.config.quantization_config = qcfg.to_dict()
    ppl_after = quick_perplexity(work, tokenizer, q.eval_tokens)

    result = QuantizeResult(backend=q.backend, bits=q.bits, group_size=q.group_size, sym=q.sym,
                            ppl_before=ppl_before, ppl_after=ppl_after, seconds=seconds, calibration=description,
                            drop_config=getattr(work.config, "drop_config", None), layers_run=calls)
    if not (ppl_after == ppl_after) or result.ppl_ratio > q.max_ppl_ratio:  # NaN or blown up
        raise QualityGateError(
            f"AWQ ({q.backend}, {q.bits}-bit, group {q.group_size}, sym={q.sym}) raised WikiText-2 perplexity from "
            f"{ppl_before:.2f} to {ppl_after:.2f} (x{result.ppl_ratio:.2f} > max_ppl_ratio={q.max_ppl_ratio}); "
            "refusing to save it. Fix: try sym=False or a smaller group_size, use more/longer calibration data, "
            "drop fewer sublayers, or raise max_ppl_ratio if this loss is acceptable."
        )
    if out_dir is not None:
        save_model(work, tokenizer, out_dir, overwrite=overwrite,
                   extra_files={"layerdrop_quantize.json": result.to_dict()})
        result.out_dir = str(out_dir)
        result.checkpoint_bytes = directory_bytes(out_dir)
    return work, result


def save_model(model, tokenizer, out_dir: str | os.PathLike, *, overwrite: bool = False,
               extra_files: dict[str, Any] | None = None) -> None:
    """Save a (quantised or recovered) model atomically: a dropped one as a portable checkpoint (weights that
    remain, DropConfig, shipped modeling code; `quantization_config` is kept), an intact one as plain
    transformers. `extra_files` ({name: JSON-able}) are written into the same directory."""
    from layerdrop_patch.files import staged_directory, to_json

    with staged_directory(out_dir, overwrite=overwrite) as staging:
        if getattr(model.config, "drop_config", None) is not None:
            from layerdrop_patch.checkpoint import save_pretrained

            save_pretrained(model, staging, tokenizer=tokenizer, overwrite=True)  # into our own fresh staging dir
        else:
            model.save_pretrained(staging)
            if tokenizer is not None:
                tokenizer.save_pretrained(staging)
        for name, data in (extra_files or {}).items():
            (staging / name).write_text(to_json(data))


def load_quantized(path: str | os.PathLike, device_map: str | None = None) -> Any:
    """Reload a checkpoint written by `save_model` (AWQ layers need gptqmodel, as in transformers itself)."""
    import importlib.util

    from transformers import AutoModelForCausalLM

    from layerdrop_patch.embedded import read_config

    config = read_config(str(path))
    if (config.get("quantization_config") or {}).get("quant_method") == "awq" and \
            importlib.util.find_spec("gptqmodel") is None:
        raise MissingDependencyError(f"{path} is an AWQ checkpoint; transformers loads those only through GPTQModel, "
                                     f"which is not installed. Fix: {AWQ_INSTALL_HINT}")
    kwargs = {"device_map": device_map} if device_map else {}
    if config.get("drop_config") is not None:
        from layerdrop_patch.checkpoint import from_pretrained

        return from_pretrained(str(path), **kwargs).eval()
    return AutoModelForCausalLM.from_pretrained(str(path), **kwargs).eval()
