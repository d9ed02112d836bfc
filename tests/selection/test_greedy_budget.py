"""Greedy (loss-aware) and budget selection against independent computations: a brute-force greedy that really
prunes a copy of the model for every candidate, and hand-computed score-per-cost orders."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from layerdrop_patch import DropConfig, apply_drop
from layerdrop_patch.errors import ConfigError
from layerdrop_patch.scoring import ImportanceScores
from layerdrop_patch.selection import SelectionConfig, budget_select, choose_drop, greedy_select
from layerdrop_patch.selection.budget import unit_costs
from layerdrop_patch.selection.greedy import GreedyTrunk
from tests.conftest import ARCHITECTURE_CASES, tiny_model

IDS = torch.randint(1, 128, (4, 16), generator=torch.Generator().manual_seed(0))


def _loss(model, objective, teacher=None) -> float:
    with torch.no_grad():
        logits = model(IDS).logits.float()
    if objective == "lm":
        return float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                       IDS[:, 1:].reshape(-1)))
    p = teacher.log_softmax(-1)
    return float((p.exp() * (p - logits.log_softmax(-1))).sum() / IDS.numel())


def brute_force_greedy(base, kind, n, objective, allowed=lambda k, layer, gone: True):
    """Independent reference: for every candidate, apply_drop on a fresh copy and compute the loss directly.
    `allowed(kind, layer, already_dropped_of_that_kind)` restricts the candidates tried at a step."""
    with torch.no_grad():
        teacher = base(IDS).logits.float()
    attn, mlp, order = set(), set(), []
    for _ in range(n):
        best = None
        for layer in range(base.config.num_hidden_layers):
            for k in (("attn", "mlp") if kind == "joint" else (kind,)):
                if (k == "attn" and layer in attn) or (k == "mlp" and layer in mlp):
                    continue
                if not allowed(k, layer, attn if k == "attn" else mlp):
                    continue
                cand = DropConfig(attn=sorted(attn | ({layer} if k == "attn" else set())),
                                  mlp=sorted(mlp | ({layer} if k == "mlp" else set())))
                loss = _loss(apply_drop(copy.deepcopy(base), cand), objective, teacher)
                if best is None or loss < best[0] - 1e-9:
                    best = (loss, k, layer)
        order.append((best[1], best[2], best[0]))
        (attn if best[1] == "attn" else mlp).add(best[2])
    return order


@pytest.mark.parametrize("objective", ["lm", "kl"])
@pytest.mark.parametrize("case", [c.values[0] for c in (ARCHITECTURE_CASES[0], ARCHITECTURE_CASES[6],
                                                          ARCHITECTURE_CASES[7])], ids=["llama", "gemma3", "phi3"])
def test_greedy_matches_a_brute_force_that_really_prunes(case, objective):
    model_type, overrides = case
    base = tiny_model(model_type, 5, **overrides)
    cfg, history = greedy_select(base, IDS, "joint", n=3, batch_size=2, objective=objective, progress=False)
    expected = brute_force_greedy(base, "joint", 3, objective)
    assert [(h["kind"], h["layer"]) for h in history] == [(k, layer) for k, layer, _ in expected]
    tolerance = 1e-4 if objective == "lm" else 3e-3  # the unpruned log-probabilities are kept in fp16
    for h, (_, _, loss) in zip(history, expected):
        assert h["loss"] == pytest.approx(loss, rel=tolerance, abs=1e-6)
    assert cfg.method == f"greedy-joint-{objective}" and cfg.num_dropped == 3


def test_the_trunk_caches_plain_tensors_so_a_long_run_keeps_no_autograd_graph():
    """The cached layer inputs live for the whole selection; built with gradients on, each would hold its layer's
    activations alive (memory grows with every step on a real model). Capture and every accepted step run without
    them, whatever the caller's grad mode."""
    trunk = GreedyTrunk(tiny_model("llama", 5), IDS, batch_size=2, objective="lm")
    trunk.accept([(True, False)] + trunk.flags[1:], start=0)
    trunk.loss()
    assert trunk.dropped() == {"attn": [0], "mlp": []}
    assert not any(x.requires_grad for cached in trunk.inputs for x in cached)


