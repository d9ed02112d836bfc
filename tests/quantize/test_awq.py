"""AWQ quantisation of dropped models (layerdrop_patch.quantize).

The end-to-end tests need GPTQModel (the `[awq]` extra). Where it is not installed they are skipped with the
reason printed; the argument checks and the refusals run everywhere.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from layerdrop_patch.config import DropConfig
from layerdrop_patch.evaluation.toy import byte_tokenizer, tiny_llama
from layerdrop_patch.patch import apply_drop
from layerdrop_patch.quantize import QuantizationQualityError, check_awq_shapes, load_quantized, quantize_awq

HAS_GPTQMODEL = importlib.util.find_spec("gptqmodel") is not None
needs_gptqmodel = pytest.mark.skipif(
    not HAS_GPTQMODEL,
    reason="gptqmodel is not installed (pip install 'layerdrop-patch[awq]'); AWQ cannot run in this environment",
)
DROP = DropConfig(attn=[1, 2], mlp=[2])  # layer 1: attention only gone; layer 2: whole block gone
SMALL = dict(n_samples=8, seq_len=64, eval_tokens=1024)


def _model():
    # hidden 128: GPTQModel's AWQ needs every output width (k/v_proj: 64 here) to be a multiple of 64.
    return tiny_llama(num_layers=4, hidden_size=128, seed=0)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend.*is not one of gptqmodel, autoawq"):
        quantize_awq(_model(), byte_tokenizer(), "c4", backend="bitsandbytes")


def test_autoawq_is_refused_with_reason_and_fix():
    with pytest.raises(NotImplementedError) as err:
        quantize_awq(_model(), byte_tokenizer(), "c4", backend="autoawq")
    message = str(err.value)
    assert "perplexity" in message and "backend='gptqmodel'" in message and "layerdrop-patch[awq]" in message


def test_group_size_must_divide_every_input_width():
    model = tiny_llama(num_layers=2, hidden_size=96)
    with pytest.raises(ValueError, match="group_size=64 does not divide the input width 96"):
        check_awq_shapes(model, 64)
    check_awq_shapes(_model(), 64)  # 128 / 256 wide: fine


@pytest.mark.skipif(HAS_GPTQMODEL, reason="gptqmodel is installed; this checks the message when it is missing")
def test_missing_gptqmodel_names_the_fix():
    with pytest.raises(ImportError, match=r"layerdrop-patch\[awq\]"):
        quantize_awq(apply_drop(_model(), DROP), byte_tokenizer(), "c4", **SMALL)


@pytest.mark.awq
@needs_gptqmodel
def test_dropped_model_quantises_saves_reloads_and_generates(tmp_path):
    tok = byte_tokenizer()
    model = apply_drop(_model(), DROP)
    out = tmp_path / "awq"
    quantised, result = quantize_awq(model, tok, "c4", out, **SMALL)

    # the original was not touched (inplace=False) and is still dense fp32
    assert isinstance(model.model.layers[0].self_attn.q_proj, torch.nn.Linear)
    assert model.dtype == torch.float32
    # dropped sublayers stayed deleted; every kept projection is now an AWQ layer with packed weights
    layers = quantised.model.layers
    assert not hasattr(layers[1], "self_attn") and not hasattr(layers[2], "self_attn") and not hasattr(layers[2], "mlp")
    for i, part in [(0, "self_attn"), (0, "mlp"), (1, "mlp"), (3, "self_attn"), (3, "mlp")]:
        for name, module in getattr(layers[i], part).named_children():
            if name.endswith("_proj"):
                assert hasattr(module, "qweight"), f"layers.{i}.{part}.{name} was not quantised"
    # calibration ran through every decoder layer's own (patched) forward, the fully dropped layer 2 included
    assert all(result.layers_run.get(i, 0) >= SMALL["n_samples"] for i in range(3)), result.layers_run
    assert result.ppl_ratio < 1.5, result
    assert result.drop_config["attn"] == [1, 2] and result.checkpoint_bytes > 0

    reloaded = load_quantized(out)
    assert DropConfig.from_model(reloaded).attn == [1, 2] and DropConfig.from_model(reloaded).mlp == [2]
    assert not hasattr(reloaded.model.layers[1], "self_attn")
    assert hasattr(reloaded.model.layers[0].self_attn.q_proj, "qweight")
    ids = tok("The tower is", return_tensors="pt").input_ids
    with torch.no_grad():
        a = quantised(ids).logits.float()
        b = reloaded(ids).logits.float()
    assert (a - b).abs().max() < 0.05 * a.abs().max(), "reloaded AWQ model computes something else"
    generated = reloaded.generate(ids, max_new_tokens=6, do_sample=False)
    assert generated.shape[1] == ids.shape[1] + 6


@pytest.mark.awq
@needs_gptqmodel
def test_blown_up_perplexity_is_refused_and_nothing_saved(tmp_path):
    out = tmp_path / "refused"
    with pytest.raises(QuantizationQualityError, match="refusing to save"):
        # a ratio below 1 cannot be met by any 4-bit model: the gate must trip
        quantize_awq(apply_drop(_model(), DROP), byte_tokenizer(), "c4", out, max_ppl_ratio=0.5, **SMALL)
    assert not out.exists()
