"""Loss-aware greedy selection: drop, one at a time, the unit whose removal hurts the calibration loss least.

In the spirit of FinerCut (Zhang et al. 2024): instead of ranking units by how little they rotate the residual
stream (the paper's cosine), measure what each removal does to the model's output. At every step each remaining
candidate is removed in turn, the calibration loss of the resulting model is computed, and the cheapest
removal is kept; the next step starts from that model. Two objectives:

* ``lm``: the next-token cross-entropy on the calibration tokens;
* ``kl``: the KL divergence from the unpruned model's next-token distribution (its log-probabilities are
  computed once and kept, in fp16).

Why it is affordable: a removal at layer l leaves layers 0..l-1 untouched, so their outputs are cached and every
candidate runs only layers l..L-1 from the cached input of layer l; after a removal is accepted only that suffix
is recomputed. The candidates run the exact forward a model pruned by `apply_drop` runs (the same skip code,
with the removed branch's modules simply not called), so the losses are those of the really pruned model; the
tests check this against `apply_drop` on a copy.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import torch

from layerdrop_patch.architectures import decoder_layers, drop_of, get_architecture
from layerdrop_patch.errors import ConfigError, ResumeError, shorten
from layerdrop_patch.modeling import modeling_layerdrop as _m
from layerdrop_patch.scoring.calibration import as_token_tensor
from layerdrop_patch.selection.registry import (Selection, SelectionInputs, Unit, count_for, is_gone, protected,
                                                register_method, to_drop_config, units)

__all__ = ["GreedyTrunk", "greedy_select"]

_MAX_TEACHER_BYTES = 2 * 1024**3


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


class GreedyTrunk:
    """A working copy of the model that evaluates "the current drops plus one more" quickly (see the module doc).

    `flags[i] = (skip_attn, skip_mlp)` is the accepted state; `inputs[i]` the cached input of layer i for each
    batch under that state (`inputs[L]` is the final hidden state before the norm).
    """

    def __init__(self, model: Any, ids: torch.Tensor, batch_size: int, objective: str):
        if objective not in ("lm", "kl"):
            raise ConfigError(f"objective must be 'lm' or 'kl', got {objective!r}")
        self.model = copy.deepcopy(model).eval()
        self.layers = decoder_layers(self.model)
        arch = get_architecture(self.model)
        for layer in self.layers:  # every layer gets the skip forward, so a flag toggles a branch exactly
            _m._mix_in(layer, _m.SkippableDecoderLayerMixin)
            layer.layerdrop_arch = arch
        drop = drop_of(self.model)
        self.flags = [(i in drop.attn, i in drop.mlp) for i in range(len(self.layers))]
        self.objective = objective
        self.batches = list(ids.split(batch_size))
        self.device = self.model.get_input_embeddings().weight.device
        self.kwargs: list[list[dict]] = []
        self.inputs: list[list[torch.Tensor]] = [[] for _ in range(len(self.layers) + 1)]
        self.teacher: list[torch.Tensor] = []
        if objective == "kl":
            vocab = self.model.config.vocab_size
            if ids.numel() * vocab * 2 > _MAX_TEACHER_BYTES:
                raise ConfigError(f"objective 'kl' keeps the unpruned model's log-probabilities ({ids.numel()} "
                                  f"tokens x {vocab} vocabulary in fp16 > 2 GiB); use fewer calibration tokens "
                                  "or objective 'lm'.")
        self._capture()

    @torch.no_grad()
    def _capture(self) -> None:
        """One normal forward per batch records each layer's keyword inputs (masks, rotary embeddings) and input."""
        records: list[tuple[torch.Tensor, dict]] = []
        last: list[torch.Tensor] = []

        def record_input(module, args, kwargs):
            records.append((args[0] if args else kwargs["hidden_states"],
                            {k: v for k, v in kwargs.items() if k not in _m.CACHE_KWARGS + ("hidden_states",)}))

        handles = [layer.register_forward_pre_hook(record_input, with_kwargs=True) for layer in self.layers]
        handles.append(self.layers[-1].register_forward_hook(lambda module, args, output: last.append(_first(output))))
        try:
            for batch in self.batches:
                records.clear()
                last.clear()
                out = self.model.model(input_ids=batch.to(self.device), use_cache=False)
                self.kwargs.append([kw for _, kw in records])
                for i, (hidden, _) in enumerate(records):
                    self.inputs[i].append(hidden)
                self.inputs[-1].append(last[0])
                if self.objective == "kl":
                    logits = self.model.lm_head(out.last_hidden_state)
                    self.teacher.append(self._softcap(logits).float().log_softmax(-1).half())
        finally:
            for h in handles:
                h.remove()

    def _softcap(self, logits: torch.Tensor) -> torch.Tensor:
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    @torch.no_grad()
    def _run(self, b: int, start: int, flags: list[tuple[bool, bool]]) -> torch.Tensor:
        hidden = self.inputs[start][b]
        for i in range(start, len(self.layers)):
            layer = self.layers[i]
            layer.skip_attn, layer.skip_mlp = flags[i]
            hidden = _first(layer(hidden, **self.kwargs[b][i]))
        return hidden

    @torch.no_grad()
    def _batch_loss(self, b: int, hidden: torch.Tensor) -> tuple[float, int]:
        logits = self._softcap(self.model.lm_head(self.model.model.norm(hidden))).float()
        targets = self.batches[b].to(logits.device)
        if self.objective == "lm":
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                     targets[:, 1:].reshape(-1), reduction="sum")
            return float(loss), targets[:, 1:].numel()
        teacher = self.teacher[b].float()
        kl = (teacher.exp() * (teacher - logits.log_softmax(-1))).sum()
        return float(kl), targets.numel()

    def loss(self, flags: list[tuple[bool, bool]] | None = None, start: int = 0) -> float:
        """Mean loss per token of the model with `flags` (default: the accepted state), run from layer `start`."""
        flags = flags or self.flags
        total, count = 0.0, 0
        for b in range(len(self.batches)):
            value, n = self._batch_loss(b, self._run(b, start, flags))
            total, count = total + value, count + n
        return total / count

    def dropped(self) -> dict[str, list[int]]:
        """The accepted state as layer indices per kind, the form `is_gone` and `to_drop_config` take."""
        return {"attn": [i for i, f in enumerate(self.flags) if f[0]],
                "mlp": [i for i, f in enumerate(self.flags) if f[1]]}

    @torch.no_grad()
    def accept(self, flags: list[tuple[bool, bool]], start: int) -> None:
        """Make `flags` the accepted state and refresh the cached inputs of layers after `start`."""
        self.flags = list(flags)
        for b in range(len(self.batches)):
            hidden = self.inputs[start][b]
            for i in range(start, len(self.layers)):
                layer = self.layers[i]
                layer.skip_attn, layer.skip_mlp = self.flags[i]
                hidden = _first(layer(hidden, **self.kwargs[b][i]))
                self.inputs[i + 1][b] = hidden


