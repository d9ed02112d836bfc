"""LoRA recovery: a short fine-tune that wins back part of the quality an aggressive drop costs.

Why LoRA and why short: removing whole blocks (or attention and MLP together) shifts the residual stream the
remaining layers see. A few hundred steps of low-rank adapters on calibration-like text let the kept layers
adapt to the missing ones at a tiny fraction of full fine-tuning's memory, and the adapters either merge back
into the weights (the checkpoint keeps its plain layout and speed) or stay separate (for quantised bases).

Why targets are computed, not named: after `apply_drop` the dropped attention/MLP modules are deleted from the
module tree, so "q_proj" no longer exists in every layer. The family descriptor names each family's projections
(Phi-3's fused `qkv_proj` and `gate_up_proj` included); we list those that still exist (dense `nn.Linear`, or
AWQ quantised linears, which carry a `qweight`) and pass their full names to peft.

Order with AWQ: LoRA -> merge -> AWQ works with any peft (the quantiser sees ordinary dense weights);
AWQ -> LoRA (adapter kept, QLoRA-style) works through peft's GPTQModel AWQ layer support, which needs `optimum`
next to `gptqmodel`. Merging into 4-bit weights is not possible.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from layerdrop_patch.architectures import check_sequence_length, projection_names
from layerdrop_patch.errors import ConfigError, QualityGateError
from layerdrop_patch.files import atomic_write_json
from layerdrop_patch.options import StageConfig, fraction, non_negative, option, positive
from layerdrop_patch.recover.distill import LOSSES, near_dropped_layers, training_loss

__all__ = ["RecoveryConfig", "RecoveryResult", "lora_target_modules", "recover_lora"]


@dataclass
class RecoveryConfig(StageConfig):
    """LoRA recovery settings: the `recover` section of a recipe and the options of `layerdrop recover`."""

    section = "recover"
    steps: int = option(200, "Training steps.", check=positive)
    lr: float = option(2e-4, "Learning rate (AdamW, warm-up then cosine decay).", check=positive)
    rank: int = option(8, "LoRA rank.", check=positive)
    alpha: int = option(16, "LoRA alpha.", check=positive)
    batch_size: int = option(4, "Sequences per step.", check=positive)
    seq_len: int = option(256, "Tokens per training sequence.", check=positive)
    data: str = option("c4", "Training text: c4 | a local file or directory | a hub dataset (not WikiText-2: "
                       "the before/after perplexity is measured on it).")
    merge: bool = option(True, "Merge the adapters into the weights (else keep them apart, e.g. on AWQ weights).",
                         flag="--merge/--keep-adapter")
    eval_tokens: int = option(8192, "WikiText-2 tokens for perplexity before/after (0 skips it).", check=non_negative)
    seed: int = option(0, "Seed of the data order.")
    loss: str = option("lm", "Training objective: lm (next-token cross-entropy), distill (match the unpruned "
                       "model's predictions; needs the teacher) or lm+distill.", choices=LOSSES)
    temperature: float = option(2.0, "Distillation temperature.", check=positive)
    distill_weight: float = option(0.5, "lm+distill: the distillation share of the loss.", check=fraction)
    near: int | None = option(None, "Adapt only layers within this many of a dropped sublayer (None: every layer).",
                              check=non_negative)



@dataclass
class RecoveryResult:
    """What `recover_lora` did: the numbers behind recovery.json."""

    steps: int
    seconds: float
    ppl_before: float | None
    ppl_after: float | None
    losses: list[float] = field(default_factory=list)
    targets: int = 0
    trainable_params: int = 0
    merged: bool = True
    out_dir: str | None = None
    loss_plot: str | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_quantised(module: torch.nn.Module) -> bool:
    return hasattr(module, "qweight")


def lora_target_modules(model, names: tuple[str, ...] | None = None, layers: set[int] | None = None) -> list[str]:
    """Full names of the projections that still exist in the decoder layers (dropped ones are gone), optionally
    only in `layers`."""
    names = tuple(names or projection_names(model))
    targets = []
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        index = name.split(".layers.", 1)[1].split(".", 1)[0] if ".layers." in f".{name}" else None
        if index is not None and leaf in names and (layers is None or int(index) in layers) and \
                (isinstance(module, torch.nn.Linear) or _is_quantised(module)):
            targets.append(name)
    if not targets:
        raise ConfigError(f"no LoRA targets found: none of {names} exists in the decoder layers of "
                          f"{type(model).__name__} (was every sublayer dropped?). Pass target_names=... to choose.")
    return targets


def _training_rows(data: Any, tokenizer: Any, n_rows: int, seq_len: int, seed: int) -> torch.Tensor:
    from layerdrop_patch.scoring.calibration import as_token_tensor, load_calibration

    if isinstance(data, (str, Path, list, tuple)):
        data = load_calibration(list(data) if isinstance(data, tuple) else data, tokenizer, n_samples=n_rows,
                                seq_len=seq_len, seed=seed)
    rows, _ = as_token_tensor(data)
    return rows


def recover_lora(model: Any, tokenizer: Any, train_data: Any = None, config: RecoveryConfig | None = None, *,
                 teacher: Any = None, target_names: tuple[str, ...] | None = None,
                 out_dir: str | os.PathLike | None = None, overwrite: bool = False, progress: bool = True,
                 **overrides: Any) -> tuple[Any, RecoveryResult]:
    """Fine-tune LoRA adapters for `config.steps` steps; merge them (default) or keep them; optionally save.

    Args:
        model: a (dropped) *ForCausalLM, dense or AWQ-quantised. Trained in place: the adapters are added to it.
        train_data: a `Calibration`, a (n, seq_len) LongTensor, a list of texts, or a `load_calibration` source;
            default `config.data` ("c4"; WikiText-2 is what the before/after perplexity is measured on).
        config: a RecoveryConfig; keyword `overrides` (steps=..., lr=...) build or change one.
        teacher: the unpruned model, for `loss="distill"` / `"lm+distill"` (run in eval mode, no gradients).
        target_names: projection names to adapt (default: the family's, see `architectures.projection_names`).
        out_dir: where to save: the merged model (dropped models as portable checkpoints) or the adapter in
            `out_dir/adapter`; plus `loss.png` and `recovery.json`. None = don't save. An existing non-empty
            `out_dir` is replaced only with `overwrite=True`.

    Returns: (model, RecoveryResult); with merge=False the model is a `PeftModel`.
    """
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm

    from layerdrop_patch.evaluation.perplexity import quick_perplexity
    from layerdrop_patch.recover.plots import plot_loss_curve

    config = RecoveryConfig.build(config, **overrides)
    check_sequence_length(model, config.seq_len, "seq_len")
    if config.loss != "lm" and teacher is None:
        raise ConfigError(f"loss={config.loss!r} needs the unpruned model as teacher: recover_lora(..., teacher="
                          "base_model), or --teacher MODEL on the command line.")
    layers = near_dropped_layers(model, config.near) if config.near is not None else None
    targets = lora_target_modules(model, target_names, layers)
    quantised = any(_is_quantised(m) for n, m in model.named_modules() if n in set(targets))
    if config.merge and quantised:
        raise ConfigError("merge=True: LoRA adapters cannot be merged into AWQ 4-bit weights. Fix: keep the adapter "
                          "(merge=False, --keep-adapter), or recover before quantising (LoRA, merge, AWQ).")
    eval_tokens = config.eval_tokens or None
    ppl_before = quick_perplexity(model, tokenizer, eval_tokens) if eval_tokens else None
    rows = _training_rows(train_data if train_data is not None else config.data, tokenizer,
                          config.steps * config.batch_size, config.seq_len, config.seed)
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=0.0, target_modules=targets, bias="none",
                      task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft reads transformers' deprecated `is_gradient_checkpointing`; not ours to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, lora)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    steps, warmup = config.steps, max(1, config.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    generator = torch.Generator().manual_seed(config.seed)

    losses: list[float] = []
    peft_model.train()
    start = time.perf_counter()
    bar = tqdm(range(steps), desc="LoRA recovery", disable=not progress, unit="step")
    batch_size = config.batch_size
    for step in bar:
        index = torch.randint(0, rows.shape[0], (batch_size,), generator=generator) \
            if rows.shape[0] < steps * batch_size else torch.arange(step * batch_size, (step + 1) * batch_size)
        batch = rows[index].to(peft_model.get_input_embeddings().weight.device)  # inputs follow the embeddings
        loss = training_loss(peft_model, batch, config.loss, teacher=teacher, temperature=config.temperature,
                             distill_weight=config.distill_weight)
        if not torch.isfinite(loss):
            raise QualityGateError(f"LoRA recovery loss became {loss.item()} at step {step}; lower lr (now "
                                   f"{config.lr}).")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    seconds = time.perf_counter() - start
    peft_model.eval()

    result_model = peft_model.merge_and_unload() if config.merge else peft_model
    ppl_after = quick_perplexity(result_model, tokenizer, eval_tokens) if eval_tokens else None
    result = RecoveryResult(steps=steps, seconds=seconds, ppl_before=ppl_before, ppl_after=ppl_after, losses=losses,
                            targets=len(targets), trainable_params=sum(p.numel() for p in params),
                            merged=config.merge, config={**config.to_dict(), "quantised_base": quantised})
    if out_dir is not None:
        from layerdrop_patch.files import staged_directory
        from layerdrop_patch.quantize import save_model

        out = Path(out_dir)
        result.out_dir, result.loss_plot = str(out), str(out / "loss.png")
        if config.merge:
            save_model(result_model, tokenizer, out, overwrite=overwrite, extra_files={"recovery.json": result.to_dict()})
        else:
            with staged_directory(out, overwrite=overwrite) as staging:
                result_model.save_pretrained(staging / "adapter")
                atomic_write_json(staging / "recovery.json", result.to_dict())
        plot_loss_curve(losses, out / "loss.png")
    return result_model, result
