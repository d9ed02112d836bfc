"""LoRA recovery of dropped models (layerdrop_patch.recovery), and its composition with AWQ.

Dense-model tests need only peft (a core dependency). The AWQ compositions need GPTQModel and optimum (the
`[awq]` extra) and are skipped, with the reason printed, where those are missing.
"""

from __future__ import annotations

import importlib.util
import copy
import json
import math

import pytest
import torch

from layerdrop_patch.checkpoint import from_pretrained
from layerdrop_patch.config import DropConfig
from layerdrop_patch.evaluation.toy import byte_tokenizer, tiny_llama
from layerdrop_patch.patch import apply_drop
from layerdrop_patch.recover import lora_target_modules, recover_lora
from tests.conftest import ARCHITECTURE_CASES, tiny_model

HAS_AWQ = all(importlib.util.find_spec(m) is not None for m in ("gptqmodel", "optimum"))
needs_awq = pytest.mark.skipif(
    not HAS_AWQ, reason="gptqmodel and optimum are not both installed (pip install 'layerdrop-patch[awq]')"
)
FAST = dict(batch_size=4, seq_len=64, lr=2e-3, eval_tokens=1024, progress=False)


def test_targets_are_only_the_projections_that_still_exist():
    model = apply_drop(tiny_llama(num_layers=3), DropConfig(attn=[0], mlp=[1]))
    targets = lora_target_modules(model)
    assert not any(t.startswith("model.layers.0.self_attn") for t in targets)
    assert not any(t.startswith("model.layers.1.mlp") for t in targets)
    assert "model.layers.0.mlp.down_proj" in targets and "model.layers.1.self_attn.q_proj" in targets
    assert len(targets) == 3 * 7 - 4 - 3  # 7 projections per layer, minus 4 attention and 3 MLP ones


def test_everything_dropped_is_a_clear_error():
    model = apply_drop(tiny_llama(num_layers=2), DropConfig.blocks([0, 1]))
    with pytest.raises(ValueError, match="no LoRA targets"):
        lora_target_modules(model)


def test_recovery_lowers_perplexity_merges_saves_and_reloads(tmp_path):
    tok = byte_tokenizer()
    model = apply_drop(tiny_llama(num_layers=4, seed=1), DropConfig.blocks([1, 2]))
    out = tmp_path / "recovered"
    recovered, result = recover_lora(model, tok, "c4", steps=40, out_dir=out, **FAST)

    assert result.ppl_after < result.ppl_before, result
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < first, result.losses
    # merged: no adapter modules left, still the dropped model class with its drop
    assert not any("lora" in n for n, _ in recovered.named_modules())
    assert type(recovered).__name__.startswith("LayerDrop") and not hasattr(recovered.model.layers[1], "mlp")
    assert (out / "loss.png").stat().st_size > 1000
    saved = json.loads((out / "recovery.json").read_text())
    assert saved["steps"] == 40 and len(saved["losses"]) == 40

    reloaded = from_pretrained(out)
    ids = tok("Some text to score", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, recovered(ids).logits, rtol=1e-4, atol=1e-4)


def test_adapter_can_be_kept_and_saved_alone(tmp_path):
    model = apply_drop(tiny_llama(num_layers=2), DropConfig(attn=[1]))
    peft_model, result = recover_lora(model, byte_tokenizer(), "c4", steps=3, merge=False, out_dir=tmp_path,
                                      **{**FAST, "eval_tokens": 0})
    assert result.ppl_before is None and not result.merged
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert not any("layers.1.self_attn" in t for t in config["target_modules"])
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.awq
@needs_awq
def test_awq_then_lora_adapter_kept(tmp_path):
    from layerdrop_patch.quantize import quantize_awq

    tok = byte_tokenizer()
    model = apply_drop(tiny_llama(num_layers=4, hidden_size=128), DropConfig(attn=[1]))
    quantised, _ = quantize_awq(model, tok, "c4", n_samples=8, seq_len=64, eval_tokens=1024)
    with pytest.raises(ValueError, match="cannot be merged into AWQ"):
        recover_lora(quantised, tok, "c4", steps=2, **FAST)
    peft_model, result = recover_lora(quantised, tok, "c4", steps=20, merge=False, out_dir=tmp_path, **FAST)
    assert result.config["quantised_base"] and result.ppl_after < result.ppl_before, result
    assert (tmp_path / "adapter" / "adapter_config.json").exists()


