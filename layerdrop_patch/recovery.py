"""LoRA recovery: a short fine-tune that wins back part of the quality an aggressive drop costs.

Why LoRA and why short: removing whole blocks (or attention and MLP together) shifts the residual stream the
remaining layers see. A few hundred steps of low-rank adapters on calibration-like text let the kept layers
adapt to the missing ones at a tiny fraction of full fine-tuning's memory, and the adapters either merge back
into the weights (the checkpoint keeps its plain layout and speed) or stay separate (for quantised bases).

Why targets are computed, not named: after `apply_drop` the dropped attention/MLP modules are deleted from the
module tree, so "q_proj" no longer exists in every layer. We list the projections that do exist (dense
`nn.Linear`, or AWQ quantised linears, which carry a `qweight`) and pass their full names to peft.

Order with AWQ (see `benchmarks/recovery.py`): LoRA -> merge -> AWQ works with any peft (the quantiser sees
ordinary dense weights); AWQ -> LoRA (adapter kept, QLoRA-style) works through peft's GPTQModel AWQ layer
support, which needs `optimum` next to `gptqmodel`. Merging into 4-bit weights is not possible.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["RecoveryResult", "lora_target_modules", "recover_lora", "plot_loss_curve"]

PROJECTION_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class RecoveryResult:
    """What `recover_lora` did: the numbers behind benchmarks/results/recovery.json."""

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


def lora_target_modules(model, names: tuple[str, ...] = PROJECTION_NAMES) -> list[str]:
    """Full names of the projections that still exist in the decoder layers (dropped ones are gone)."""
    targets = []
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if ".layers." in f".{name}" and leaf in names and (isinstance(module, torch.nn.Linear) or _is_quantised(module)):
            targets.append(name)
    if not targets:
        raise ValueError(f"no LoRA targets found: none of {names} exists in the decoder layers of "
                         f"{type(model).__name__} (was every sublayer dropped?). Pass target_names=... to choose.")
    return targets


def _training_rows(data: Any, tokenizer: Any, n_rows: int, seq_len: int, seed: int) -> torch.Tensor:
    from layerdrop_patch.calibration import as_token_tensor, load_calibration

    if isinstance(data, (str, Path, list, tuple)):
        data = load_calibration(list(data) if isinstance(data, tuple) else data, tokenizer, n_samples=n_rows,
                                seq_len=seq_len, seed=seed)
    rows, _ = as_token_tensor(data)
    return rows


def plot_loss_curve(losses: list[float], path: str | os.PathLike, title: str = "LoRA recovery") -> Path:
    """Training loss per step (light) and its running mean over ~5% of the steps (dark), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = max(1, len(losses) // 20)
    smooth = [sum(losses[max(0, i - window + 1): i + 1]) / len(losses[max(0, i - window + 1): i + 1])
              for i in range(len(losses))]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(range(1, len(losses) + 1), losses, color="tab:blue", alpha=0.3, lw=1, label="loss")
    ax.plot(range(1, len(losses) + 1), smooth, color="tab:blue", lw=2, label=f"mean of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def recover_lora(
    model: Any,
    tokenizer: Any,
    train_data: Any = "c4",
    *,
    steps: int = 200,
    batch_size: int = 4,
    seq_len: int = 256,
    lr: float = 2e-4,
    rank: int = 8,
    alpha: int = 16,
    target_names: tuple[str, ...] = PROJECTION_NAMES,
    merge: bool = True,
    out_dir: str | os.PathLike | None = None,
    eval_tokens: int | None = 8192,
    seed: int = 0,
    progress: bool = True,
) -> tuple[Any, RecoveryResult]:
    """Fine-tune LoRA adapters on `train_data` for `steps` steps; merge them (default) or keep them; save.

    Args:
        model: a (dropped) *ForCausalLM, dense or AWQ-quantised. Trained in place: the adapters are added to it.
        train_data: a `Calibration`, a (n, seq_len) LongTensor, a list of texts, or a `load_calibration` source
            ("c4" by default; WikiText-2 is what the before/after perplexity is measured on, so train elsewhere).
        merge: fold the adapters into the weights and return the plain model; impossible for AWQ weights
            (use merge=False there: the returned model is a `PeftModel` and the adapter is saved on its own).
        out_dir: where to save: the merged model (dropped models through `layerdrop_patch.checkpoint`), or
            the adapter in `out_dir/adapter`; plus `loss.png` and `recovery.json`. None = don't save.
        eval_tokens: WikiText-2 tokens for perplexity before/after; None skips the measurement.

    Returns: (model, RecoveryResult).
    """
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm

    from layerdrop_patch.quantize import quick_perplexity, save_model

    targets = lora_target_modules(model, target_names)
    quantised = any(_is_quantised(m) for n, m in model.named_modules() if n in set(targets))
    if merge and quantised:
        raise ValueError("merge=True: LoRA adapters cannot be merged into AWQ 4-bit weights. Fix: pass merge=False "
                         "(adapter kept next to the quantised model), or recover before quantising (LoRA, merge, AWQ).")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")

    ppl_before = quick_perplexity(model, tokenizer, eval_tokens) if eval_tokens else None
    rows = _training_rows(train_data, tokenizer, steps * batch_size, seq_len, seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets, bias="none",
                        task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    generator = torch.Generator().manual_seed(seed)

    losses: list[float] = []
    peft_model.train()
    start = time.perf_counter()
    bar = tqdm(range(steps), desc="LoRA recovery", disable=not progress, unit="step")
    for step in bar:
        index = torch.randint(0, rows.shape[0], (batch_size,), generator=generator) if rows.shape[0] < steps * batch_size \
            else torch.arange(step * batch_size, (step + 1) * batch_size)
        batch = rows[index].to(peft_model.get_input_embeddings().weight.device)  # GPU models: inputs follow the embeddings
        loss = peft_model(input_ids=batch, labels=batch, use_cache=False).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"LoRA recovery loss became {loss.item()} at step {step}; lower lr (now {lr}).")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    seconds = time.perf_counter() - start
    peft_model.eval()

    trainable = sum(p.numel() for p in params)
    result_model = peft_model.merge_and_unload() if merge else peft_model
    ppl_after = quick_perplexity(result_model, tokenizer, eval_tokens) if eval_tokens else None
    result = RecoveryResult(steps=steps, seconds=seconds, ppl_before=ppl_before, ppl_after=ppl_after, losses=losses,
                            targets=len(targets), trainable_params=trainable, merged=merge,
                            config={"rank": rank, "alpha": alpha, "lr": lr, "batch_size": batch_size,
                                    "seq_len": seq_len, "seed": seed, "quantised_base": quantised})
    if out_dir is not None:
        out = Path(out_dir)
        if merge:
            save_model(result_model, tokenizer, out)
        else:
            result_model.save_pretrained(out / "adapter")
        result.out_dir = str(out)
        result.loss_plot = str(plot_loss_curve(losses, out / "loss.png"))
        (out / "recovery.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result_model, result
