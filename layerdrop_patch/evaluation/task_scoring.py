"""Per-document hooks for the local tasks whose prompt or score is not a plain Jinja template.

Why here and not in `tasks/utils.py`: lm-eval imports `tasks/utils.py` by file path; keeping the logic in a
normal package module makes it importable and testable without lm-eval's loader. The behaviour mirrors
lm-eval's standard `winogrande` and `truthfulqa_mc2` tasks (checked against their definitions in lm-eval
0.4.13); the code is written for this project.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from layerdrop_patch.errors import DataError

# --------------------------------------------------------------------------- WinoGrande (partial scoring)
# The two options are substituted for "_" and form two *contexts*; the shared continuation is the rest of
# the sentence after "_". The model picks the option under which the continuation is more likely. lm-eval
# signals "several contexts, one continuation" by doc_to_text returning the gold index (an int).


def _blank_position(doc: dict[str, Any]) -> int:
    sentence = doc["sentence"]
    if "_" not in sentence:
        raise DataError(f"WinoGrande sentence has no '_' blank: {sentence!r}")
    return sentence.index("_")


def winogrande_doc_to_text(doc: dict[str, Any]) -> int:
    """Gold option index (0 or 1), from the "1"/"2" answer field."""
    answer = str(doc["answer"]).strip()
    if answer not in ("1", "2"):
        raise DataError(f"WinoGrande answer must be '1' or '2', got {doc['answer']!r}")
    return int(answer) - 1


def winogrande_doc_to_target(doc: dict[str, Any]) -> str:
    """Sentence tail after the blank, without surrounding whitespace (the scored continuation)."""
    return doc["sentence"][_blank_position(doc) + 1 :].strip()


def winogrande_doc_to_choice(doc: dict[str, Any]) -> list[str]:
    """The sentence prefix with each option filled in (the contexts)."""
    prefix = doc["sentence"][: _blank_position(doc)]
    return [prefix + doc["option1"], prefix + doc["option2"]]


# --------------------------------------------------------------------------- TruthfulQA MC2
def truthfulqa_mc2_process_results(doc: dict[str, Any], results: Sequence[tuple[float, bool]]) -> dict[str, float]:
    """MC2 score: probability mass on the true answers after normalising over all answers.

    `results` holds one (loglikelihood, is_greedy) pair per answer, in the order of
    `doc["mc2_targets"]["choices"]`. Computed with a max-shift (log-sum-exp) so that long answers with very
    negative log-likelihoods do not underflow to 0/0.
    """
    labels = list(doc["mc2_targets"]["labels"])
    lls = [float(r[0]) for r in results]
    if len(lls) != len(labels):
        raise DataError(f"TruthfulQA MC2: {len(lls)} log-likelihoods for {len(labels)} answers.")
    top = max(lls)
    weights = [math.exp(ll - top) for ll in lls]
    total = sum(weights)
    true_mass = sum(w for w, lab in zip(weights, labels) if int(lab) == 1)
    return {"acc": true_mass / total}