@pytest.mark.awq
@needs_awq
def test_lora_merge_then_awq(tmp_path):
    from layerdrop_patch.quantize import load_quantized, quantize_awq

    tok = byte_tokenizer()
    model = apply_drop(tiny_llama(num_layers=4, hidden_size=128), DropConfig.blocks([2]))
    recovered, rec = recover_lora(model, tok, "c4", steps=20, **FAST)
    quantised, q = quantize_awq(recovered, tok, "c4", tmp_path / "awq", n_samples=8, seq_len=64, eval_tokens=1024)
    assert q.ppl_after < rec.ppl_before, (rec, q)  # recovery's gain survives 4-bit
    assert DropConfig.from_model(load_quantized(tmp_path / "awq")).mlp == [2]


@pytest.mark.parametrize("loss", ["lm", "distill"])
@pytest.mark.parametrize("case", [c.values[0] for c in ARCHITECTURE_CASES], ids=[c.id for c in ARCHITECTURE_CASES])
def test_recovery_trains_the_kept_projections_of_every_family(case, loss):
    """The family descriptor names each family's projections (Phi-3's fused qkv_proj / gate_up_proj included);
    distillation runs the unpruned model beside the student in every family."""
    from layerdrop_patch.architectures import get_architecture

    model_type, overrides = case
    teacher = tiny_model(model_type, 4, **overrides)
    model = apply_drop(copy.deepcopy(teacher), DropConfig(attn=[1], mlp=[2]))
    arch = get_architecture(model)
    targets = lora_target_modules(model)
    leaves = {t.rsplit(".", 1)[-1] for t in targets}
    assert leaves == set(arch.attn.projections + arch.mlp.projections)
    assert not any(".layers.1.self_attn." in t or ".layers.2.mlp." in t for t in targets)
    rows = torch.randint(1, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    merged, result = recover_lora(model, None, rows, steps=2, batch_size=2, seq_len=16, lr=1e-2, eval_tokens=0,
                                  progress=False, loss=loss, teacher=teacher if loss == "distill" else None)
    assert result.targets == len(targets) and all(math.isfinite(value) for value in result.losses)
    changed = {n for n, p in merged.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.rsplit(".", 2)[-2] in leaves for n in changed)  # only the adapted projections moved


def test_distillation_loss_is_the_tempered_kl_and_needs_a_teacher():
    from layerdrop_patch.errors import ConfigError
    from layerdrop_patch.recover.distill import distillation_loss

    student = torch.tensor([[[2.0, 0.0, -1.0]]])
    teacher = torch.tensor([[[0.0, 1.0, 0.5]]])
    t = 2.0
    p, q = torch.softmax(teacher / t, -1), torch.softmax(student / t, -1)
    expected = float((p * (p.log() - q.log())).sum()) * t * t
    assert float(distillation_loss(student, teacher, t)) == pytest.approx(expected, rel=1e-6)
    assert float(distillation_loss(teacher, teacher, t)) == pytest.approx(0.0, abs=1e-7)
    model = apply_drop(tiny_llama(num_layers=2), DropConfig(attn=[1]))
    with pytest.raises(ConfigError, match="needs the unpruned model as teacher"):
        recover_lora(model, None, torch.randint(0, 200, (4, 16)), steps=1, loss="distill", eval_tokens=0)


def test_distillation_recovery_moves_the_student_towards_the_teacher_near_the_drop():
    teacher = tiny_model("llama", 6, seed=3)
    student = apply_drop(copy.deepcopy(teacher), DropConfig(attn=[3], mlp=[3]))
    rows = torch.randint(1, 128, (8, 16), generator=torch.Generator().manual_seed(1))

    def kl() -> float:
        from layerdrop_patch.recover.distill import distillation_loss

        with torch.no_grad():
            return float(distillation_loss(student(rows).logits, teacher(rows).logits, 1.0))

    before = kl()
    student, result = recover_lora(student, None, rows, steps=12, batch_size=4, seq_len=16, lr=5e-3, rank=4,
                                   loss="distill", temperature=1.0, near=1, eval_tokens=0, progress=False,
                                   teacher=teacher)
    assert kl() < 0.8 * before
    assert result.targets == len(lora_target_modules(apply_drop(copy.deepcopy(teacher), DropConfig(attn=[3], mlp=[3])),
                                                     layers={2, 3, 4}))