def test_joint_shortlist_is_per_kind_so_one_kind_cannot_crowd_out_the_other():
    base = tiny_model("llama", 5)
    winner_kind, winner_layer, _ = brute_force_greedy(base, "joint", 1, "kl")[0]
    other = "mlp" if winner_kind == "attn" else "attn"
    # Every unit of the other kind scores below every unit of the winner's kind: ranked across kinds, a shortlist
    # of 2 would hold only the other kind and never try the removal that is really cheapest.
    ranks = {other: [0.01 * (i + 1) for i in range(5)], winner_kind: [0.6 + 0.01 * i for i in range(5)]}
    ranks[winner_kind][winner_layer] = 0.5

    def lowest_two_left(kind, layer, gone):
        left = sorted((score, i) for i, score in enumerate(ranks[kind]) if i not in gone)
        return layer in [i for _, i in left[:2]]

    expected = brute_force_greedy(base, "joint", 3, "kl", allowed=lowest_two_left)
    _, history = greedy_select(base, IDS, "joint", n=3, batch_size=2, objective="kl", shortlist=2,
                               scores=_scores(ranks["attn"], ranks["mlp"]), progress=False)
    assert [(h["kind"], h["layer"]) for h in history] == [(k, layer) for k, layer, _ in expected]
    assert (history[0]["kind"], history[0]["layer"]) == (winner_kind, winner_layer)
    with pytest.raises(ConfigError, match="needs importance scores"):
        greedy_select(base, IDS, "joint", n=1, shortlist=2, progress=False)


def test_greedy_resume_continues_a_runs_own_prefix_without_repeating_its_steps(monkeypatch):
    base = tiny_model("llama", 5)
    _, full = greedy_select(base, IDS, "joint", n=4, batch_size=2, objective="kl", progress=False)
    evaluations = []
    original = GreedyTrunk.loss
    monkeypatch.setattr(GreedyTrunk, "loss", lambda self, *a, **kw: evaluations.append(1) or original(self, *a, **kw))
    _, resumed = greedy_select(base, IDS, "joint", n=4, batch_size=2, objective="kl", resume=full[:2],
                               progress=False)
    assert [(h["kind"], h["layer"]) for h in resumed] == [(h["kind"], h["layer"]) for h in full]
    assert [h["loss"] for h in resumed] == pytest.approx([h["loss"] for h in full], rel=1e-5)
    assert [h.get("resumed", False) for h in resumed] == [True, True, False, False]
    # from scratch: the unpruned loss, then 10 + 9 + 8 + 7 candidates; resumed: the unpruned loss, one per
    # replayed unit, then the 8 + 7 candidates of the last two steps
    assert len(evaluations) == 1 + 2 + 8 + 7


def test_greedy_resume_removes_the_given_units_first_even_where_greedy_would_not():
    base = tiny_model("llama", 5)
    _, free = greedy_select(base, IDS, "attn", n=4, progress=False)
    forced = ("attn", free[-1]["layer"])  # greedy's own fourth choice, forced first
    _, history = greedy_select(base, IDS, "attn", n=2, resume=[forced], progress=False)
    assert (history[0]["kind"], history[0]["layer"]) == forced
    assert history[0]["loss"] == pytest.approx(_loss(apply_drop(copy.deepcopy(base), DropConfig(attn=[forced[1]])),
                                                     "lm"), rel=1e-4)
    second = {layer: _loss(apply_drop(copy.deepcopy(base), DropConfig(attn=sorted({forced[1], layer}))), "lm")
              for layer in range(5) if layer != forced[1]}
    assert (history[1]["kind"], history[1]["layer"]) == ("attn", min(second, key=second.get))


def test_choose_drop_passes_resume_to_greedy_and_refuses_it_for_methods_that_cannot_go_on(monkeypatch):
    base = tiny_model("llama", 5)
    config = SelectionConfig(kind="attn", n=3, method="greedy")
    full = choose_drop(config, model=base, calibration=IDS, progress=False)
    resumed = choose_drop(config, model=base, calibration=IDS, resume=full.history[:2], progress=False)
    assert [h["layer"] for h in resumed.history] == [h["layer"] for h in full.history]
    assert [h.get("resumed", False) for h in resumed.history] == [True, True, False]
    assert resumed.drop_config.attn == full.drop_config.attn
    # the resumed units really are replayed, not chosen again: a forced first unit comes first
    forced = choose_drop(config, model=base, calibration=IDS, resume=[("attn", full.history[2]["layer"])],
                         progress=False)
    assert forced.history[0]["layer"] == full.history[2]["layer"]
    monkeypatch.setattr(GreedyTrunk, "__init__", lambda *a, **kw: pytest.fail("ran a method that cannot resume"))
    for method in ("iterative", "random"):
        with pytest.raises(ConfigError, match=f"resume: method '{method}' does not go on .* only greedy"):
            choose_drop(SelectionConfig(kind="attn", n=3, method=method), model=base, calibration=IDS,
                        resume=full.history[:2], progress=False)


