"""An interrupted greedy selection goes on from its record (`run.pipeline.choose_and_record` with an output dir):
the order is the one an uninterrupted run chooses, the recorded steps are not paid for again, and a record made
with other settings is never reused. The reference is an uninterrupted run in a directory of its own."""

from __future__ import annotations

import json

import pytest
import torch

from layerdrop_patch.errors import ResumeError
from layerdrop_patch.run.pipeline import SELECTION_HISTORY, choose_and_record
from layerdrop_patch.selection import SelectionConfig
from layerdrop_patch.selection.greedy import GreedyTrunk
from tests.conftest import interrupt_greedy_after, tiny_model

IDS = torch.randint(1, 128, (4, 16), generator=torch.Generator().manual_seed(0))


def _order(history):
    return [(h["kind"], h["layer"]) for h in history]


def _count_losses(monkeypatch) -> list[int]:
    evaluations: list[int] = []
    original = GreedyTrunk.loss
    monkeypatch.setattr(GreedyTrunk, "loss", lambda self, *a, **kw: evaluations.append(1) or original(self, *a, **kw))
    return evaluations


def _choose(out_dir, n=4, objective="lm", base=None):
    return choose_and_record(SelectionConfig(kind="joint", n=n, method="greedy", objective=objective),
                             model=base or tiny_model("llama", 5), calibration=IDS, progress=False, out_dir=out_dir)


def test_an_interrupted_greedy_run_goes_on_from_its_recorded_steps(tmp_path, monkeypatch):
    reference = _choose(tmp_path / "reference")
    with monkeypatch.context() as patch:
        interrupt_greedy_after(patch, steps=2)
        with pytest.raises(KeyboardInterrupt):
            _choose(tmp_path / "run")
    record = json.loads((tmp_path / "run" / SELECTION_HISTORY).read_text())
    assert _order(record["history"]) == _order(reference.history)[:2]
    assert not (tmp_path / "run" / "drop_config.json").exists()

    evaluations = _count_losses(monkeypatch)
    resumed = _choose(tmp_path / "run")
    assert _order(resumed.history) == _order(reference.history)
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in reference.history], rel=1e-5)
    assert [h.get("resumed", False) for h in resumed.history] == [True, True, False, False]
    assert len(evaluations) == 1 + 2 + 8 + 7  # unpruned, the 2 replayed steps, then 8 + 7 candidates (not 10 + 9)
    assert resumed.drop_config.attn == reference.drop_config.attn
    assert resumed.drop_config.mlp == reference.drop_config.mlp
    assert _order(json.loads((tmp_path / "run" / SELECTION_HISTORY).read_text())["history"]) == _order(
        reference.history)


def test_a_larger_n_extends_the_record_and_a_smaller_n_takes_its_prefix(tmp_path, monkeypatch):
    reference = _choose(tmp_path / "reference")
    _choose(tmp_path / "run", n=2)
    longer = _choose(tmp_path / "run", n=4)
    assert _order(longer.history) == _order(reference.history)
    assert [h.get("resumed", False) for h in longer.history] == [True, True, False, False]
    evaluations = _count_losses(monkeypatch)
    shorter = _choose(tmp_path / "run", n=1)
    assert _order(shorter.history) == _order(reference.history)[:1] and len(evaluations) == 1 + 1
    assert len(json.loads((tmp_path / "run" / SELECTION_HISTORY).read_text())["history"]) == 4  # kept whole


def _with_one_value_changed(model, position):
    tensor = max(model.parameters(), key=lambda t: t.numel())  # the embedding: new token rows land at its end
    with torch.no_grad():
        tensor.view(-1)[position] += 0.25
    return model


@pytest.mark.parametrize("spoil", ["other settings", "unreadable", "other model", "last value changed",
                                   "middle value changed"])
def test_a_record_made_otherwise_is_never_reused(tmp_path, spoil):
    _choose(tmp_path / "run", n=2)
    record = tmp_path / "run" / SELECTION_HISTORY
    kwargs = {}
    if spoil == "other settings":
        kwargs["objective"] = "kl"
    elif spoil == "unreadable":
        record.write_text('{"key": "trunc')
    elif spoil == "other model":
        kwargs["base"] = tiny_model("llama", 5, seed=1)  # same name (none), other weights
    else:  # one value past the first ones: a digest of the first values alone reused the record
        position = -1 if spoil == "last value changed" else 1001
        kwargs["base"] = _with_one_value_changed(tiny_model("llama", 5), position)
    again = _choose(tmp_path / "run", n=2, **kwargs)
    assert not any(h.get("resumed") for h in again.history)
    assert json.loads(record.read_text())["history"] == again.history


def test_a_hand_edited_record_that_cannot_be_resumed_is_named_and_kept(tmp_path):
    _choose(tmp_path / "run", n=2)
    record = tmp_path / "run" / SELECTION_HISTORY
    saved = json.loads(record.read_text())
    saved["history"][1]["layer"] = saved["history"][0]["layer"]  # the key still matches; the order is impossible
    saved["history"][1]["kind"] = saved["history"][0]["kind"]
    record.write_text(json.dumps(saved))
    with pytest.raises(ResumeError, match=rf"{SELECTION_HISTORY}: the recorded greedy order cannot be resumed "
                                          r"\(greedy resume: .* is already dropped.*move it away"):
        _choose(tmp_path / "run", n=3)
    assert json.loads(record.read_text()) == saved  # the user's file is left as it was
