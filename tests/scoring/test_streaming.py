"""Importance scores against a naive reference that keeps every hidden state, and streaming vs offloaded."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from layerdrop_patch import DropConfig
from layerdrop_patch.errors import LayerdropError
from layerdrop_patch.patch import apply_drop
from layerdrop_patch.scoring import METRICS, ImportanceScores, compute_importance
from layerdrop_patch.models import empty_model
from tests.conftest import tiny_model

IDS = torch.randint(0, 128, (5, 24), generator=torch.Generator().manual_seed(1))


def naive_scores(model, ids, drop=None) -> dict[str, dict[str, list[float]]]:
    """Written from the definitions, layer by layer, storing all hidden states of all samples.

    Runs the decoder layers by hand: X_A = layer input, Y_A = X_A + attn(norm(X_A)), X_M = Y_A, Y_M = X_M +
    mlp(norm(X_M)). `drop` = (attn set, mlp set) removes sublayers the same way apply_drop does (residual only).
    """
    attn_drop, mlp_drop = drop or (set(), set())
    base = model.model
    with torch.no_grad():
        h = base.embed_tokens(ids)  # embeddings, all samples
    pos = torch.arange(ids.shape[1]).unsqueeze(0)
    pe = base.rotary_emb(h, pos)
    mask = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu(1)[None, None]
    res = {m: {k: [] for k in ("attn", "mlp", "block")} for m in METRICS}

    def put(kind, x=None, y=None, module_in=None, module_out=None):
        """Every metric's mean over tokens for residual input x, output y and the module's own input/output."""
        if x is None:
            for m in METRICS:
                res[m][kind].append(math.nan)
            return
        c_res, c_nores = F.cosine_similarity(x, y, dim=-1), F.cosine_similarity(module_in, module_out, dim=-1)
        for m, c in (("cosine", c_res), ("cosine_no_residual", c_nores)):
            res[m][kind].append(float((1 - c).mean()))
            res[m.replace("cosine", "angular")][kind].append(float((torch.arccos(c.clamp(-1, 1)) / math.pi).mean()))
        # ShortGPT's Relative Magnitude ||f(x)|| / ||x + f(x)||, f(x) being what the branch adds to the stream
        res["relative_magnitude"][kind].append(float(((y - x).norm(dim=-1) / y.norm(dim=-1)).mean()))

    with torch.no_grad():
        for i in range(model.config.num_hidden_layers):
            layer = model.model.layers[i]
            x = h.double()
            if i in attn_drop:
                ya, put_a = x, ()
            else:
                na = layer.input_layernorm(h)
                fa = layer.self_attn(na, position_embeddings=pe, attention_mask=mask)[0]
                ya = x + fa.double()
                put_a = (x, ya, na.double(), fa.double())
            if i in mlp_drop:
                y, put_m = ya, ()
            else:
                nm = layer.post_attention_layernorm(ya.float())
                fm = layer.mlp(nm)
                y = ya + fm.double()
                put_m = (ya, y, nm.double(), fm.double())
            put("attn", *put_a)
            put("mlp", *put_m)
            if i in attn_drop and i in mlp_drop:
                put("block")
            else:
                put("block", x, y, x, y - x)
            h = y.float()
    return res


def assert_close(a: dict, b: dict, tol: float) -> None:
    for m in METRICS:
        for k in ("attn", "mlp", "block"):
            np.testing.assert_allclose(np.array(a[m][k]), np.array(b[m][k]), atol=tol, rtol=0, err_msg=f"{m}/{k}")


def test_scores_match_naive_reference():
    model = tiny_model(num_layers=4)
    scores = compute_importance(model, IDS, batch_size=2, progress=False)
    assert_close(scores.metrics, naive_scores(model, IDS), 1e-5)
    assert scores.tokens == IDS.numel()
    assert scores.attn == scores.metrics["cosine"]["attn"]
    assert all(0 < v < 1 for v in scores.attn + scores.mlp + scores.block)
    # different metrics really are different numbers
    assert scores.metrics["angular"]["attn"] != scores.metrics["cosine"]["attn"]


def test_batch_size_does_not_change_scores():
    model = tiny_model(num_layers=3)
    a = compute_importance(model, IDS, batch_size=1, progress=False)
    b = compute_importance(model, IDS, batch_size=5, progress=False)
    assert_close(a.metrics, b.metrics, 1e-6)


def test_scores_of_patched_model_match_reference_and_mark_dropped_nan():
    model = tiny_model(num_layers=4)
    apply_drop(model, DropConfig(attn=[1, 3], mlp=[2, 3]))
    scores = compute_importance(model, IDS, batch_size=3, progress=False)
    assert_close(scores.metrics, naive_scores(model, IDS, drop=({1, 3}, {2, 3})), 1e-5)
    assert math.isnan(scores.attn[1]) and math.isnan(scores.mlp[2]) and math.isnan(scores.block[3])
    assert not math.isnan(scores.mlp[1]) and not math.isnan(scores.attn[2])
    assert scores.dropped == {"attn": [1, 3], "mlp": [2, 3]}


def test_streaming_and_offloaded_agree():
    model = tiny_model(num_layers=4)
    stream = compute_importance(model, IDS, batch_size=2, progress=False)
    off = compute_importance(model, IDS, batch_size=2, progress=False, offload=True)
    assert_close(stream.metrics, off.metrics, 1e-6)
    assert all(p.device.type == "cpu" for p in model.parameters())  # layers were put back


def test_offloaded_from_checkpoint_on_meta_model(tmp_path):
    model = tiny_model(num_layers=3)
    model.save_pretrained(tmp_path)
    stream = compute_importance(model, IDS, batch_size=2, progress=False)
    empty = empty_model(tmp_path)
    assert all(p.device.type == "meta" for p in empty.model.layers.parameters())
    off = compute_importance(empty, IDS, batch_size=2, progress=False, offload=True)
    assert_close(stream.metrics, off.metrics, 1e-6)
    assert all(p.device.type == "meta" for p in empty.model.layers.parameters())  # freed again
    with pytest.raises(ValueError, match="meta device"):
        compute_importance(empty, IDS, progress=False)


def test_device_map_disk_offloaded_model(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model(num_layers=3)
    model.save_pretrained(tmp_path / "ckpt")
    expected = compute_importance(model, IDS, batch_size=2, progress=False)
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "disk", "model.layers.2": "disk", "model.norm": "cpu", "lm_head": "cpu"}
    dispatched = AutoModelForCausalLM.from_pretrained(
        tmp_path / "ckpt", device_map=device_map, offload_folder=str(tmp_path / "off")).eval()
    assert hasattr(dispatched, "hf_device_map")
    for offload in (False, True):
        got = compute_importance(dispatched, IDS, batch_size=2, progress=False, offload=offload)
        assert_close(expected.metrics, got.metrics, 1e-5)


def test_save_load_roundtrip_with_nan(tmp_path):
    model = tiny_model(num_layers=3)
    apply_drop(model, DropConfig(attn=[0]))
    scores = compute_importance(model, IDS[:2], progress=False, metric="angular")
    path = scores.save(tmp_path / "s.json")
    assert "NaN" not in path.read_text()
    back = ImportanceScores.load(path)
    assert back.metric == "angular" and back.tokens == scores.tokens and back.calibration == scores.calibration
    assert math.isnan(back.attn[0]) and back.mlp == scores.mlp and back.block == scores.block
    assert back.with_metric("cosine").attn[1:] == scores.metrics["cosine"]["attn"][1:]


def test_bad_arguments():
    model = tiny_model(num_layers=2)
    with pytest.raises(ValueError, match="metric"):
        compute_importance(model, IDS, metric="euclid", progress=False)
    with pytest.raises(ValueError, match="shaped"):
        compute_importance(model, torch.zeros(10), progress=False)
    with pytest.raises(LayerdropError, match="Calibration"):
        compute_importance(model, ["some text"], progress=False)
