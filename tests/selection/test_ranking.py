"""Selection semantics for every kind, method and option, and iterative re-scoring with real drops."""

from __future__ import annotations

import math

import pytest
import torch

from layerdrop_patch import DropConfig
from layerdrop_patch.patch import apply_drop
from layerdrop_patch.scoring import METRICS, ImportanceScores, compute_importance
from layerdrop_patch.selection import drop_order, iterative_select, select
from tests.conftest import tiny_model

ATTN = [0.50, 0.10, 0.30, 0.05, 0.20, 0.40]
MLP = [0.60, 0.25, 0.15, 0.35, 0.45, 0.12]
BLOCK = [0.90, 0.30, 0.42, 0.38, 0.70, 0.52]


def make_scores(attn=ATTN, mlp=MLP, block=BLOCK, dropped=None) -> ImportanceScores:
    metrics = {m: {"attn": list(attn), "mlp": list(mlp), "block": list(block)} for m in METRICS}
    metrics["angular"] = {"attn": list(reversed(attn)), "mlp": list(mlp), "block": list(block)}
    return ImportanceScores(metrics, "cosine", "tiny", "calib", 100, dropped or {"attn": [], "mlp": []})


def lowest(values, n):
    return sorted(sorted(range(len(values)), key=lambda i: values[i])[:n])


@pytest.mark.parametrize("n", [0, 1, 3, 6])
def test_importance_attn_mlp_block_take_lowest(n):
    s = make_scores()
    assert select(s, "attn", n=n).attn == lowest(ATTN, n) and select(s, "attn", n=n).mlp == []
    assert select(s, "mlp", n=n).mlp == lowest(MLP, n) and select(s, "mlp", n=n).attn == []
    cfg = select(s, "block", n=n)
    assert cfg.attn == cfg.mlp == lowest(BLOCK, n)


def test_joint_ranks_attention_and_mlp_together():
    s = make_scores()
    cfg = select(s, "joint", n=4)  # 0.05 a3, 0.10 a1, 0.12 m5, 0.15 m2
    assert (cfg.attn, cfg.mlp) == ([1, 3], [2, 5])
    assert cfg.method == "joint-drop" and cfg.metric == "cosine" and cfg.calibration == "calib"
    assert cfg.base_model == "tiny" and cfg.scores["attn"] == ATTN
    assert select(s, "joint", ratio=0.5).num_dropped == 6


def test_metric_choice_changes_ranking():
    s = make_scores().with_metric("angular")
    assert select(s, "attn", n=1).attn == [2]  # angular holds the attention scores reversed: layer 2 is lowest
    assert select(s, "attn", n=1).metric == "angular"


def test_ratio_protect_keep_last_and_errors():
    s = make_scores()
    assert select(s, "attn", ratio=0.5).attn == lowest(ATTN, 3)
    assert select(s, "attn", ratio=0.0).attn == []
    assert 3 not in select(s, "attn", n=2, protect=[3]).attn
    assert select(s, "mlp", n=1, keep_last=True).mlp == [2]  # 5 is lowest but is the final layer
    with pytest.raises(ValueError, match="exactly one"):
        select(s, "attn")
    with pytest.raises(ValueError, match="exactly one"):
        select(s, "attn", n=1, ratio=0.1)
    with pytest.raises(ValueError, match=r"only 4 of 6 can be dropped"):
        select(s, "attn", n=5, protect=[0, 1])
    with pytest.raises(ValueError, match="ratio"):
        select(s, "attn", ratio=1.5)
    with pytest.raises(ValueError, match="non-negative"):
        select(s, "attn", n=-1)
    with pytest.raises(ValueError, match="protect"):
        select(s, "attn", n=1, protect=[6])
    with pytest.raises(ValueError, match="kind"):
        select(s, "heads", n=1)
    with pytest.raises(ValueError, match="method"):
        select(s, "attn", n=1, method="magic")
    with pytest.raises(ValueError, match="needs ImportanceScores"):
        select(6, "attn", n=1)


def test_already_dropped_sublayers_are_skipped_and_kept_in_result():
    nan = math.nan
    s = make_scores(attn=[0.5, nan, 0.3, nan, 0.2, 0.4], dropped={"attn": [1, 3], "mlp": []})
    cfg = select(s, "attn", n=2)
    assert cfg.attn == [1, 2, 3, 4]  # cumulative: earlier drops + the two lowest remaining
    with pytest.raises(ValueError, match="2 already dropped"):
        select(s, "attn", n=5)
    assert cfg.scores["attn"][1] is None  # JSON-safe provenance


def test_random_is_seeded_and_respects_protect():
    a = select(6, "attn", n=3, method="random", seed=1, protect=[0])
    b = select(6, "attn", n=3, method="random", seed=1, protect=[0])
    assert a.attn == b.attn and 0 not in a.attn and len(a.attn) == 3
    draws = {tuple(select(6, "joint", n=3, method="random", seed=k).attn) for k in range(10)}
    assert len(draws) > 1
    assert a.method == "random-attn"


