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
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["BACKENDS", "QuantizeResult", "QuantizationQualityError", "quantize_awq", "save_model",
           "load_quantized", "directory_bytes", "check_awq_shapes"]

BACKENDS = ("gptqmodel", "autoawq")
AWQ_INSTALL_HINT = (
    "pip install 'layerdrop-patch[awq]'  (= gptqmodel==7.6.0 and optimum; gptqmodel pins numpy==2.2.6, so "
    "consider a separate virtualenv: python -m venv --system-site-packages ENV && "
    "ENV/bin/pip install -c constraints.txt gptqmodel==7.6.0 optimum, with torch pinned in constraints.txt)"
)
_CLIP_ROWS = 64  # GPTQModel's AWQ clip search processes output rows in blocks of 64 (or 256)


class QuantizationQualityError(RuntimeError):
    """The quantised model's perplexity blew up; nothing was saved."""


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
def directory_bytes(path: str | os.PathLike) -> int:
    """Total size of the files under `path` (the on-disk checkpoint size)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _decoder_linears(model) -> dict[str, torch.nn.Linear]:
    return {n: m for n, m in model.model.layers.named_modules() if isinstance(m, torch.nn.Linear)}


def check_awq_shapes(model, group_size: int) -> None:
    """Refuse shapes GPTQModel's AWQ cannot handle, naming the module and what to change."""
    for name, lin in _decoder_linears(model).items():
        if group_size > 0 and lin.in_features % group_size:
            raise ValueError(
                f"AWQ group_size={group_size} does not divide the input width {lin.in_features} of layers.{name}; "
                f"choose a group_size that divides every input width (e.g. 32 or 64 for SmolLM2's 576)."
            )
        if lin.out_features % _CLIP_ROWS:
            raise ValueError(
                f"layers.{name} has {lin.out_features} output features; GPTQModel's AWQ clip search needs a "
                f"multiple of {_CLIP_ROWS}. This model cannot be AWQ-quantised by GPTQModel 7.6."
            )


def _token_rows(calibration: Any, tokenizer: Any, n_samples: int, seq_len: int) -> tuple[torch.Tensor, str]:
    """Calibration as a (n, seq_len) LongTensor: a Calibration, a tensor, a list of texts or a source name."""
    from layerdrop_patch.calibration import as_token_tensor, load_calibration

    if isinstance(calibration, (str, Path, list, tuple)):
        calibration = load_calibration(calibration if not isinstance(calibration, tuple) else list(calibration),
                                       tokenizer, n_samples=n_samples, seq_len=seq_len)
    return as_token_tensor(calibration)


def quick_perplexity(model, tokenizer, max_tokens: int = 8192, seq_len: int = 512) -> float:
    """WikiText-2 perplexity on the first `max_tokens` tokens (non-overlapping windows): the quality gate."""
    from layerdrop_patch.evaluation.perplexity import perplexity

    return float(perplexity(model, tokenizer, "wikitext2", seq_len=seq_len, stride=seq_len,
                            max_tokens=max_tokens, progress=False))


def _drop_sets(model) -> tuple[set[int], set[int]]:
    drop = getattr(model.config, "drop_config", None) or {}
    return set(drop.get("attn", ())), set(drop.get("mlp", ()))