def _with(flags: list[tuple[bool, bool]], unit: Unit) -> list[tuple[bool, bool]]:
    kind, layer = unit
    out = list(flags)
    attn, mlp = out[layer]
    out[layer] = (attn or kind in ("attn", "block"), mlp or kind in ("mlp", "block"))
    return out


def _as_unit(entry: Any) -> Unit | None:
    """A history entry or a `(kind, layer)` pair as a unit; None for anything else."""
    pair = (entry.get("kind"), entry.get("layer")) if isinstance(entry, dict) else entry
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        return None
    kind, layer = pair
    if not isinstance(kind, str) or not isinstance(layer, int) or isinstance(layer, bool):
        return None
    return kind, layer


def _resumed(resume: Sequence[Any], kind: str, num_layers: int, guarded: set[int], count: int,
             dropped: dict[str, list[int]]) -> list[Unit]:
    """`resume` as units, checked: each must be a `kind` unit this run could itself have chosen, at most `count`."""
    if resume is None:
        return []
    if isinstance(resume, (str, bytes, dict)) or not isinstance(resume, Sequence):
        raise ResumeError(f"greedy resume: expected a list of history entries or (kind, layer) pairs, got "
                          f"{shorten(resume)}.")
    kinds = sorted({u[0] for u in units(kind, num_layers)})
    chosen: list[Unit] = []
    for entry in resume:
        unit = _as_unit(entry)
        if unit is None or unit[0] not in kinds:
            problem = f"is not a unit of kind {' or '.join(kinds)} (a history entry or a (kind, layer) pair)"
        elif not 0 <= unit[1] < num_layers:
            problem = f"names layer {unit[1]}, not one of 0-{num_layers - 1}"
        elif unit[1] in guarded:
            problem = f"names protected layer {unit[1]}"
        elif unit in chosen or is_gone(unit, dropped):
            problem = "is already dropped"
        else:
            chosen.append(unit)
            continue
        raise ResumeError(f"greedy resume: {shorten(entry)} {problem}; pass the history of an earlier {kind} "
                          "greedy run on this model with the same protected layers.")
    if len(chosen) > count:
        raise ResumeError(f"greedy resume: {len(chosen)} units given but n={count}; resume a shorter prefix or "
                          "ask for a larger n.")
    return chosen


def _shortlisted(candidates: list[Unit], scores: Any, size: int) -> list[Unit]:
    """The `size` lowest-scoring candidates of each kind. Per kind, because attention and MLP scores are not on one
    scale: ranked together, the kind with the smaller scores fills the whole shortlist and the other is never
    tried (Gemma-3-270M Joint-4 greedy-KL missed attention 15 that way, behind ten lower-scoring units)."""
    chosen: list[Unit] = []
    for kind in dict.fromkeys(u[0] for u in candidates):
        same_kind = [u for u in candidates if u[0] == kind]
        chosen += sorted(same_kind, key=lambda u: (scores.scores_for(kind)[u[1]], u[1]))[:size]
    return chosen