def test_reverse_is_deepest_first_skipping_protected():
    assert select(6, "block", n=2, method="reverse").attn == [4, 5]
    assert select(6, "attn", n=2, method="reverse", protect=[5]).attn == [3, 4]
    cfg = select(6, "joint", n=3, method="reverse")  # m5, a5, m4
    assert (cfg.attn, cfg.mlp) == ([5], [4, 5])


@pytest.mark.parametrize("kind", ["attn", "mlp", "block"])
def test_last_k_tyukin(kind):
    cfg = select(8, kind, n=3, method="last-k")
    got = cfg.attn if kind != "mlp" else cfg.mlp
    assert got == [5, 6, 7]
    kept = select(8, kind, n=3, method="last-k", keep_last=True)
    got = kept.attn if kind != "mlp" else kept.mlp
    assert got == [4, 5, 6] and kept.method == f"last-k-{kind}-keep-last"
    if kind == "block":
        assert kept.mlp == kept.attn
    with pytest.raises(ValueError, match="protected"):
        select(8, kind, n=3, method="last-k", protect=[6])
    with pytest.raises(ValueError, match="only 7 layers"):
        select(8, kind, n=8, method="last-k", keep_last=True)
    with pytest.raises(ValueError, match="joint"):
        select(8, "joint", n=2, method="last-k")


def test_drop_order_prefix_property():
    s = make_scores()
    order = drop_order(s, "joint")
    for n in range(len(order) + 1):
        cfg = select(s, "joint", n=n)
        assert sorted(l for k, l in order[:n] if k == "attn") == cfg.attn


IDS = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(3))


def test_iterative_runs_surviving_mlp_of_half_dropped_layer():
    model = tiny_model(num_layers=4)
    baseline = compute_importance(model, IDS, batch_size=2, progress=False)
    first = drop_order(baseline, "attn")[0][1]

    # iterative_select works on a deep copy, which carries this hook along (sharing the `calls` dict).
    calls = {"mlp": 0}
    handle = model.model.layers[first].mlp.register_forward_hook(
        lambda *a: calls.__setitem__("mlp", calls["mlp"] + 1))
    cfg, history = iterative_select(model, IDS, "attn", n=2, batch_size=2, progress=False, return_history=True)
    handle.remove()
    assert history[0]["layer"] == first and len(history) == 2
    assert cfg.attn == sorted(h["layer"] for h in history) and cfg.mlp == []
    assert cfg.method == "iterative-attn-drop"
    assert not hasattr(model.config, "drop_config") or model.config.drop_config is None  # original untouched
    # Two scoring rounds x two batches: the second round ran layer `first`'s MLP although its attention was
    # dropped (the reference code skips the whole layer there, which would give 2).
    assert calls["mlp"] == 2 * 2

    # The second round's scores come from a model with `first`'s attention removed: they differ from
    # a no-drop rescoring, and the half-dropped layer's MLP has a real score.
    dropped = tiny_model(num_layers=4)
    apply_drop(dropped, DropConfig(attn=[first]))
    counter = {"n": 0}
    dropped.model.layers[first].mlp.register_forward_hook(lambda *a: counter.__setitem__("n", counter["n"] + 1))
    rescored = compute_importance(dropped, IDS, batch_size=2, progress=False)
    assert counter["n"] == 2
    assert not math.isnan(rescored.mlp[first]) and math.isnan(rescored.attn[first])
    later = [i for i in range(first + 1, 4)]
    assert any(abs(rescored.attn[i] - baseline.attn[i]) > 1e-4 for i in later) or first == 3
    assert abs(rescored.mlp[first] - baseline.mlp[first]) > 1e-4
    assert history[1]["layer"] == drop_order(rescored, "attn")[0][1]


def test_iterative_joint_inplace_patches_model():
    model = tiny_model(num_layers=3)
    cfg = iterative_select(model, IDS, "joint", n=3, batch_size=4, progress=False, inplace=True, protect=[0])
    assert cfg.num_dropped == 3 and 0 not in cfg.attn + cfg.mlp
    assert DropConfig.from_model(model).attn == cfg.attn and DropConfig.from_model(model).method == "iterative-joint-drop"
    for i in cfg.attn:
        assert not hasattr(model.model.layers[i], "self_attn")


def test_plots_write_png(tmp_path):
    from layerdrop_patch.scoring.plots import plot_importance
    from layerdrop_patch.selection.plots import plot_drop_order

    s = make_scores(attn=[0.5, math.nan, 0.3, 0.05, 0.2, 0.4], dropped={"attn": [1], "mlp": []})
    for path in (plot_importance(s, tmp_path / "imp.png"), plot_drop_order(s, tmp_path / "order.png"),
                 plot_drop_order([{"step": 1, "kind": "mlp", "layer": 2}], tmp_path / "it.png", num_layers=6)):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000