def _check_structure(model) -> None:
    """Every dropped sublayer is still absent and every kept one present (the quantiser recreated nothing)."""
    from layerdrop_patch.architectures import get_architecture

    arch = get_architecture(model)
    attn, mlp = _drop_sets(model)
    for i, layer in enumerate(model.model.layers):
        for part, dropped in ((arch.attn, i in attn), (arch.mlp, i in mlp)):
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
        raise ImportError(f"backend='gptqmodel' needs GPTQModel, which is not installed ({err}). Fix: "
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
    raise NotImplementedError(
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
        raise NotImplementedError(f"GPTQModel 7.6 has no definition for model_type {model_type!r}.")
    # Skip modules that a drop removed instead of failing on them (see module docstring).
    definition = type(f"LayerDrop{MODEL_MAP[model_type].__name__}", (MODEL_MAP[model_type],),
                      {"layer_modules_strict": False})
    qcfg = AWQConfig(bits=bits, group_size=group_size, sym=sym, offload_to_disk=False)
    qcfg.device = auto_select_device(None, None)  # what GPTQModel's own loader does; None is rejected later
    model.seqlen = int(getattr(model.config, "max_position_embeddings", rows.shape[1]))

    calls: dict[int, int] = {}
    hooks = [layer.register_forward_hook(lambda *_a, i=i: calls.__setitem__(i, calls.get(i, 0) + 1))
             for i, layer in enumerate(model.model.layers)]
    try:
        wrapped = definition(model, quantized=False, quantize_config=qcfg, tokenizer=tokenizer, model_local_path=None)
        data = [{"input_ids": r.tolist(), "attention_mask": [1] * len(r)} for r in rows]
        wrapped.quantize(data, batch_size=batch_size, backend=BACKEND.AWQ_TORCH)
    finally:
        for h in hooks:
            h.remove()
    # Every layer but the last must have run its own (patched) forward on each calibration batch.
    n_batches = -(-rows.shape[0] // batch_size)
    short = [i for i in range(len(model.model.layers) - 1) if calls.get(i, 0) < n_batches]
    if short:
        raise RuntimeError(f"calibration did not run through decoder layers {short}: forward calls {calls}, "
                           f"expected >= {n_batches} each. The quantiser bypassed the patched forward.")
    return qcfg, calls


# ----------------------------------------------------------------------------------------------- public API
def quantize_awq(
    model: Any,
    tokenizer: Any,
    calibration: Any = "c4",
    out_dir: str | os.PathLike | None = None,
    *,
    backend: str = "gptqmodel",
    bits: int = 4,
    group_size: int = 64,
    sym: bool = True,
    n_samples: int = 128,
    seq_len: int = 512,
    batch_size: int = 1,
    max_ppl_ratio: float = 3.0,
    eval_tokens: int = 8192,
    inplace: bool = False,
) -> tuple[Any, QuantizeResult]:
    """AWQ-quantise `model` (dropped or not), check its WikiText-2 perplexity, and save it to `out_dir`.

    Args:
        calibration: a `Calibration`, a (n, seq_len) LongTensor, a list of texts, or a source name for
            `load_calibration` ("c4" by default: calibrating on the WikiText-2 test text would leak into the gate).
        out_dir: where to save (a checkpoint that reloads with its DropConfig); None = keep in memory only.
        sym: symmetric quantisation (no zero points) or asymmetric.
        max_ppl_ratio: refuse (raise `QuantizationQualityError`, save nothing) if ppl_after / ppl_before exceeds it.
        eval_tokens: WikiText-2 tokens for the before/after perplexity.
        inplace: quantise `model` itself; by default a deep copy is quantised and `model` is left untouched.

    Returns: (quantised model in bf16 with packed AWQ linears, QuantizeResult).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown quantisation backend {backend!r}; choose one of {BACKENDS}.")
    if backend == "autoawq":
        _refuse_autoawq()
    if bits != 4:
        raise ValueError(f"only 4-bit AWQ is supported (the GEMM kernels transformers loads), got bits={bits}.")
    check_awq_shapes(model, group_size)
    rows, description = _token_rows(calibration, tokenizer, n_samples, seq_len)

    ppl_before = quick_perplexity(model, tokenizer, eval_tokens)
    work = model if inplace else copy.deepcopy(model)
    work = work.to(torch.bfloat16).eval()  # GPTQModel's AWQ_TORCH kernels accept only fp16/bf16
    start = time.perf_counter()
    qcfg, calls = _gptqmodel_quantize(work, tokenizer, rows, bits, group_size, sym, batch_size)
    seconds = time.perf_counter() - start
    _check_structure(work)
    work.config.quantization_config = qcfg.to_dict()
    ppl_after = quick_perplexity(work, tokenizer, eval_tokens)

    result = QuantizeResult(backend=backend, bits=bits, group_size=group_size, sym=sym, ppl_before=ppl_before,
                            ppl_after=ppl_after, seconds=seconds, calibration=description,
                            drop_config=getattr(work.config, "drop_config", None), layers_run=calls)
    if not (ppl_after == ppl_after) or result.ppl_ratio > max_ppl_ratio:  # NaN or blown up
        raise QuantizationQualityError(
            f"AWQ ({backend}, {bits}-bit, group {group_size}, sym={sym}) raised WikiText-2 perplexity from "
            f"{ppl_before:.2f} to {ppl_after:.2f} (x{result.ppl_ratio:.2f} > max_ppl_ratio={max_ppl_ratio}); "
            "refusing to save it. Fix: try sym=False or a smaller group_size, use more/longer calibration data, "
            "drop fewer sublayers, or raise max_ppl_ratio if this loss is acceptable."
        )
    if out_dir is not None:
        save_model(work, tokenizer, out_dir)
        result.out_dir = str(out_dir)
        result.checkpoint_bytes = directory_bytes(out_dir)
        Path(out_dir, "layerdrop_quantize.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return work, result


def save_model(model, tokenizer, out_dir: str | os.PathLike) -> None:
    """Save a (quantised) model: a dropped one through `layerdrop_patch.checkpoint.save_pretrained` (weights that
    remain, DropConfig, shipped modeling code; `quantization_config` is kept), an intact one as plain transformers."""
    if getattr(model.config, "drop_config", None) is not None:
        from layerdrop_patch.checkpoint import save_pretrained

        save_pretrained(model, out_dir, tokenizer=tokenizer, overwrite=True)
        return
    model.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)


def load_quantized(path: str | os.PathLike, **kwargs) -> Any:
    """Reload a checkpoint written by `save_model` (AWQ layers need gptqmodel, as in transformers itself)."""
    from transformers import AutoModelForCausalLM, PretrainedConfig

    config, _ = PretrainedConfig.get_config_dict(str(path))
    if (config.get("quantization_config") or {}).get("quant_method") == "awq":
        import importlib.util

        if importlib.util.find_spec("gptqmodel") is None:
            raise ImportError(f"{path} is an AWQ checkpoint; transformers loads those only through GPTQModel, which "
                              f"is not installed. Fix: {AWQ_INSTALL_HINT}")
    if config.get("drop_config") is not None:
        from layerdrop_patch.checkpoint import from_pretrained

        return from_pretrained(str(path), **kwargs).eval()
    return AutoModelForCausalLM.from_pretrained(str(path), **kwargs).eval()