@pytest.mark.parametrize("resume, message", [
    ([("mlp", 1)], "is not a unit of kind attn"), ([("attn", 9)], "not one of 0-4"),
    ([("attn", 0)], "protected layer 0"), ([("attn", 1), ("attn", 1)], "already dropped"),
    ([("attn", 1), ("attn", 2), ("attn", 3)], "n=2"), ("attn", "expected a list"),
    ([{"kind": "attn"}], "is not a unit of kind attn"), ([("attn", True)], "is not a unit of kind attn"),
])
def test_greedy_resume_rejects_what_this_run_could_not_have_chosen(resume, message, monkeypatch):
    # refused before the working copy is built and run, which takes minutes on a large model
    monkeypatch.setattr(GreedyTrunk, "__init__", lambda *a, **kw: pytest.fail("resume was checked too late"))
    with pytest.raises(ConfigError, match=f"greedy resume: .*{message}"):
        greedy_select(tiny_model("llama", 5), IDS, "attn", n=2, protect=[0], resume=resume, progress=False)


@pytest.mark.parametrize("shortlist", [0, -1, 2.5, True])
def test_greedy_rejects_a_shortlist_that_is_not_a_positive_count(shortlist):
    scores = _scores([0.1] * 5, [0.1] * 5)
    with pytest.raises(ConfigError, match="greedy shortlist: .* positive whole number"):
        greedy_select(tiny_model("llama", 5), IDS, "attn", n=1, shortlist=shortlist, scores=scores, progress=False)


def test_greedy_through_choose_drop_respects_protect_and_earlier_drops():
    base = apply_drop(tiny_model("llama", 6), DropConfig(attn=[2]))
    config = SelectionConfig(kind="attn", n=2, method="greedy", protect=[0, 5])
    selection = choose_drop(config, model=base, calibration=IDS, progress=False)
    assert 2 in selection.drop_config.attn and len(selection.drop_config.attn) == 3
    assert not {0, 5} & set(h["layer"] for h in selection.history)
    with pytest.raises(ConfigError, match="needs model and calibration|needs calibration"):
        choose_drop(config, model=base)


def _scores(attn, mlp):
    n = len(attn)
    return ImportanceScores({"cosine": {"attn": attn, "mlp": mlp, "block": [math.nan] * n}}, model_name="t")


def test_budget_takes_units_by_score_per_cost_until_the_share_is_saved():
    scores = _scores(attn=[0.10, 0.02, 0.30], mlp=[0.20, 0.08, 0.04])
    costs = {("attn", i): 1.0 for i in range(3)} | {("mlp", i): 2.0 for i in range(3)}
    # score / cost: a1 0.02, m2 0.02 (tie -> shallower first: a1), m1 0.04, a0 0.10, m0 0.10, a2 0.30
    cfg, order = budget_select(scores, costs, "joint", ratio=5 / 9)
    assert [(o["kind"], o["layer"]) for o in order] == [("attn", 1), ("mlp", 2), ("mlp", 1)]
    assert (cfg.attn, cfg.mlp) == ([1], [1, 2]) and order[-1]["saved"] == pytest.approx(5 / 9)
    kv_only = {("attn", i): 10.0 for i in range(3)} | {("mlp", i): 0.0 for i in range(3)}
    cfg, _ = budget_select(scores, kv_only, "joint", ratio=0.5)
    assert cfg.mlp == [] and cfg.attn == [0, 1]
    with pytest.raises(ConfigError, match="ratio"):
        budget_select(scores, costs, "joint", ratio=0)


def test_budget_costs_come_from_the_model():
    model = tiny_model("llama", 3)  # TINY: hidden 64, intermediate 96, 4 heads, 2 kv heads, head_dim 16
    params = unit_costs(model, "params")
    assert params[("attn", 0)] == 64 * 64 + 2 * (2 * 16 * 64) + 64 * 64
    assert params[("mlp", 0)] == 3 * 64 * 96
    kv = unit_costs(model, "kv")
    assert kv[("attn", 1)] == 2 * 2 * 16 and kv[("mlp", 1)] == 0
    scores = _scores([0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    cfg = choose_drop(SelectionConfig(kind="joint", ratio=0.2, method="budget"), scores=scores, model=model).drop_config
    assert cfg.mlp == [0] and cfg.attn == []  # equal scores: the MLP saves more weights per unit of score lost