def greedy_select(model: Any, calibration: Any, kind: str, n: int | None = None, ratio: float | None = None, *,
                  objective: str = "lm", protect=(), keep_last: bool = False, batch_size: int = 4,
                  shortlist: int | None = None, scores: Any = None, resume: Sequence[Any] = (),
                  on_step: Callable[[list[dict[str, Any]]], None] | None = None,
                  progress: bool = True) -> tuple[Any, list[dict[str, Any]]]:
    """(cumulative DropConfig, history) dropping n (or ratio of) `kind` units, each time the one whose removal
    raises the calibration `objective` least. `model` is not modified.

    `shortlist` (with importance `scores`): at each step only the `shortlist` remaining candidates of each kind
    with the lowest scores are tried, a large saving on deep models for a small risk of missing the best removal.

    `resume`: the order an earlier run chose (its history, or `(kind, layer)` pairs), for going on to a larger `n`
    without paying again for the steps already taken. Those units are removed first, in that order, at the cost
    of one loss evaluation each, and `n` counts them. Greedy is deterministic, so resuming a run's own prefix on
    the same calibration tokens gives what a run to the larger `n` from scratch would.

    `on_step(history)`: called with the order so far after each new step, so a caller can record it and resume an
    interrupted run (what `run.pipeline.choose_and_record` does).
    """
    if shortlist is not None and (isinstance(shortlist, bool) or not isinstance(shortlist, int) or shortlist < 1):
        raise ConfigError(f"greedy shortlist: {shorten(shortlist)} is not a positive whole number of candidates per "
                          "kind; pass e.g. shortlist=10, or None to try every candidate.")
    if shortlist is not None and scores is None:
        raise ConfigError("greedy shortlist needs importance scores to rank the candidates (run `layerdrop score`, "
                          "or pass scores=...).")
    from tqdm.auto import tqdm

    num_layers = len(decoder_layers(model))
    count = count_for(kind, num_layers, n, ratio)
    guarded = protected(num_layers, protect, keep_last)
    earlier = drop_of(model)  # checked before the trunk's copy and capture, which take minutes on a large model
    resumed = _resumed(resume, kind, num_layers, guarded, count, {"attn": list(earlier.attn), "mlp": list(earlier.mlp)})
    ids, description = as_token_tensor(calibration)
    trunk = GreedyTrunk(model, ids, batch_size, objective)
    history: list[dict[str, Any]] = []
    base_loss = trunk.loss()
    for unit in resumed:
        trunk.accept(_with(trunk.flags, unit), start=unit[1])
        loss = trunk.loss(start=num_layers)  # the accepted state's final hidden states are cached
        history.append({"step": len(history) + 1, "kind": unit[0], "layer": unit[1], "loss": loss, "resumed": True,
                        "loss_increase": loss - (history[-1]["loss"] if history else base_loss)})
    bar = tqdm(range(len(history), count), desc=f"greedy {kind} selection ({objective})", unit="drop",
               initial=len(history), total=count, disable=not progress)
    for step in bar:
        dropped = trunk.dropped()
        candidates = [u for u in units(kind, num_layers) if u[1] not in guarded and not is_gone(u, dropped)]
        if shortlist is not None:
            candidates = _shortlisted(candidates, scores, shortlist)
        if not candidates:
            raise ConfigError(f"greedy: after {step} drops nothing else may be dropped (n={count} requested).")
        losses = {u: trunk.loss(_with(trunk.flags, u), start=u[1]) for u in candidates}
        best = min(candidates, key=lambda u: (losses[u], u[1], u[0]))
        trunk.accept(_with(trunk.flags, best), start=best[1])
        history.append({"step": step + 1, "kind": best[0], "layer": best[1], "loss": losses[best],
                        "loss_increase": losses[best] - (history[-1]["loss"] if history else base_loss)})
        bar.set_postfix(dropped=f"{best[0]} {best[1]}", loss=f"{losses[best]:.4f}")
        if on_step is not None:
            on_step([dict(h) for h in history])
    cfg = to_drop_config([], trunk.dropped(), method=f"greedy-{kind}-{objective}",
                         metric=f"calibration {objective} loss", calibration=description,
                         base_model=getattr(model.config, "_name_or_path", None))
    return cfg, history


@register_method("greedy", needs=("model", "calibration"),
                 description="loss-aware greedy: drop the unit whose removal raises the calibration loss least "
                             "(FinerCut-style), step by step on the pruned model", resumable=True)
def _greedy(config: Any, inputs: SelectionInputs) -> Selection:
    scores = inputs.scores.with_metric(config.metric) if inputs.scores is not None else None
    cfg, history = greedy_select(inputs.model, inputs.calibration, config.kind, config.n, config.ratio,
                                 objective=config.objective, protect=config.protect, keep_last=config.keep_last,
                                 shortlist=config.shortlist, scores=scores, resume=inputs.resume or (),
                                 on_step=inputs.on_step, progress=inputs.progress)
    return Selection(cfg, history)
